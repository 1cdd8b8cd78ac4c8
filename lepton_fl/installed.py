"""Whether an optional package is installed, found without importing it."""

from __future__ import annotations

import importlib.util

__all__ = ["installed"]


def installed(name: str) -> bool:
    """True when ``name`` can be imported here (a broken or blocked installation: False)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
