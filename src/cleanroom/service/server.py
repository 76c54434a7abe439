"""``cleanroom serve``: settings, wiring and uvicorn.

:func:`build_service` opens the data directory (SQLite ledger, dataset
ciphertext in ``blobs/``, job results in ``results/``, the replay window in
``nonces.sqlite3``, the service key; PostgreSQL when ``database_url`` is set),
and :func:`serve` runs it with uvicorn (h11, keep-alive and header limits;
body limits are :mod:`cleanroom.service.limits`), signing due tree heads on a
timer.

Every connection must deliver each request line and headers within
``header_timeout_s`` of opening or of the previous answer
(:class:`HeadTimeoutProtocol`): uvicorn bounds neither, so one byte every few
seconds would otherwise hold a connection forever.

Log lines (one per request, :mod:`cleanroom.service.observe`, and uvicorn's
own) go to standard error as text or JSON (``log_format``). The client address
in them comes from ``X-Forwarded-For`` only when the connection comes from one
of ``forwarded_allow_ips`` (the reverse proxy); request signatures cover the
path and query only, so a proxy changes nothing they verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from cleanroom.broker.link import BrokerLink
from cleanroom.ledger.local import open_ledger
from cleanroom.ledger.log import TreeHeadPolicy
from cleanroom.policy.memo import CheckMemo, check_code
from cleanroom.service.app import ROUTES, RoomPolicy, Service, create_app
from cleanroom.service.blobs import LocalBlobStore
from cleanroom.service.jobs import JobRunner, RunnerSettings
from cleanroom.service.limits import BodyLimits
from cleanroom.service.observe import configure_logging
from cleanroom.service.problems import MEDIA_TYPE
from cleanroom.service.settings import ConfigurationError, Settings, load_settings

__all__ = [
    "ROUTES",
    "ConfigurationError",
    "Service",
    "Settings",
    "build_app",
    "build_service",
    "load_settings",
    "serve",
]


def build_service(settings: Settings) -> Service:
    ledger = open_ledger(
        settings.data_dir,
        database_url=settings.database_url,
        schema=settings.database_schema,
        policy=TreeHeadPolicy(
            max_entries=settings.tree_head_max_entries,
            max_delay_ms=settings.tree_head_max_delay_ms,
            max_clock_skew_ms=settings.max_skew_s * 1000,
        ),
    )
    # folding every room at start re-runs every stored analysis's policy check: the
    # service's ledger keeps their outcomes for its own view (cleanroom.policy.memo)
    ledger.memo = CheckMemo(settings.data_dir / "checks.sqlite3", namespace=check_code())
    service = Service(
        ledger,
        LocalBlobStore(settings.data_dir / "blobs"),
        LocalBlobStore(settings.data_dir / "results"),
        max_skew_s=settings.max_skew_s,
        max_upload_bytes=settings.max_upload_bytes,
        limits=BodyLimits(
            max_body_bytes=settings.max_body_bytes,
            body_timeout_s=settings.body_timeout_s,
            min_body_rate=settings.min_body_rate,
        ),
        nonces=settings.data_dir / "nonces.sqlite3",
        member_quota_bytes=settings.member_quota_bytes,
        rooms=RoomPolicy(
            creators=frozenset(settings.room_creators)
            if settings.room_creators is not None
            else None,
            per_hour=settings.rooms_per_creator_per_hour,
        ),
        metrics_token=(
            settings.metrics_token.get_secret_value() if settings.metrics_token else None
        ),
        metrics_per_room=settings.metrics_per_room,
        access_log=settings.access_log,
    )
    if settings.key_broker:
        service.desk.broker = BrokerLink(
            ledger.service.identity_document(), platform=settings.enclave_platform
        )
    runner = JobRunner(
        ledger,
        service.desk,
        RunnerSettings(
            url=f"http://{_connect_host(settings.host)}:{settings.port}",
            platform=settings.enclave_platform,
            parallelism=settings.job_parallelism,
            time_limit_s=settings.job_time_limit_s,
            memory_limit=settings.job_memory_limit,
            release_wait_s=settings.job_release_wait_s,
            threads=settings.job_threads,
            max_queued_per_room=settings.job_queue_per_room,
            log_dir=settings.data_dir / "jobs",
        ),
    )
    runner.fail_unfinished()
    service.runner = runner
    return service


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - where enclaves connect, not a bind
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def build_app(settings: Settings) -> FastAPI:
    service = build_service(settings)
    app = create_app(service)
    interval = max(settings.tree_head_max_delay_ms, 50) / 1000

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def sign_due_heads() -> None:
            while True:
                await asyncio.sleep(interval)
                await asyncio.to_thread(service.ledger.issue_due_tree_heads)

        task = asyncio.create_task(sign_due_heads())
        try:
            yield
        finally:
            task.cancel()
            if service.runner is not None:
                service.runner.close()
            if isinstance(service.desk.broker, BrokerLink):
                service.desk.broker.close()
            service.ledger.store.close()
            service.nonces.close()

    app.router.lifespan_context = lifespan
    return app


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's line and headers.

    uvicorn arms its keep-alive timer only once an answer is complete and cancels
    it at the first byte of the next request, and arms nothing for a new
    connection. Here the deadline starts when the connection opens and again when
    each answer is complete; when it passes and the request head is still
    incomplete (h11 still waits for it), the connection is closed: with a 408 if
    part of a request arrived, silently if nothing did. The body has its own
    limits (:class:`~cleanroom.service.limits.BodyGuard`)."""

    header_timeout_s: float = 10.0  # set per server by :func:`head_timeout_protocol`
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        # IDLE: h11 has not parsed a request head since the deadline was armed
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request head arrived
            self.transport.write(_HEAD_TIMEOUT_ANSWER)
        self.transport.close()


_HEAD_TIMEOUT_BODY = (
    b'{"type": "https://cleanroom.dev/problems/http", "title": "Request head too slow", '
    b'"status": 408, "detail": "the request line and headers arrived too slowly"}'
)
_HEAD_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
    + MEDIA_TYPE.encode()
    + b"\r\ncontent-length: "
    + str(len(_HEAD_TIMEOUT_BODY)).encode()
    + b"\r\nconnection: close\r\n\r\n"
    + _HEAD_TIMEOUT_BODY
)


def head_timeout_protocol(header_timeout_s: float) -> type[HeadTimeoutProtocol]:
    """The protocol class uvicorn instantiates per connection, with this deadline."""
    return type(
        "HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout_s": header_timeout_s}
    )


# How long one thread may hold the interpreter before another gets it (CPython's
# default is 5 ms). A CPU-bound check in one room (a large analysis's policy
# check) would otherwise make every I/O-bound request of every other room wait
# up to 5 ms at each of its many hand-overs (the GIL convoy).
SWITCH_INTERVAL_S = 0.0005


def serve(settings: Settings) -> None:
    configure_logging(settings.log_format)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # bind first, so that port 0 resolves before enclaves are told where to connect
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    config = uvicorn.Config(
        build_app(settings),
        log_level="warning",
        log_config=None,  # configure_logging: the same handler and format as ours
        access_log=False,  # ours has the route template and never the query string
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        http=head_timeout_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=64 << 10,  # request line and headers
    )
    uvicorn.Server(config).run(sockets=[sock])
