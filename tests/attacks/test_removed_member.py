"""The others vote a data owner out. What it keeps, whatever the constitution:
reading the room's history up to and including its removal (verified offline,
tied to every tree head it saw) and revoking consent for its own datasets. What
it gets beyond that: nothing (no later entry, no state, no proposal, no blob, no
other statement). A real ``cleanroom serve``."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cleanroom import Party, Schema
from cleanroom.client import Client, Room, verify_prefix_export
from cleanroom.errors import AuthorizationError, CleanroomError, GovernanceError
from cleanroom.governance import statements as st
from cleanroom.service.local import local_service

SCHEMA = Schema.from_json(
    {
        "identity_column": "id",
        "columns": [
            {"name": "id", "type": "string", "nullable": False},
            {"name": "segment", "type": "string"},
        ],
    }
)
MEASUREMENTS = {"type": "set_measurements", "measurements": []}
OPEN: list[Client] = []


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def connect(url: str, keystore: Path) -> Client:
    opened = Client(url, keystore)
    OPEN.append(opened)
    return opened


def removed_owner(url: str, keys: dict[str, Path]) -> tuple[dict[str, Room], int]:
    """bank, merchant and analyst; the merchant registers a dataset and is voted
    out by the others. Returns each party's room and the removal's position."""
    clients = {n: connect(url, k) for n, k in keys.items()}
    roles = {
        "bank": ["data_provider", "result_recipient"],
        "merchant": ["data_provider"],
        "analyst": ["analyst"],
    }
    created = clients["bank"].create_room(
        "offers", [(clients[n].party.identity_document(), roles[n]) for n in clients]
    )
    rooms = {n: c.room(created.id) for n, c in clients.items()}
    rooms["merchant"].accept()
    rooms["analyst"].accept()
    table = pa.table({"id": ["a", "b"], "segment": ["x", "y"]})
    pid = rooms["merchant"].publish_dataset(table, schema=SCHEMA, name="customers")
    rooms["merchant"].approve(pid)
    rooms["bank"].approve(pid)
    merchant = clients["merchant"].party.fingerprint
    remove = rooms["bank"].propose({"type": "remove_member", "member": merchant})
    rooms["bank"].approve(remove)
    rooms["analyst"].approve(remove)  # decides: the merchant is removed at this entry
    removal = rooms["bank"].audit.verify().state.members[merchant].removed_at
    return rooms, removal


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return {n: Party.create(n).save(tmp_path / "keys" / n) for n in ("bank", "merchant", "analyst")}


def test_a_removed_owner_reads_its_history_and_revokes_nothing_more(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    with local_service(data) as url:
        rooms, removal = removed_owner(url, keys)
        bank, merchant = rooms["bank"], rooms["merchant"]
        later = bank.propose(MEASUREMENTS)  # the room goes on without it
        bank.approve(later)
        # (1) its history: exactly up to and including its removal, verified offline
        document = merchant.audit.export()
        assert len(document["entries"]) == removal + 1
        verified = merchant.audit.verify(document)
        me = merchant.client.party.fingerprint
        assert verified.state.members[me].status == "removed"
        assert verified.state.datasets["customers"].consent is False
        assert merchant.tree_head().size > removal + 1  # heads link to what it saw
        entries = merchant.client._call(
            "GET", f"/v1/rooms/{merchant.id}/entries", params={"start": removal}
        )["entries"]
        assert [e["seq"] for e in entries] == [removal]
        with pytest.raises(AuthorizationError, match="up to its removal"):
            merchant.client._call("GET", f"/v1/rooms/{merchant.id}/receipts/{removal + 1}")
        assert merchant.client._call("GET", f"/v1/rooms/{merchant.id}/receipts/{removal}")
        # (2) nothing after it, and nothing else of the room
        version = verified.state.datasets["customers"].versions[0].manifest.sha256
        for read in (
            Room.state,
            Room.proposals,
            Room.jobs,
            lambda r: r.download(version, tmp_path / "stolen.parquet"),
        ):
            with pytest.raises(AuthorizationError, match="not a member"):
                read(merchant)
        assert not (tmp_path / "stolen.parquet").exists()
        # (3) it may still revoke consent for its own data, once; nothing else
        merchant.revoke_consent("customers")
        with pytest.raises(GovernanceError, match="already revoked"):
            merchant.revoke_consent("customers")
        for act in (
            lambda r: r.propose(MEASUREMENTS),
            lambda r: r.approve(later),
            lambda r: r._submit(st.request_job(r.client.party, r.id, "anything", "0" * 64)),
        ):
            with pytest.raises(AuthorizationError):
                act(merchant)
        cards = bank.publish_dataset(
            pa.table({"id": ["c"], "segment": ["z"]}), schema=SCHEMA, name="cards"
        )
        bank.approve(cards)
        with pytest.raises(GovernanceError, match="only the dataset's owner"):
            merchant.revoke_consent("cards")  # another owner's data is not its to withdraw
        # its view still verifies after its own revocation moved the head on
        assert len(merchant.audit.verify().entries) == removal + 1
        # (4) nothing lost for the others: the full history, its revocation recorded
        full = bank.audit.verify()
        revokes = [s for s in full.statements if s.kind == "consent.revoke"]
        assert [s.author for s in revokes] == [me]
        assert full.state.datasets["customers"].consent is False
        # (5) the export file verifies with the command line alone (a head covers it)
        exported = tmp_path / "merchant.ledger.json"
        command = [sys.executable, "-m", "cleanroom", "audit"]
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        env.pop("CLEANROOM_SERVICE_KEY", None)
        for args in (
            [
                *("export", "--room", merchant.id, "-o", str(exported)),
                *("--service", url, "--as", str(keys["merchant"])),
            ],
            ["verify", str(exported), "--service-key", str(data / "service" / "identity.json")],
        ):
            done = subprocess.run(
                [*command, *args], env=env, capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, done.stderr
        assert len(json.loads(exported.read_text())["entries"]) == removal + 1
        assert "removed" in done.stdout


def test_a_removed_members_history_cannot_be_cut_or_edited(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    with local_service(tmp_path / "data") as url:
        rooms, removal = removed_owner(url, keys)
        merchant = rooms["merchant"]
        rooms["bank"].propose(MEASUREMENTS)
        document = merchant.audit.export()
        service = merchant.client.service
        verify_prefix_export(document, service)

        def cut(d: dict[str, Any]) -> None:  # drop the removal itself
            d["entries"].pop()

        def edit(d: dict[str, Any]) -> None:
            d["entries"][1]["statement"] = d["entries"][2]["statement"]

        def reorder(d: dict[str, Any]) -> None:
            d["entries"][1], d["entries"][2] = d["entries"][2], d["entries"][1]

        def proof(d: dict[str, Any]) -> None:
            d["prefix"]["consistency"] = d["prefix"]["consistency"][1:]

        def head(d: dict[str, Any]) -> None:  # an older head, not the one the proof is for
            d["prefix"]["tree_head"] = d["tree_heads"][0]

        for tamper in (cut, edit, reorder, proof, head):
            bad = copy.deepcopy(document)
            tamper(bad)
            with pytest.raises(CleanroomError):
                verify_prefix_export(bad, service)
        # strangers get none of it
        stranger = connect(url, Party.create("stranger").save(tmp_path / "keys" / "stranger"))
        stranger.create_room("own", [(stranger.party.identity_document(), ["analyst"])])
        for path in ("export", "tree-head", "entries"):
            with pytest.raises(AuthorizationError, match="not a member"):
                stranger._call("GET", f"/v1/rooms/{merchant.id}/{path}")
        statement = st.revoke_consent(stranger.party, merchant.id, "customers")
        with pytest.raises(AuthorizationError, match="not a member"):
            stranger._call(
                "POST", f"/v1/rooms/{merchant.id}/statements", json_body={"statements": [statement]}
            )
        assert removal > 0
