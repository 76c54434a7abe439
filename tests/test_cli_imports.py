"""The ``cleanroom`` command's import graph: ``--help`` and ``--version`` load
Typer, Click and Rich's console, and nothing heavy.

Allowed: typer (and its vendored click), rich (the console and help
formatting), the standard library, cleanroom's own light modules
(``cleanroom``, ``cleanroom.errors`` and ``cleanroom.cli.*``), and pydantic
once a subcommand parses its options: Typer (0.29) converts option values
with pydantic's TypeAdapter, so it is Typer's cost, not ours (about 0.08 s).

Refused, with the reason:

* pyarrow, numpy, duckdb: the data engines, only for sealing, opening and results;
* sqlglot: the SQL policy check, only for ``analysis check`` and proposals;
* opendp: differential privacy, only inside an enclave;
* fastapi, starlette, uvicorn: the service, only for ``cleanroom serve``;
* httpx: the SDK's transport, only for commands that talk to a service;
* cryptography: keys, only once a command loads a keystore or an identity;
* cleanroom.client, .service, .datasets, .governance, .ledger, .identities:
  loaded by the commands that use them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "pyarrow",
    "numpy",
    "duckdb",
    "sqlglot",
    "opendp",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "cryptography",
    "cleanroom.client",
    "cleanroom.service",
    "cleanroom.datasets",
    "cleanroom.governance",
    "cleanroom.ledger",
    "cleanroom.identities",
    "cleanroom.policy",
)

PROBE = """
import contextlib, io, json, sys
from cleanroom.cli.main import run
with contextlib.redirect_stdout(io.StringIO()):
    code = run(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _loaded(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["code"], answer["modules"]


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["version"], ["room", "--help"], ["job", "run", "--help"]],
    ids=" ".join,
)
def test_help_and_version_load_nothing_heavy(args: list[str]) -> None:
    code, modules = _loaded(*args)
    assert code == 0
    assert _heavy(modules) == []


def test_importing_cleanroom_loads_only_its_errors() -> None:
    code = "import json, sys, cleanroom; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.startswith("cleanroom")] == ["cleanroom", "cleanroom.errors"]
    assert _heavy(loaded) == []


def test_the_public_names_stay_importable() -> None:
    import cleanroom  # noqa: PLC0415

    for name in cleanroom.__all__:
        assert getattr(cleanroom, name) is not None
    with pytest.raises(AttributeError):
        _ = cleanroom.no_such_name  # type: ignore[attr-defined]
    assert set(cleanroom.__all__) <= set(dir(cleanroom))
