"""Errors as RFC 9457 problem details; nothing internal ever reaches a client.

Each :class:`CleanroomError` maps to a status and a stable ``type`` URI; any
other exception becomes an opaque 500 whose detail names no path, class or
stack frame (the full error goes to the service log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    GovernanceError,
    NotFoundError,
    OperationalError,
    RateLimitedError,
)

log = logging.getLogger("cleanroom.service")
MEDIA_TYPE = "application/problem+json"

_STATUS: list[tuple[type[CleanroomError], int, str]] = [
    (AuthenticationError, 401, "unauthenticated"),
    (AuthorizationError, 403, "forbidden"),
    (RateLimitedError, 429, "rate-limited"),
    (NotFoundError, 404, "not-found"),
    (GovernanceError, 409, "not-allowed-by-the-room"),
    (OperationalError, 503, "unavailable"),
    (CleanroomError, 400, "invalid-input"),
]


def problem(status: int, kind: str, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": f"https://cleanroom.dev/problems/{kind}",
            "title": title,
            "status": status,
            "detail": detail,
        },
        status_code=status,
        media_type=MEDIA_TYPE,
        headers={"WWW-Authenticate": 'Signature realm="cleanroom"'} if status == 401 else None,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(CleanroomError)
    async def _cleanroom(request: Request, exc: CleanroomError) -> JSONResponse:
        status, kind = next((s, k) for t, s, k in _STATUS if isinstance(exc, t))
        if status >= 500:
            log.warning("operational failure on %s %s: %s", request.method, request.url.path, exc)
            return problem(status, kind, "Service unavailable", "try again later")
        return problem(status, kind, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(
            422, "invalid-request", "Invalid request", f"{where}: {first.get('msg', 'invalid')}"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, "http", str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal", "Internal error", "the service failed; it was logged")
