"""What the operator sees of requests: one access log line each, and the
counters behind ``/metrics`` (:mod:`cleanroom.service.metrics`).

An ASGI middleware outside every other one, so that it also sees the answers
the body limits give before any route runs (413, 408).

What a line holds, and why nothing secret can be in it: the method, the
**route template** (``/v1/rooms/{room}/blobs/{digest}``, never the raw path:
a stranger's path may carry anything, and a digest names a dataset), the
status, the duration, the body bytes received and sent, the room id (the
operator's own ledger lists every room, so it is no secret from the operator;
it is what an operator needs to follow a complaint), the fingerprint of the
party whose request signature verified (public) and the client address. It
never holds a query string (a broker nonce), a header's value (signatures,
``Content-Digest``, a bearer token), or a byte of a body (statements,
ciphertext, launch tokens): the middleware never reads them into the line.

Log lines go to standard error, as text (``key=value``) or one JSON object per
line (``log_format``), for the journal or the container runtime to keep.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cleanroom.service.metrics import UNMATCHED, RequestMetrics, method_label

ACCESS_LOGGER = "cleanroom.access"
PARTY_KEY = "cleanroom.party"  # set in the ASGI scope once a request signature verifies
_ROOM = re.compile(r"[0-9a-f]{32}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16,128}")

access_log = logging.getLogger(ACCESS_LOGGER)


class AccessLog:
    """Times every HTTP request, counts its body bytes both ways, then logs one line
    (unless ``log`` is off) and feeds ``metrics``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: RequestMetrics,
        log: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log = log
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status, received, sent = 0, 0, 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            status = status or 500  # the error middleware outside answers 500
            raise
        finally:
            seconds = self.clock() - start
            fields = request_fields(scope, status, seconds, received, sent)
            self.metrics.observe(fields["method"], fields["route"], status, seconds, sent)
            if self.log:
                access_log.info(_text(fields), extra={"access": fields})


def request_fields(
    scope: Scope, status: int, seconds: float, received: int, sent: int
) -> dict[str, Any]:
    """The fields of one access log line (see the module docstring for what is
    left out, and why)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    params = scope.get("path_params") or {}
    room = params.get("room") if isinstance(template, str) else None
    party = scope.get(PARTY_KEY)
    client = scope.get("client")
    return {
        "method": method_label(str(scope.get("method", ""))),
        "route": template if isinstance(template, str) else UNMATCHED,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes_in": received,
        "bytes_out": sent,
        "room": room if isinstance(room, str) and _ROOM.fullmatch(room) else None,
        "party": party if isinstance(party, str) and _FINGERPRINT.fullmatch(party) else None,
        "client": str(client[0]) if client else None,
    }


def _text(fields: dict[str, Any]) -> str:
    head = f"{fields['method']} {fields['route']} {fields['status']} {fields['duration_ms']}ms"
    tail = " ".join(
        f"{k}={v}"
        for k in ("bytes_in", "bytes_out", "room", "party", "client")
        if (v := fields[k]) is not None
    )
    return f"{head} {tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, and either an
    access line's fields or the message."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            document.update(fields)
        else:
            document["message"] = record.getMessage()
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, separators=(",", ":"), default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "cleanroom-serve"


def configure_logging(log_format: Literal["text", "json"]) -> None:
    """Send cleanroom's and uvicorn's log lines to standard error in ``log_format``
    (cleanroom's from INFO: the access lines; uvicorn's at its own level). Calling
    it again replaces the handler it installed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    for name in ("cleanroom", "uvicorn"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("cleanroom").setLevel(logging.INFO)
