"""Packaging: what a new user installs, and what the core install can do without extras.

A data owner who only seals and publishes installs the core distribution: the SDK,
the CLI, sealing (DuckDB, Arrow), the crypto, the policy check and ledger
verification. The server (FastAPI, uvicorn), OpenDP and PostgreSQL are extras
(pyproject.toml, docs/install.md). Two groups of tests pin that:

* always (seconds): the constraints file pins every requirement of pyproject.toml
  within its range; the optional packages are imported only by the modules of their
  extra; with the optional packages blocked, the package, the SDK, sealing and the
  owner's CLI commands still work, and a DP job names the extra it needs;
* opt-in, ``CLEANROOM_PACKAGING_TEST=1`` (about a minute: ``make test-packaging``):
  the wheel is built once; it carries ``py.typed``, the LICENSE, the project URLs and
  the extras; a fresh virtual environment with only the core install (the wheel and
  constraints.txt, from the registry) imports the SDK, seals a dataset and runs
  ``cleanroom --help`` without any optional package installed.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "cleanroom"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
DISTRIBUTION = PROJECT["name"]
OPT_IN = "CLEANROOM_PACKAGING_TEST"

# import name -> the extra that installs it; the modules (under src/cleanroom) that
# may import it at module level. Anything else imports it inside a function, if at all.
OPTIONAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "fastapi": ("server", ("service/",)),
    "starlette": ("server", ("service/",)),
    "uvicorn": ("server", ("service/",)),
    "pydantic_settings": ("server", ("service/",)),
    "opendp": ("dp", ("policy/dp.py",)),
    "psycopg": ("postgres", ()),
    "pandas": ("pandas", ()),
    "onnx": ("server", ()),
    "onnxruntime": ("server", ()),
    "numpy": ("server", ("models/score.py",)),
    "sklearn": ("ml", ()),
    "skl2onnx": ("ml", ()),
    "onnxmltools": ("ml", ()),
    "lightgbm": ("ml", ()),
    "xgboost": ("ml", ()),
}

SCHEMA = {
    "identity_column": "card_id",
    "columns": [
        {"name": "card_id", "type": "string", "nullable": False},
        {"name": "amount", "type": "decimal(10,2)", "min": 0},
        {"name": "category", "type": "string", "allowed": ["grocery", "travel"]},
    ],
}
CSV = "card_id,amount,category\ncard-one,10.00,grocery\ncard-two,,travel\ncard-three,3.50,\n"
OWNER_SEALS = ["--owner", "keys/bank", "-o", "cards.sealed"]

# Run before anything else in a subprocess: the optional packages cannot be imported,
# exactly as when they are not installed (ModuleNotFoundError naming the package).
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
"""


def _requirements() -> dict[str, list[Requirement]]:
    """Every requirement of pyproject.toml by where it is declared, self-references left out."""
    found = {"core": [Requirement(r) for r in PROJECT["dependencies"]]}
    for extra, items in PROJECT["optional-dependencies"].items():
        found[extra] = [
            Requirement(r) for r in items if canonicalize_name(Requirement(r).name) != DISTRIBUTION
        ]
    return found


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin (name==version)"
            assert canonicalize_name(name) not in pins, f"constraints.txt pins {name} twice"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_constraints_file_pins_every_requirement_within_its_range() -> None:
    pins = _pins()
    for where, requirements in _requirements().items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement} ({where}) is not pinned: run `make lock`"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"constraints.txt pins {name}=={pins[name]}, outside {requirement} ({where}): "
                "run `make lock`"
            )


def test_the_core_leaves_out_the_server_opendp_and_postgres() -> None:
    core = {canonicalize_name(r.name) for r in _requirements()["core"]}
    assert core.isdisjoint({"fastapi", "uvicorn", "pydantic-settings", "opendp", "psycopg"})
    extras = PROJECT["optional-dependencies"]
    named = {
        extra: {canonicalize_name(Requirement(r).name) for r in items}
        for extra, items in extras.items()
    }
    assert {"fastapi", "uvicorn", "pydantic-settings"} <= named["server"]
    assert named["dp"] == {"opendp"}
    assert named["postgres"] == {"psycopg"}
    # the server starts the enclaves, and a DP job's enclave needs OpenDP
    assert f"{DISTRIBUTION}[dp]" in extras["server"]
    assert f"{DISTRIBUTION}[server,dp,postgres,pandas,ml]" in extras["all"]
    # the enclave loads ONNX models; a vendor converts them with [ml], never `xgboost` (NCCL)
    assert {"onnxruntime", "onnx"} <= named["server"]
    assert "xgboost" not in named["ml"]
    assert {"scikit-learn", "skl2onnx", "onnxmltools", "lightgbm", "xgboost-cpu"} <= named["ml"]
    assert f"{DISTRIBUTION}[all]" in extras["dev"]  # the Makefile's venv installs [dev]


def _module_level_imports(path: Path) -> list[str]:
    """The packages ``path`` imports outside functions (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(node.module.partition(".")[0])
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def test_optional_packages_are_imported_only_by_the_modules_of_their_extra() -> None:
    wrong = [
        f"{module} imports {name} (the [{OPTIONAL[name][0]}] extra)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module in [path.relative_to(PACKAGE).as_posix()]
        for name in _module_level_imports(path)
        if name in OPTIONAL and not module.startswith(OPTIONAL[name][1] or ("\0",))
    ]
    assert wrong == []


def _without_extras(code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=sorted(OPTIONAL)) + code
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_the_owner_needs_no_extra(tmp_path: Path) -> None:
    (tmp_path / "cards.csv").write_text(CSV)
    (tmp_path / "cards.schema.json").write_text(json.dumps(SCHEMA))
    commands = [
        ["--help"],
        ["party", "create", "bank", "--dir", "keys/bank"],
        ["party", "export", "--dir", "keys/bank", "-o", "bank.identity.json"],
        ["dataset", "encrypt", "cards.csv", "--schema", "cards.schema.json", *OWNER_SEALS],
        ["dataset", "inspect", "cards.sealed", "--identity", "bank.identity.json"],
        ["dataset", "decrypt", "cards.sealed", "--owner", "keys/bank", "-o", "cards.parquet"],
    ]
    code = f"""
import cleanroom, cleanroom.client, cleanroom.agent
from cleanroom import Party, Schema, open_dataset, seal_dataset
party = Party.create("owner")
seal_dataset("cards.csv", schema=Schema.load("cards.schema.json"), owner=party,
             output="sdk.sealed", name="cards")
assert open_dataset("sdk.sealed", party).num_rows == 3
from cleanroom.cli.main import main
for args in {commands!r}:
    sys.argv = ["cleanroom", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
loaded = [m for m in sys.modules if m.partition(".")[0] in BLOCKED]
assert loaded == [], loaded
print("owner ok")
"""
    done = _without_extras(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "owner ok" in done.stdout
    assert (tmp_path / "cards.parquet").is_file()


def test_a_dp_job_without_opendp_names_the_extra(tmp_path: Path) -> None:
    code = """
from cleanroom.enclave.failures import category_of
from cleanroom.errors import MissingExtraError
from cleanroom.enclave.runtime import dp_kind
from cleanroom.policy.rules import DpSpec
spec = DpSpec.model_validate({"epsilon": 1.0, "unit": "person",
                              "aggregates": [{"name": "n", "function": "count"}]})
try:
    dp_kind(spec)
except MissingExtraError as exc:
    print(category_of(exc), "|", exc)
"""
    done = _without_extras(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    category, _, message = done.stdout.strip().partition(" | ")
    assert category == "internal error"  # the ledger learns no more than for any fault
    assert f"pip install '{DISTRIBUTION}[dp]'" in message


def test_the_enclave_prints_the_missing_extra_before_its_category(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cleanroom.enclave import __main__ as enclave_main  # noqa: PLC0415
    from cleanroom.enclave.runtime import DP_EXTRA_MISSING  # noqa: PLC0415
    from cleanroom.errors import MissingExtraError  # noqa: PLC0415

    def run_job(*_args: object, **_kwargs: object) -> None:
        raise MissingExtraError(DP_EXTRA_MISSING)

    monkeypatch.setattr(enclave_main, "run_job", run_job)
    monkeypatch.setattr(sys, "stdin", io.StringIO("token\n"))
    assert enclave_main.main(["--service", "http://127.0.0.1:9", "--room", "r", "--job", "j"]) == 1
    lines = capsys.readouterr().err.splitlines()
    # the service reads the last line only, for a known category (service/jobs.py)
    assert lines == [DP_EXTRA_MISSING, "job failed: internal error"]


def test_the_readme_install_section_links_absolutely() -> None:
    source = PROJECT["urls"]["Source"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Install\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert section is not None, "README.md has no '## Install' section"
    links = re.findall(r"\]\(([^)]+)\)", section.group(1))
    assert links, "the install section links to docs/install.md"
    assert [link for link in links if not link.startswith(source + "/")] == []
    assert f"{source}/blob/main/docs/install.md" in links


# -- the built wheel and a fresh core install (opt-in: about a minute) --------

slow = pytest.mark.skipif(
    os.environ.get(OPT_IN, "") in ("", "0"),
    reason=f"builds the wheel and a fresh venv: set {OPT_IN}=1 (make test-packaging)",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built once for this run (the build backend comes from the registry)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("*.whl")
    return built


def _metadata(wheel: Path) -> tuple[list[str], Message]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, Parser().parsestr(archive.read(meta).decode("utf-8"))


@slow
def test_the_wheel_carries_types_license_urls_and_extras(wheel: Path) -> None:
    names, meta = _metadata(wheel)
    assert "cleanroom/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "Apache-2.0"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL", []))
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues"}
    assert urls == PROJECT["urls"]
    assert {"server", "dp", "postgres", "pandas", "all", "dev"} <= set(
        meta.get_all("Provides-Extra", [])
    )
    classifiers = meta.get_all("Classifier", [])
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers
    unconditional = {
        canonicalize_name(Requirement(r).name)
        for r in meta.get_all("Requires-Dist", [])
        if Requirement(r).marker is None
    }
    assert unconditional == {canonicalize_name(r.name) for r in _requirements()["core"]}


def _pip_install(venv: Path) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]


@pytest.fixture(scope="module")
def core_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the core install only: the wheel, constraints.txt."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [*_pip_install(venv), "-c", str(CONSTRAINTS), str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


def _in(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_", "COVERAGE"))}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": ""})
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@slow
def test_the_core_install_seals_and_runs_the_cli_without_extras(
    core_venv: Path, tmp_path: Path
) -> None:
    code = f"""
import importlib.util, sys
absent = [m for m in {sorted(OPTIONAL)!r} if importlib.util.find_spec(m) is not None]
assert absent == [], f"installed without being asked for: {{absent}}"
import cleanroom, cleanroom.client
from cleanroom import Party, Schema, open_dataset, seal_dataset
party = Party.create("owner")
seal_dataset("cards.csv", schema=Schema.load("cards.schema.json"), owner=party,
             output="cards.sealed", name="cards")
assert open_dataset("cards.sealed", party).num_rows == 3
print(cleanroom.__file__)
"""
    (tmp_path / "cards.csv").write_text(CSV)
    (tmp_path / "cards.schema.json").write_text(json.dumps(SCHEMA))
    done = _in(core_venv, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(core_venv) in done.stdout  # the installed wheel, not this checkout
    shown = _in(core_venv, "cleanroom", "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "dataset" in shown.stdout
    created = _in(core_venv, "cleanroom", "party", "create", "bank", "--dir", "k", cwd=tmp_path)
    assert created.returncode == 0, created.stderr


@slow
def test_serve_without_the_server_extra_names_it(core_venv: Path, tmp_path: Path) -> None:
    done = _in(core_venv, "cleanroom", "serve", "--data-dir", "data", cwd=tmp_path)
    assert done.returncode == 5  # unavailable (docs/cli.md)
    assert "Traceback" not in done.stderr
    assert f"{DISTRIBUTION}[server]" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def server_venv(core_venv: Path, wheel: Path) -> Path:
    """The core venv with the operator's extras added: used last in this file (the tests
    above check the core venv before these are installed)."""
    done = subprocess.run(
        [*_pip_install(core_venv), "-c", str(CONSTRAINTS), f"{wheel}[server,postgres]"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return core_venv


@slow
def test_the_server_extras_bring_what_serve_needs(server_venv: Path, tmp_path: Path) -> None:
    code = (
        "import cleanroom.service.server, cleanroom.service.app, cleanroom.ledger.sql, "
        "opendp.prelude, psycopg; from cleanroom.policy import dp; print('server ok')"
    )
    done = _in(server_venv, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "server ok" in done.stdout
