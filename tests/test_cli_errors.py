"""A new user's mistakes, run through the real ``cleanroom`` command.

Each row is one mistake: the command line, the exit status documented in
``cleanroom --help`` (cleanroom.cli.failures.EXIT_CODES) and what the message
must name. Every row also checks that no traceback is printed, that the
error is one line ``error: ...`` and that a hint follows. Rows needing a
service share one local service (``cleanroom serve`` in a temporary
directory), with a room where a dataset is registered.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.cli import failures

CSV = "card_id,amount\ncard-one,10.00\ncard-two,3.50\n"
SCHEMA = {
    "identity_column": "card_id",
    "columns": [
        {"name": "card_id", "type": "string", "nullable": False},
        {"name": "amount", "type": "decimal(10,2)", "min": 0},
    ],
}


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    for name in (
        "CLEANROOM_PASSPHRASE",
        "CLEANROOM_SERVICE",
        "CLEANROOM_KEYSTORE",
        "CLEANROOM_ROOM",
    ):
        full_env.pop(name, None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class World:
    """Keystores, files, and a service with one room where 'customers' is registered."""

    def __init__(self, root: Path, url: str, room: str) -> None:
        self.root = root
        self.url = url
        self.room = room


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from cleanroom.client import Client  # noqa: PLC0415
    from cleanroom.service.local import local_service  # noqa: PLC0415

    root = tmp_path_factory.mktemp("mistakes")
    for name in ("bank", "merchant", "analyst"):
        assert cli("party", "create", name, "--dir", f"keys/{name}", cwd=root).returncode == 0
    assert (
        cli(
            "party",
            "create",
            "locked",
            "--dir",
            "keys/locked",
            "--passphrase",
            cwd=root,
            env={"CLEANROOM_PASSPHRASE": "right horse"},
        ).returncode
        == 0
    )
    (root / "cards.csv").write_text(CSV)
    (root / "cards.schema.json").write_text(json.dumps(SCHEMA))
    (root / "typo.sql").write_text("SELEC card_id FROM customers")
    (root / "broken.json").write_text('{"rule": "aggregation",')
    with local_service(root / "service-data") as url:
        keys = root / "keys"
        with Client(url, keys / "bank") as bank:
            room = bank.create_room(
                "offers",
                [
                    (keys / "bank" / "identity.json", ["data_provider", "result_recipient"]),
                    (keys / "merchant" / "identity.json", ["data_provider"]),
                    (keys / "analyst" / "identity.json", ["analyst"]),
                ],
            )
            with Client(url, keys / "merchant") as merchant, Client(url, keys / "analyst") as an:
                merchant.room(room.id).accept()
                an.room(room.id).accept()
                shop = merchant.room(room.id)
                pid = shop.publish_dataset(
                    root / "cards.csv", schema=root / "cards.schema.json", name="customers"
                )
                shop.approve(pid)
                bank.room(room.id).approve(pid)
        yield World(root, url, room.id)


def _check(result: subprocess.CompletedProcess[str], code: int, names: list[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    for name in names:
        assert name in result.stderr, result.stderr


# (id, command line, extra environment, exit status, what the message names)
OFFLINE: list[tuple[str, list[str], dict[str, str], int, list[str]]] = [
    (
        "missing member file",
        [
            "room",
            "create",
            "x",
            "--roles",
            "analyst",
            "--member",
            "nope.json:analyst",
            "--service",
            "http://127.0.0.1:9",
            "--as",
            "keys/bank",
        ],
        {},
        failures.NOT_FOUND,
        ["nope.json", "--member"],
    ),
    (
        "keystore directory given as an identity",
        ["party", "show", "--identity", "keys/bank"],
        {},
        failures.USAGE,
        ["keys/bank is a directory", "keys/bank/identity.json"],
    ),
    (
        "keystore directory given as a member",
        [
            "room",
            "create",
            "x",
            "--roles",
            "analyst",
            "--member",
            "keys/merchant:data_provider",
            "--service",
            "http://127.0.0.1:9",
            "--as",
            "keys/bank",
        ],
        {},
        failures.USAGE,
        ["keys/merchant is a directory", "keys/merchant/identity.json"],
    ),
    (
        "missing SQL file",
        [
            "analysis",
            "propose",
            "a",
            "--sql",
            "nope.sql",
            "-i",
            "customers",
            "--recipient",
            "bank",
            "--room",
            "offers",
            "--service",
            "http://127.0.0.1:9",
            "--as",
            "keys/analyst",
        ],
        {},
        failures.NOT_FOUND,
        ["nope.sql", "--sql"],
    ),
    (
        "an identity file given as a keystore",
        ["party", "export", "--dir", "cards.csv", "-o", "out.json"],
        {},
        failures.USAGE,
        ["cards.csv is a file", "--dir"],
    ),
    (
        "malformed JSON file",
        ["party", "show", "--identity", "broken.json"],
        {},
        failures.USAGE,
        ["broken.json", "--identity"],
    ),
    (
        "wrong passphrase",
        ["party", "export", "--dir", "keys/locked", "-o", "locked.json"],
        {"CLEANROOM_PASSPHRASE": "wrong horse"},
        failures.AUTH,
        ["wrong passphrase", "CLEANROOM_PASSPHRASE"],
    ),
    (
        "no passphrase",
        ["party", "export", "--dir", "keys/locked", "-o", "locked.json"],
        {},
        failures.AUTH,
        ["CLEANROOM_PASSPHRASE"],
    ),
    (
        "unreachable service",
        ["room", "list", "--service", "http://127.0.0.1:9", "--as", "keys/bank"],
        {},
        failures.UNAVAILABLE,
        ["http://127.0.0.1:9", "cleanroom serve"],
    ),
    (
        "unreachable service from the environment",
        ["room", "list", "--as", "keys/bank"],
        {"CLEANROOM_SERVICE": "http://127.0.0.1:9"},
        failures.UNAVAILABLE,
        ["http://127.0.0.1:9", "CLEANROOM_SERVICE"],
    ),
    (
        "not a URL",
        ["room", "list", "--service", "localhost", "--as", "keys/bank"],
        {},
        failures.USAGE,
        ["'localhost' is not a service URL", "http://HOST:PORT"],
    ),
    (
        "a missing option",
        ["room", "list", "--as", "keys/bank"],
        {},
        failures.USAGE,
        ["--service"],
    ),
    (
        "an unknown role",
        [
            "member",
            "add",
            "x.json",
            "--roles",
            "boss",
            "--room",
            "r",
            "--service",
            "http://127.0.0.1:9",
            "--as",
            "keys/bank",
        ],
        {},
        failures.USAGE,
        ["boss", "data_provider"],
    ),
]


@pytest.mark.parametrize(
    ("command", "env", "code", "names"), [r[1:] for r in OFFLINE], ids=[r[0] for r in OFFLINE]
)
def test_offline_mistakes(
    world: World, command: list[str], env: dict[str, str], code: int, names: list[str]
) -> None:
    result = cli(*command, cwd=world.root, env=env)
    _check(result, code, names)
    lines = result.stderr.strip().splitlines()
    if lines[0].startswith("Usage:"):  # Click's own usage errors: exit 2, the option named
        assert code == failures.USAGE
    else:
        assert lines[0].startswith("error: "), result.stderr
        assert lines[1].startswith("hint: "), result.stderr


ONLINE: list[tuple[str, list[str], str, int, list[str]]] = [
    (
        "bad room id",
        ["room", "show", "--room", "0000beef"],
        "bank",
        failures.NOT_FOUND,
        ["no room '0000beef'", "cleanroom room list"],
    ),
    (
        "room id prefix too short",
        ["room", "show", "--room", "ab"],
        "bank",
        failures.NOT_FOUND,
        ["'ab'"],
    ),
    (
        "unknown member name",
        [
            "analysis",
            "propose",
            "a",
            "--sql",
            "typo.sql",
            "-i",
            "customers",
            "--recipient",
            "nobody",
            "--room",
            "offers",
        ],
        "analyst",
        failures.NOT_FOUND,
        ["no member 'nobody'", "bank"],
    ),
    (
        "SQL typo",
        [
            "analysis",
            "propose",
            "a",
            "--sql",
            "typo.sql",
            "-i",
            "customers",
            "--recipient",
            "bank",
            "--room",
            "offers",
        ],
        "analyst",
        failures.REFUSED,
        ["SQL", "cleanroom analysis check"],
    ),
    (
        "SQL typo, checked first",
        [
            "analysis",
            "check",
            "--sql",
            "typo.sql",
            "-i",
            "customers",
            "--recipient",
            "bank",
            "--room",
            "offers",
        ],
        "analyst",
        failures.REFUSED,
        ["SQL", "typo.sql"],
    ),
    (
        "unknown proposal",
        ["proposal", "approve", "ffffffff", "--room", "offers"],
        "bank",
        failures.NOT_FOUND,
        ["no proposal 'ffffffff'"],
    ),
    (
        "unknown job",
        ["job", "status", "deadbeef", "--room", "offers"],
        "bank",
        failures.NOT_FOUND,
        ["no job 'deadbeef'", "cleanroom job list"],
    ),
    (
        "unknown dataset",
        ["consent", "revoke", "cards", "--room", "offers"],
        "merchant",
        failures.NOT_FOUND,
        ["no dataset 'cards'", "customers"],
    ),
    (
        "unknown analysis",
        ["job", "run", "offers", "--room", "offers"],
        "analyst",
        failures.NOT_FOUND,
        ["no analysis 'offers'"],
    ),
    ("a stranger's key", ["room", "list"], "stranger", failures.AUTH, ["unknown key"]),
    (
        "unknown member to remove",
        ["member", "remove", "nobody", "--room", "offers"],
        "bank",
        failures.NOT_FOUND,
        ["no member 'nobody'"],
    ),
]


@pytest.mark.parametrize(
    ("command", "who", "code", "names"), [r[1:] for r in ONLINE], ids=[r[0] for r in ONLINE]
)
def test_service_mistakes(
    world: World, command: list[str], who: str, code: int, names: list[str]
) -> None:
    if who == "stranger" and not (world.root / "keys" / "stranger").exists():
        cli("party", "create", "stranger", "--dir", "keys/stranger", cwd=world.root)
    env = {"CLEANROOM_SERVICE": world.url, "CLEANROOM_KEYSTORE": f"keys/{who}"}
    result = cli(*command, cwd=world.root, env=env)
    _check(result, code, names)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: "), result.stderr
    assert lines[1].startswith("hint: "), result.stderr


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = cli("serve", "--data-dir", "data", "--port", port, cwd=tmp_path)
    _check(result, failures.UNAVAILABLE, [f"{port} is already in use", "--port"])


def test_a_bug_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cleanroom.cli.main import run  # noqa: PLC0415
    from cleanroom.identities import PublicIdentity  # noqa: PLC0415

    def boom(path: Path) -> None:
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(PublicIdentity, "load", boom)
    monkeypatch.delenv("CLEANROOM_DEBUG", raising=False)
    assert run(["party", "show", "--identity", str(tmp_path / "x.json")]) == failures.BUG
    err = capsys.readouterr().err
    assert "an invariant broke" in err
    assert "this is a bug; rerun with CLEANROOM_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("CLEANROOM_DEBUG", "1")
    assert run(["party", "show", "--identity", str(tmp_path / "x.json")]) == failures.BUG
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cleanroom.cli.main import run  # noqa: PLC0415
    from cleanroom.identities import PublicIdentity  # noqa: PLC0415

    def interrupted(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PublicIdentity, "load", interrupted)
    assert run(["party", "show", "--identity", str(tmp_path / "x.json")]) == failures.INTERRUPTED


def test_the_exit_codes_are_in_the_help() -> None:
    result = cli("--help", cwd=Path.cwd())
    assert result.returncode == 0
    for code, meaning in failures.EXIT_CODES:
        assert f"{code:>3}  {meaning}" in result.stdout


def test_the_exit_codes_are_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    for code, _ in failures.EXIT_CODES:
        assert f"| {code} |" in doc


def test_a_missing_optional_part_is_named_with_its_extra() -> None:
    from cleanroom.cli.failures import UNAVAILABLE, explain  # noqa: PLC0415

    for module, extra in [("uvicorn", "server"), ("opendp.prelude", "dp"), ("psycopg", "postgres")]:
        exc = ModuleNotFoundError(f"No module named {module!r}", name=module)
        failure = explain(exc)
        assert failure.code == UNAVAILABLE
        assert f"confidential-cleanroom[{extra}]" in (failure.hint or "")
    other = explain(ModuleNotFoundError("No module named 'x'", name="x"))
    assert other.code != UNAVAILABLE  # not an extra: a bug, reported as one
