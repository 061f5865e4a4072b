"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Serving code raises `APIError` (or a subclass) for anything the client did wrong; the app's
exception handlers turn it, pydantic validation errors and malformed JSON into 4xx JSON, and any
other exception into a 500 that is logged (without the request body) and never stops the server.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Optional

from fastapi.responses import JSONResponse

from pagedllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse


class APIError(Exception):
    status: int = HTTPStatus.BAD_REQUEST
    err_type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: Optional[str] = None,
        code: Optional[str] = None,
        status: Optional[int] = None,
        err_type: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if err_type is not None:
            self.err_type = err_type


class BadRequestError(APIError):
    status = HTTPStatus.BAD_REQUEST


class ModelNotFoundError(APIError):
    status = HTTPStatus.NOT_FOUND
    err_type = "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )


class ResponseNotFoundError(APIError):
    """An id /v1/responses does not have (never stored, evicted, or unknown)."""

    status = HTTPStatus.NOT_FOUND

    def __init__(self, response_id: str, param: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param=param)


class AuthenticationError(APIError):
    status = HTTPStatus.UNAUTHORIZED
    err_type = "authentication_error"

    def __init__(self) -> None:
        super().__init__("Invalid or missing API key.", code="invalid_api_key")


class OverloadedError(APIError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    err_type = "server_overloaded"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="server_overloaded")


class EngineDeadError(APIError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    err_type = "engine_dead"


def error_body(
    message: str,
    err_type: str,
    status: int,
    param: Optional[str] = None,
    code: Optional[Any] = None,
) -> dict:
    if code is None:
        code = int(status)
    return ErrorResponse(
        error=ErrorInfo(message=message, type=err_type, param=param, code=code)
    ).model_dump()


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(err.message, err.err_type, int(err.status), err.param, err.code),
        status_code=int(err.status),
    )


def internal_error_response(message: str = "Internal server error") -> JSONResponse:
    return JSONResponse(error_body(message, "internal_server_error", 500), status_code=500)


def sse_error_event(message: str, err_type: str, status: int) -> str:
    """The event a stream sends when it fails after its headers went out (200 already sent)."""
    return f"data: {json.dumps(error_body(message, err_type, status))}\n\n"


def validation_error_message(errors: list[dict]) -> tuple[str, Optional[str]]:
    """One readable message (and the offending parameter) from pydantic/FastAPI error dicts."""
    if not errors:
        return "Invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "Malformed JSON body: " + str(first.get("ctx", {}).get("error", "")), None
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    where = ".".join(loc) if loc else None
    msg = str(first.get("msg", "invalid value"))
    extra = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    # `param` names the top-level field; the message keeps the full path (e.g. messages.0.role).
    return (f"{where}: {msg}{extra}" if where else msg + extra), (loc[0] if loc else None)
