"""The coordinator's admin web API (FastAPI), under /api/v1: thin routes over the services."""

from coordinator.api.app import create_app
from coordinator.api.settings import AdminSettings

__all__ = ["AdminSettings", "create_app"]
