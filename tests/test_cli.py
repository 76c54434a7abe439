"""The real ``cleanroom`` command, run as a separate process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCHEMA = {
    "identity_column": "card_id",
    "columns": [
        {"name": "card_id", "type": "string", "nullable": False},
        {"name": "amount", "type": "decimal(10,2)", "min": 0},
        {"name": "category", "type": "string", "allowed": ["grocery", "travel"]},
    ],
}
CSV = "card_id,amount,category\ncard-one,10.00,grocery\ncard-two,,travel\ncard-three,3.50,\n"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    full_env.pop("CLEANROOM_PASSPHRASE", None)
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cards.csv").write_text(CSV)
    (tmp_path / "cards.schema.json").write_text(json.dumps(SCHEMA))
    return tmp_path


COMMANDS = [
    [],
    ["party"],
    ["party", "create"],
    ["party", "show"],
    ["party", "export"],
    ["dataset"],
    ["dataset", "encrypt"],
    ["dataset", "decrypt"],
    ["dataset", "inspect"],
    ["dataset", "publish"],
    ["dataset", "list"],
    ["dataset", "download"],
    ["model"],
    ["model", "publish"],
    ["audit"],
    ["audit", "export"],
    ["audit", "verify"],
    ["audit", "log"],
    ["room"],
    ["room", "create"],
    ["room", "join"],
    ["room", "list"],
    ["room", "show"],
    ["room", "set-limits"],
    ["room", "set-constitution"],
    ["member"],
    ["member", "list"],
    ["member", "add"],
    ["member", "remove"],
    ["dataset", "set-rule"],
    ["proposal"],
    ["proposal", "list"],
    ["proposal", "show"],
    ["proposal", "approve"],
    ["proposal", "reject"],
    ["proposal", "withdraw"],
    ["consent"],
    ["consent", "revoke"],
    ["consent", "restore"],
    ["analysis"],
    ["analysis", "propose"],
    ["analysis", "propose-scoring"],
    ["analysis", "check"],
    ["analysis", "list"],
    ["analysis", "retire"],
    ["enclave"],
    ["enclave", "measure"],
    ["enclave", "approve"],
    ["job"],
    ["job", "run"],
    ["job", "status"],
    ["job", "list"],
    ["job", "result"],
    ["budget"],
    ["budget", "show"],
    ["budget", "set"],
    ["serve"],
    ["version"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(command: list[str]) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from cleanroom.cli.main import app  # noqa: PLC0415

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if len(command) == 2 or command == ["serve"]:
        assert "Example:" in result.output


def test_full_flow_as_a_data_owner(workdir: Path) -> None:
    created = run("party", "create", "bank", "--dir", "keys/bank", cwd=workdir)
    assert "fingerprint:" in created.stdout
    assert "unencrypted" in created.stderr
    run("party", "export", "--dir", "keys/bank", "-o", "bank.identity.json", cwd=workdir)
    shown = run("party", "show", "--identity", "bank.identity.json", cwd=workdir)
    assert "bank" in shown.stdout
    run(
        "dataset",
        "encrypt",
        "cards.csv",
        "--schema",
        "cards.schema.json",
        "--owner",
        "keys/bank",
        "-o",
        "cards.sealed",
        cwd=workdir,
    )
    assert sorted(p.name for p in (workdir / "cards.sealed").iterdir())[0] == "data.parquet"
    inspected = run(
        "dataset", "inspect", "cards.sealed", "--identity", "bank.identity.json", cwd=workdir
    )
    assert "signature ok" in inspected.stdout
    assert "3 rows" in inspected.stdout
    assert "card-one" not in inspected.stdout  # no rows without the key
    preview = run(
        "dataset", "inspect", "cards.sealed", "--owner", "keys/bank", "--rows", "2", cwd=workdir
    )
    assert "card-one" in preview.stdout
    assert "card-three" not in preview.stdout
    run("dataset", "decrypt", "cards.sealed", "--owner", "keys/bank", "-o", "out.csv", cwd=workdir)
    assert (workdir / "out.csv").read_text().splitlines()[1] == '"card-one",10.00,"grocery"'


def test_passphrase_protected_keystore(workdir: Path) -> None:
    env = {"CLEANROOM_PASSPHRASE": "s3cret passphrase"}
    run("party", "create", "bank", "--dir", "k", "--passphrase", cwd=workdir, env=env)
    run("party", "export", "--dir", "k", "-o", "id.json", cwd=workdir, env=env)
    wrong = run(
        "party",
        "export",
        "--dir",
        "k",
        "-o",
        "id2.json",
        cwd=workdir,
        env={"CLEANROOM_PASSPHRASE": "guess"},
        ok=False,
    )
    assert wrong.returncode == 4  # authentication (docs/cli.md)
    assert "wrong passphrase" in wrong.stderr
    missing = run(
        "party",
        "export",
        "--dir",
        "k",
        "-o",
        "id3.json",
        cwd=workdir,
        env={"CLEANROOM_PASSPHRASE": ""},
        ok=False,
    )
    assert "CLEANROOM_PASSPHRASE" in missing.stderr
    assert not (workdir / "id2.json").exists()


def test_errors_are_one_line_with_a_hint(workdir: Path) -> None:
    run("party", "create", "bank", "--dir", "k", cwd=workdir)
    (workdir / "bad.csv").write_text(CSV.replace("travel", "casino"))
    result = run(
        "dataset",
        "encrypt",
        "bad.csv",
        "--schema",
        "cards.schema.json",
        "--owner",
        "k",
        "-o",
        "out",
        cwd=workdir,
        ok=False,
    )
    assert result.returncode == 2  # bad input (docs/cli.md)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: row 2, column 'category': 'casino' is not one of the allowed values"
    assert lines[1].startswith("hint:")
    assert not (workdir / "out").exists()


def test_unsafe_keystore_permissions(workdir: Path) -> None:
    run("party", "create", "bank", "--dir", "k", cwd=workdir)
    (workdir / "k" / "keystore.json").chmod(0o644)
    result = run("party", "export", "--dir", "k", "-o", "x.json", cwd=workdir, ok=False)
    assert "chmod 600" in result.stderr


def test_tampered_dataset_is_reported(workdir: Path) -> None:
    run("party", "create", "bank", "--dir", "k", cwd=workdir)
    run(
        "dataset",
        "encrypt",
        "cards.csv",
        "-s",
        "cards.schema.json",
        "--owner",
        "k",
        "-o",
        "d",
        cwd=workdir,
    )
    data = workdir / "d" / "data.parquet"
    data.write_bytes(data.read_bytes()[:-1] + b"X")
    result = run("dataset", "decrypt", "d", "--owner", "k", "-o", "o.csv", cwd=workdir, ok=False)
    assert "does not match the signed manifest" in result.stderr
    assert not (workdir / "o.csv").exists()


def test_missing_files_are_operational_errors(workdir: Path) -> None:
    run("party", "create", "bank", "--dir", "k", cwd=workdir)
    result = run(
        "dataset",
        "encrypt",
        "cards.csv",
        "-s",
        "nope.json",
        "--owner",
        "k",
        "-o",
        "d",
        cwd=workdir,
        ok=False,
    )
    assert result.returncode == 3
    assert "nope.json does not exist" in result.stderr


def test_usage_errors_exit_2(workdir: Path) -> None:
    result = run("party", "show", cwd=workdir, ok=False)
    assert result.returncode == 2
    assert "exactly one of --dir or --identity" in result.stderr


def test_audit_export_verify_log_rollback_and_tampering(workdir: Path) -> None:
    import time  # noqa: PLC0415

    from cleanroom.ledger import open_ledger  # noqa: PLC0415
    from tests.rooms import Clock, RoomFixture  # noqa: PLC0415

    ledger = open_ledger(workdir / "data")
    room = RoomFixture(ledger, Clock(time.time_ns() // 1_000_000))
    pid = room.propose("bank", {"type": "set_measurements", "measurements": []})
    room.vote("bank", pid)
    key = "data/service/identity.json"
    export = ("audit", "export", "--data-dir", "data", "--room", room.room)
    run(*export, "-o", "old.json", cwd=workdir)
    verified = run("audit", "verify", "old.json", "--service-key", key, cwd=workdir)
    assert "verified: 6 entries" in verified.stdout
    assert "contract version 1" in verified.stdout
    log = run("audit", "log", "old.json", "-k", key, cwd=workdir)
    assert "room.create" in log.stdout
    assert "set_measurements" in log.stdout
    # the ledger grows; a client that saw the newer head refuses the older export
    room.vote("merchant", pid)
    run(*export, "-o", "new.json", cwd=workdir)
    run("audit", "verify", "new.json", "-k", key, "--known-heads", "heads.json", cwd=workdir)
    rollback = run(
        "audit",
        "verify",
        "old.json",
        "-k",
        key,
        "--known-heads",
        "heads.json",
        cwd=workdir,
        ok=False,
    )
    assert "rolled back" in rollback.stderr
    assert "keep both exports as evidence" in rollback.stderr
    # tampering and a wrong service key are reported
    document = json.loads((workdir / "new.json").read_text())
    token = document["entries"][2]["statement"]
    document["entries"][2]["statement"] = token[:-1] + ("A" if token[-1] != "A" else "B")
    (workdir / "tampered.json").write_text(json.dumps(document))
    tampered = run("audit", "verify", "tampered.json", "-k", key, cwd=workdir, ok=False)
    assert tampered.returncode == 1
    assert "signed tree head" in tampered.stderr
    run("party", "create", "x", "--dir", "x", cwd=workdir)
    wrong_key = run("audit", "verify", "new.json", "-k", "x/identity.json", cwd=workdir, ok=False)
    assert "different ledger service" in wrong_key.stderr
    ledger.store.close()


def test_three_parties_through_the_cli_against_a_real_service(workdir: Path) -> None:
    from cleanroom.service.local import local_service  # noqa: PLC0415

    with local_service(workdir / "service-data") as url:
        for name in ("bank", "merchant", "analyst"):
            run("party", "create", name, "--dir", f"keys/{name}", cwd=workdir)

        def as_(name: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
            return run(
                *args,
                cwd=workdir,
                ok=ok,
                env={"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": f"keys/{name}"},
            )

        created = as_(
            "bank",
            "room",
            "create",
            "offers",
            "--roles",
            "data_provider,result_recipient",
            "--member",
            "keys/merchant/identity.json:data_provider",
            "--member",
            "keys/analyst/identity.json:analyst",
        )
        room = created.stdout.split("Created room offers: ")[1].split()[0]
        as_("merchant", "room", "join", "--room", room)
        assert "active" in as_("analyst", "room", "join", "--room", room).stdout
        assert room[:12] in as_("analyst", "room", "list").stdout  # short ids in tables
        published = as_(
            "merchant",
            "dataset",
            "publish",
            "cards.csv",
            "--schema",
            "cards.schema.json",
            "--name",
            "customers",
            "--room",
            room,
        )
        assert "awaits approval" in published.stdout
        listed = as_("bank", "proposal", "list", "--room", room).stdout
        proposal = re.search(r"([0-9a-f]{12}) .*register_dataset", listed).group(1)  # type: ignore[union-attr]
        as_("merchant", "proposal", "approve", proposal, "--room", room)
        approved = as_("bank", "proposal", "approve", proposal, "--room", room)
        assert "accepted" in approved.stdout
        assert "customers" in as_("analyst", "dataset", "list", "--room", room).stdout
        as_(
            "analyst", "dataset", "download", "customers", "-o", "customers.parquet", "--room", room
        )
        assert (workdir / "customers.parquet").read_bytes()[:4] == b"PARE"  # still encrypted
        again = as_("bank", "proposal", "approve", proposal, "--room", room, ok=False)
        assert "accepted, not open" in again.stderr
        assert again.stderr.strip().splitlines()[1].startswith("hint:")
        as_("merchant", "consent", "revoke", "customers", "--room", room)
        shown = as_("analyst", "room", "show", "--room", room).stdout
        assert "revoked" in shown
        as_("analyst", "audit", "export", "--room", room, "-o", "room.json")
        run("audit", "verify", "room.json", "-k", "service-data/service/identity.json", cwd=workdir)
        stranger = run("party", "create", "x", "--dir", "keys/x", cwd=workdir)
        assert stranger.returncode == 0
        refused = as_("x", "room", "show", "--room", room, ok=False)
        assert "unknown key" in refused.stderr  # the service knows members' keys only
        assert refused.returncode == 4
        _governance_by_name(as_, workdir)


def _governance_by_name(as_: Any, workdir: Path) -> None:
    """Every governance action from the CLI, the room named by its name; each
    proposal is accepted by the service's state machine (it validates the action)."""
    (workdir / "rule.json").write_text(json.dumps({"type": "custom", "min_distinct": 2}))
    rooms = json.loads(as_("bank", "room", "list", "--json").stdout)
    assert [r["name"] for r in rooms] == ["offers"]
    assert len(rooms[0]["room"]) == 32  # --json: full ids
    by_name = ("--room", "offers")
    made = {
        "restore_consent": as_("merchant", "consent", "restore", "customers", *by_name, "-q"),
        "set_privacy_budget": as_(
            "merchant", "budget", "set", "customers", "--epsilon", "2", *by_name, "-q"
        ),
        "set_analysis_rule": as_(
            "merchant", "dataset", "set-rule", "customers", "--rule", "rule.json", *by_name, "-q"
        ),
        "set_limits": as_(
            "bank",
            "room",
            "set-limits",
            "--time-s",
            "60",
            "--memory-mb",
            "512",
            "--max-rows",
            "1000",
            *by_name,
            "-q",
        ),
        "change_constitution": as_(
            "bank", "room", "set-constitution", "--rule", "majority", *by_name, "-q"
        ),
        "add_member": as_(
            "bank", "member", "add", "keys/x/identity.json", "--roles", "observer", *by_name, "-q"
        ),
        "remove_member": as_("bank", "member", "remove", "analyst", *by_name, "-q"),
    }
    ids = {kind: result.stdout.strip() for kind, result in made.items()}
    assert all(re.fullmatch(r"[0-9a-f]{64}", pid) for pid in ids.values()), ids
    listed = json.loads(as_("bank", "proposal", "list", *by_name, "--json").stdout)
    assert {p["id"]: p["type"] for p in listed if p["id"] in ids.values()} == {
        pid: kind for kind, pid in ids.items()
    }
    members = json.loads(as_("bank", "member", "list", *by_name, "--json").stdout)
    assert {m["name"] for m in members} == {"bank", "merchant", "analyst"}
    shown = as_("bank", "proposal", "show", ids["set_limits"][:6], *by_name, "--json").stdout
    assert json.loads(shown)["action"]["max_result_rows"] == 1000
    retire = as_("bank", "analysis", "retire", "nothing", *by_name, ok=False)
    assert retire.returncode == 3
    assert "no analysis 'nothing'" in retire.stderr
