"""Every error the API returns is JSON: a stable `code`, a human `message`, maybe `field`.

Validation errors name the field (`privacy.target_epsilon: Input should be greater than
0`); HTTP errors (unknown route, wrong method) get a code from their status; anything
unexpected is logged and answered without internals. No request, however malformed, is
meant to reach the last handler: the fuzz test (tests/test_api_fuzz.py) checks that.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.services.errors import ServiceError, UnauthenticatedError

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON body of every error."""
    return {"code": code, "message": message, "field": field}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        return ".".join(parts[1:]) or "body"
    if len(parts) >= 2:
        return f"{parts[0]} parameter {'.'.join(parts[1:])}"
    return ".".join(parts) or "request"


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    field = _field(error.get("loc", ()))
    kind = str(error.get("type", ""))
    msg = str(error.get("msg", "is invalid"))
    if kind == "json_invalid":
        return (
            "body",
            f"The request body is not valid JSON ({error.get('ctx', {}).get('error', msg)}).",
        )
    if kind == "missing":
        return field, f"{field}: this field is required."
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field; remove it."
    return field, f"{field}: {msg}."


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    described = [_describe(e) for e in exc.errors()]
    if not described:
        described = [("body", "The request is invalid.")]
    body = error_body("validation_error", " ".join(m for _, m in described), described[0][0])
    body["errors"] = [{"field": f, "message": m} for f, m in described]
    return JSONResponse(body, status_code=422)


def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthenticatedError) else None
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=headers
    )


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 400 and "parsing the body" in message:
        message = "The request body could not be parsed; send UTF-8 JSON."
        return JSONResponse(error_body(code, message, "body"), status_code=400)
    if exc.status_code == 404 and message == "Not Found":
        message = "No such route; see /openapi.json for the API."
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("Unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body(
            "internal_error",
            "The coordinator failed to handle this request; its log has the details.",
        ),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
