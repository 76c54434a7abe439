"""``cleanroom serve``: settings, wiring and uvicorn.

:func:`build_service` opens the data directory (SQLite ledger, dataset
ciphertext in ``blobs/``, job results in ``results/``, the replay window in
``nonces.sqlite3``, the service key; PostgreSQL when ``database_url`` is set),
and :func:`serve` runs it with uvicorn (h11, keep-alive and header limits;
body limits are :mod:`cleanroom.service.limits`), signing due tree heads on a
timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from cleanroom.ledger.local import open_ledger
from cleanroom.ledger.log import TreeHeadPolicy
from cleanroom.service.app import ROUTES, RoomPolicy, Service, create_app
from cleanroom.service.blobs import LocalBlobStore
from cleanroom.service.jobs import JobRunner, RunnerSettings
from cleanroom.service.limits import BodyLimits
from cleanroom.service.settings import Settings, load_settings

__all__ = ["ROUTES", "Service", "Settings", "build_app", "build_service", "load_settings", "serve"]


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
    )
    runner = JobRunner(
        ledger,
        service.broker,
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
            service.ledger.store.close()
            service.nonces.close()

    app.router.lifespan_context = lifespan
    return app


def serve(settings: Settings) -> None:
    # bind first, so that port 0 resolves before enclaves are told where to connect
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    config = uvicorn.Config(
        build_app(settings),
        log_level="warning",
        http="h11",
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=64 << 10,  # request line and headers
    )
    uvicorn.Server(config).run(sockets=[sock])
