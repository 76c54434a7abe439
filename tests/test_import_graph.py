"""The import graph: the SDK stays light, and the protocol sits below every side.

A data owner installs the SDK without the server (docs: the key agent and the
site client depend on the SDK, never on the service package), so importing
``cleanroom.client`` must not load the service, its web stack, the SQL ledger
stores or the engines; and :mod:`cleanroom.protocol` is imported downward by the
SDK, the service, the enclave, the broker and the key agent, never the reverse.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import cleanroom.protocol

FORBIDDEN_MODULES = ("cleanroom.service", "cleanroom.ledger.sql")
ABOVE_PROTOCOL = ("cleanroom.client", "cleanroom.service", "cleanroom.enclave", "cleanroom.agent")


def _loaded_by_importing_the_sdk() -> list[str]:
    code = "import json, sys; import cleanroom.client; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def _within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def test_importing_the_sdk_loads_neither_the_service_nor_the_engines() -> None:
    loaded = _loaded_by_importing_the_sdk()
    assert [m for m in loaded if _within(m, FORBIDDEN_MODULES)] == []
    assert [m for m in loaded if _within(m, ("fastapi", "starlette", "uvicorn", "psycopg"))] == []
    # DuckDB, sqlglot and pyarrow: loaded only to seal data, decrypt results, check policies
    assert [m for m in loaded if _within(m, ("duckdb", "sqlglot", "pyarrow", "numpy"))] == []


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append("relative import")  # refused below: spell the module out
    return found


def test_the_protocol_imports_nothing_above_it() -> None:
    package = Path(cleanroom.protocol.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert files, "cleanroom.protocol has no modules"
    upward = {
        str(f.relative_to(package)): name
        for f in files
        for name in _imports(f)
        if _within(name, ABOVE_PROTOCOL)
        or name == "relative import"
        # "from cleanroom import client" names a module above too
        or name in {f"cleanroom.{p.rsplit('.', 1)[1]}" for p in ABOVE_PROTOCOL}
    }
    assert upward == {}


def test_the_import_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from cleanroom.service.auth import verify_request\nimport cleanroom.agent\n")
    names = _imports(module)
    assert any(_within(n, ABOVE_PROTOCOL) for n in names)
    assert "cleanroom.agent" in names
