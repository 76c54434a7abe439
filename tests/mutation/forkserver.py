"""The test process a mutation worker keeps: imports once, forks one pytest per mutant.

Started by :mod:`tests.mutation.runner` (``python -c`` running this file as
``__main__``, so its own folder is not on ``sys.path``) in the worker's copy of
the repository, with ``PYTHONPATH`` at the copy's ``src``. It
imports pytest, its plugins and the third-party libraries the package uses
(seconds saved per mutant), but never ``cleanroom`` nor ``tests``: each forked
child imports those from disk, so it sees the mutant the runner wrote there.

Protocol, one JSON object per line: the server says ``{"ready": ...}``; each
request ``{"args": [...], "log": path}`` is answered with ``{"pid": n}`` as
soon as the child exists (it leads its own process group, so the runner can
end it and everything it started) and ``{"rc": code, "origin": path}`` when
it ends; ``origin`` is where the child imported ``cleanroom`` from.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# none of these imports cleanroom; the ones that start threads (numpy, pyarrow, duckdb)
# are left to the children
PRELOAD = (
    "pytest",
    "hypothesis",
    "_hypothesis_pytestplugin",
    "anyio.pytest_plugin",
    "pytest_cov.plugin",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.ciphers.aead",
    "pydantic",
    "pydantic_settings",
    "sqlglot",
    "fastapi",
    "httpx",
    "http_message_signatures",
    "rfc8785",
    "nacl.public",
    "typer",
    "rich.console",
    "uvicorn",
    "psycopg",
)
PACKAGE = "cleanroom"


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child(args: list[str], log: str) -> None:
    """Runs in the forked child; never returns."""
    code = 3
    try:
        os.setsid()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        import pytest  # noqa: PLC0415 - already loaded by the server

        code = int(pytest.main(args))
        module = sys.modules.get(PACKAGE)
        origin = getattr(module, "__file__", None) or ""
        Path(log + ".origin").write_text(origin, encoding="utf-8")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in (PACKAGE, "tests"))
    if leaked:
        _say({"error": f"the server imported {leaked[0]}: a child would not see the mutant"})
        return
    tasks = Path("/proc/self/task")
    _say({"ready": True, "threads": len(list(tasks.iterdir())) if tasks.is_dir() else -1})
    for line in sys.stdin:
        request = json.loads(line)
        log = str(request["log"])
        pid = os.fork()
        if pid == 0:
            _child([str(a) for a in request["args"]], log)
        _say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        marker = Path(log + ".origin")
        origin = marker.read_text(encoding="utf-8") if marker.exists() else ""
        marker.unlink(missing_ok=True)
        _say({"rc": os.waitstatus_to_exitcode(status), "origin": origin})


if __name__ == "__main__":
    serve()
