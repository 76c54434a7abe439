"""A ``cleanroom serve`` process on this machine: for the demo, benchmarks,
tests and trying things out.

:func:`local_service` starts the real service (its own process, as in
production), waits until ``/v1/health`` answers and stops it on exit; if the
process dies or does not answer in time, the error carries its log.
"""

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

from cleanroom.errors import OperationalError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_service(
    data_dir: Path,
    *,
    port: int | None = None,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout_s: float = 60.0,
) -> Iterator[str]:
    """Run ``cleanroom serve`` on ``data_dir``; yields the service's URL once it
    answers. Its output goes to ``log`` (default: ``<data_dir>.log``); ``env``
    is added to this process's environment."""
    port = port or free_port()
    command = [sys.executable, "-m", "cleanroom", "serve", "--data-dir", str(data_dir)]
    command += ["--port", str(port)]
    if database_url:
        command += ["--database", database_url]
    log = log or data_dir.with_name(f"{data_dir.name}.log")
    url = f"http://127.0.0.1:{port}"
    with (
        log.open("w") as out,
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        ) as process,
    ):
        try:
            _wait_until_up(url, process, log, timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise OperationalError(f"the service exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise OperationalError(
                f"the service did not start in {timeout_s:g} s: {log.read_text()}"
            )
        time.sleep(0.1)
