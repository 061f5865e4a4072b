"""Pure-ASGI middleware of the server: body-size limit, API-key check, last-resort error answer.

Pure ASGI (not BaseHTTPMiddleware) so that http.disconnect still reaches the routes, which is
how a client that goes away aborts its request.
"""

from __future__ import annotations

import hmac
from typing import Callable, Optional

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pagedllm.entrypoints.openai.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    error_response,
)
from pagedllm.entrypoints.openai.protocol import MAX_BODY_BYTES


class _BodyTooLarge(APIError):
    status = 413

    def __init__(self) -> None:
        super().__init__(f"Request body exceeds {MAX_BODY_BYTES} bytes.", code="body_too_large")


class BodyLimitAndAuthMiddleware:
    """413 for bodies over MAX_BODY_BYTES; 401 without the right bearer token (if a key is set);
    any exception escaping a route becomes a JSON 500 here (or, once a stream started, the end of
    that stream), so nothing reaches uvicorn, which would drop the connection."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: Optional[str],
        public_paths: set[str],
        on_internal_error: Callable[[Exception], Response],
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.public_paths = public_paths
        self.on_internal_error = on_internal_error

    async def _reject(self, send: Send, err: APIError) -> None:
        resp = error_response(err)
        if isinstance(err, AuthenticationError):
            resp.headers["WWW-Authenticate"] = "Bearer"
        await resp({"type": "http"}, _no_receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        # Compare in constant time; a wrong scheme still costs one comparison.
        ok = hmac.compare_digest(token.strip(), self.api_key)
        return ok and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope.get("path", "") not in self.public_paths:
            if scope.get("method") != "OPTIONS" and not self._authorized(scope):
                await self._reject(send, AuthenticationError())
                return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, BadRequestError("Invalid Content-Length header."))
                    return
                if declared > MAX_BODY_BYTES:
                    await self._reject(send, _BodyTooLarge())
                    return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            response = self.on_internal_error(exc)
            if not started:
                await response(scope, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}
