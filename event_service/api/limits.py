"""ASGI guards: request bodies above a size limit get 413, and NUL characters in the path or query 422,
before the app reads them."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class BodySizeLimit:
    """Reject bodies larger than ``max_bytes`` (declared or streamed) with ``413 Payload Too Large``."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await self._refuse(send, 400, "the Content-Length header is not a number")
                return
            if too_big:
                await self._refuse(send, 413, f"the request body is over the limit of {self.max_bytes} bytes")
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read up to the limit, then hand the body on in one piece.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, 413, f"the request body is over the limit of {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        payload: dict[str, Any] = {"detail": detail}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class NulGuard:
    """Refuse a request whose path or query holds a NUL character with 422: no name in the ledger holds one, and
    PostgreSQL refuses to compare text with it (the request would otherwise end in a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope.get("path", "")
                                        or b"%00" in scope.get("query_string", b"").lower()):
            await BodySizeLimit._refuse(send, 422, "the request's path or query holds a NUL character")
            return
        await self.app(scope, receive, send)
