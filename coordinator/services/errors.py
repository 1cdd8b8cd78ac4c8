"""Errors of the services layer: each carries a stable `code` and an HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal a person can act on: `code` is stable, the message says what to fix."""

    status: int = 400

    def __init__(self, message: str, *, code: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class UnauthenticatedError(ServiceError):
    """No usable credentials."""

    status = 401


class ForbiddenError(ServiceError):
    """Authenticated, but this role may not do this (for example an auditor's write)."""

    status = 403


class NotFoundError(ServiceError):
    """No such row, or one the caller may not see (the two are indistinguishable)."""

    status = 404


class ConflictError(ServiceError):
    """The request clashes with the current state (a duplicate name, a run already running)."""

    status = 409


class InvalidError(ServiceError):
    """The request is well-formed but its values do not make sense together."""

    status = 422


class UpstreamError(ServiceError):
    """The SuperLink refused or failed an operation the request needed."""

    status = 502


class UnavailableError(ServiceError):
    """No SuperLink is attached to this admin service."""

    status = 503


def no_superlink() -> UnavailableError:
    """The refusal for operations that need a SuperLink when none is attached."""
    return UnavailableError(
        "This admin service runs without a SuperLink; start it with `lepton coordinator "
        "start` to enroll nodes and run federations.",
        code="superlink_unavailable",
    )
