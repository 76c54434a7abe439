"""Request body limits: how many bytes, and how slowly, a client may send.

An ASGI middleware in front of every route. Apart from the two streaming
uploads (dataset ciphertext and job results, which check their own announced
sizes as the bytes arrive), a body may be at most ``max_body_bytes``: a larger
``Content-Length`` gets 413 before a byte of the body is read, and a body that
grows past the limit (chunked, or longer than announced) is cut off with 413.
Every body must also keep arriving: it may take ``body_timeout_s`` plus one
second per ``min_body_rate`` bytes received, else 408. Whenever the service
answers before it has read the whole body (a 401 for an unsigned request, a
413, a 408), the answer carries ``Connection: close`` and uvicorn closes the
connection after it, so unread bytes are never drained and a slow client holds
nothing open.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cleanroom.service.problems import MEDIA_TYPE

# routes whose handlers stream the body and enforce their own size limits
STREAMING = re.compile(r"^/v1/rooms/[^/]+/(blobs/[^/]+|jobs/[^/]+/result/[^/]+)$")


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int = 4 << 20
    body_timeout_s: float = 30.0
    min_body_rate: int = 64 << 10  # bytes per second, on average


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this route accepts ({limit} bytes)")


class BodyTooSlow(HTTPException):
    def __init__(self) -> None:
        super().__init__(408, "the request body arrived too slowly")


class BodyGuard:
    def __init__(self, app: ASGIApp, limits: BodyLimits = BodyLimits()) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = scope["method"] == "PUT" and STREAMING.match(scope["path"]) is not None
        limit = None if streaming else self.limits.max_body_bytes
        headers = dict(scope["headers"])
        started = time.monotonic()
        state: dict[str, Any] = {"received": 0, "complete": False}

        length = headers.get(b"content-length")
        if limit is not None and length is not None:
            try:
                announced = int(length)
            except ValueError:
                announced = limit + 1
            if announced > limit:
                await _refuse(send, 413, "Request body too large", str(BodyTooLarge(limit).detail))
                return
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if not chunked and length in (None, b"0"):
            state["complete"] = True  # no body at all

        async def guarded_receive() -> Message:
            if state["complete"]:
                return await receive()
            allowed = self.limits.body_timeout_s + state["received"] / self.limits.min_body_rate
            remaining = started + allowed - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise BodyTooSlow() from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if limit is not None and state["received"] > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    state["complete"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["complete"]:
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


_CLOSE = (b"connection", b"close")


async def _refuse(send: Send, status: int, title: str, detail: str) -> None:
    body = json.dumps(
        {
            "type": "https://cleanroom.dev/problems/http",
            "title": title,
            "status": status,
            "detail": detail,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                _CLOSE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
