"""Routers of the admin API, one module per resource."""

from typing import Any

from coordinator.api.schemas import ErrorOut

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body could not be parsed (not UTF-8 JSON)."},
    401: {"model": ErrorOut, "description": "No valid API key."},
    403: {"model": ErrorOut, "description": "This role may not do this."},
    404: {"model": ErrorOut, "description": "No such resource (or not yours)."},
    409: {"model": ErrorOut, "description": "Conflicts with the current state."},
    422: {"model": ErrorOut, "description": "A field is invalid; `field` names it."},
}
SUPERLINK_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body could not be parsed (not UTF-8 JSON)."},
    502: {"model": ErrorOut, "description": "The SuperLink refused or failed."},
    503: {"model": ErrorOut, "description": "No SuperLink is attached to this service."},
}
