"""A real service in a subprocess on a free port, for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_service(
    data_dir: Path, *, database_url: str | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "cleanroom",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    if database_url:
        command += ["--database", database_url]
    log = data_dir.parent / f"service-{port}.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        ) as process,
    ):
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the service exited: {log.read_text()}")
                try:
                    if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not start: {log.read_text()}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


POSTGRES_URL = os.environ.get(
    "CLEANROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema on the test PostgreSQL server; skips (or fails where
    CLEANROOM_REQUIRE_POSTGRES=1) when no server answers."""
    import secrets  # noqa: PLC0415

    import psycopg  # noqa: PLC0415
    import pytest  # noqa: PLC0415

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"no PostgreSQL server at {POSTGRES_URL}: {str(exc).strip().splitlines()[0]}"
        if os.environ.get("CLEANROOM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CLEANROOM_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    schema = f"cleanroom_test_{secrets.token_hex(6)}"
    try:
        yield POSTGRES_URL, schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
