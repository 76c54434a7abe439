"""Request body limits: how many bytes, and how slowly, a client may send.

An ASGI middleware in front of every route. Apart from the two streaming
uploads (dataset ciphertext and job results, which check their own announced
sizes as the bytes arrive), a body may be at most ``max_body_bytes``: a larger
``Content-Length`` gets 413 before a byte of the body is read, and a body that
grows past the limit (chunked, or longer than announced) is cut off with 413.
Every body must also keep arriving: it may take ``body_timeout_s`` plus one
second per ``min_body_rate`` bytes received, else 408.

Whenever the service answers before it has read the whole body (a 401 for an
unsigned request, a 413, a 408, a 429 over quota), the answer carries
``Connection: close`` and the connection is closed after it. Closing a socket
with unread bytes makes the kernel reset the connection, which can destroy the
answer before the client (still sending) reads it. So, as a lingering close, the
answer is sent first and then at most ``drain_bytes`` of the rest of the body
are read and discarded, for at most ``drain_s`` seconds, before the close: a
client sending a modest body always reads its answer, and a client sending more
(or sending slowly) costs the service no more than those bounds. A body
announced larger than ``drain_bytes`` is not drained at all.
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
    drain_bytes: int = 16 << 20  # of a body refused early, read and discarded at most
    drain_s: float = 5.0  # and for at most this long


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
        announced = _length(length)  # None: not announced, or not a number
        if limit is not None and length is not None and (announced is None or announced > limit):
            detail = str(BodyTooLarge(limit).detail)
            await _refuse(send, 413, "Request body too large", detail)
            await self._drain(receive, state, announced)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
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
                state["slow"] = True  # and so not worth a drain either
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
                state["early"] = True
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            if (
                message["type"] == "http.response.body"
                and state.get("early")
                and not message.get("more_body", False)
            ):
                # the answer goes out first; the connection closes once the final
                # (empty) part is sent, after a bounded drain of the unread body
                await send({**message, "more_body": True})
                await self._drain(receive, state, announced)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)

    async def _drain(self, receive: Receive, state: dict[str, Any], announced: int | None) -> None:
        """Read and discard what is left of a body the service answered early, within
        ``drain_bytes`` and ``drain_s`` (never its own answer's cost: bounded)."""
        budget = self.limits.drain_bytes
        if state["complete"] or state.get("slow"):
            return  # nothing left, or a client too slow to wait for
        if announced is not None and announced - state["received"] > budget:
            return  # more than the bound: the close resets the connection anyway
        deadline = time.monotonic() + self.limits.drain_s
        drained = 0
        while not state["complete"] and drained <= budget:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), timeout=remaining)
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return  # the client went away
            drained += len(message.get("body", b""))
            state["complete"] = not message.get("more_body", False)


_CLOSE = (b"connection", b"close")


def _length(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _refuse(send: Send, status: int, title: str, detail: str) -> None:
    """The answer, all but its end (the caller drains the body, then ends it)."""
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
    await send({"type": "http.response.body", "body": body, "more_body": True})
