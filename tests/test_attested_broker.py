"""The attested key broker through a real service, attacked.

The broker is its own process (``python -m cleanroom.broker``), started by the
service; its key is made in memory at start. The operator holds every file of
the service and still opens no deposit; a broker that restarts opens nothing
deposited before (the owners re-deposit, and the job then runs); an owner's SDK
seals nothing to a broker the room's contract does not approve.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom import Party
from cleanroom.client import Room
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.crypto.encoding import b64url_decode
from cleanroom.errors import AttestationError, CleanroomError
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger.local import SERVICE_DIR
from cleanroom.protocol.sealing import deposit_context
from cleanroom.service.local import local_service
from tests.test_jobs import OPEN, _close_clients, _room
from tests.test_owner_release import _strings

__all__ = ["_close_clients"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("broker") / "data"
    with local_service(data, env={"CLEANROOM_JOB_RELEASE_WAIT_S": "60"}) as url:
        yield url, data


def _broker_pids(data: Path) -> list[int]:
    """The key broker processes started by the service running on ``data``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"cleanroom.broker" in command and str(data).encode() in parent_command:
            found.append(int(proc.name))
    return found


def _broker_fingerprint(room: Room) -> str:
    offer = room.client._call("GET", "/v1/broker", params={"nonce": "n" * 24})
    return PublicIdentity.from_document(offer["identity"]).fingerprint


def _keys(rooms: dict[str, Room], tmp: Path) -> dict[str, bytes]:
    keys = {}
    for owner, name in (("bank", "transactions"), ("merchant", "customers")):
        room = rooms[owner]
        party = room.client.party
        manifest = room.audit.verify().state.datasets[name].versions[-1].digest
        vault = KeyVault(party, tmp / party.name / VAULT_DIR)
        keys[name] = vault.open(room.id, name, manifest)
    return keys


def test_the_attested_broker_releases_what_was_deposited_with_it(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = served
    rooms = _room(url, tmp_path, release="broker")
    job = rooms["analyst"].run_job("offers")
    assert rooms["analyst"].wait_job(job, timeout=120)["status"] == "succeeded"
    broker = _broker_fingerprint(rooms["bank"])
    verified = rooms["bank"].audit.verify()
    deposits = [s for s in verified.statements if s.kind == "key.deposit"]
    assert {s.body.release for s in deposits} == {"broker"}
    # each deposit names the attested broker it was sealed to
    assert {PublicIdentity.from_document(s.body.broker.identity).fingerprint for s in deposits} == {
        broker
    }
    # the releases are signed by that broker, never by the service or a member
    releases = [s for s in verified.statements if s.kind == "key.release"]
    assert releases
    assert {s.author for s in releases} == {broker}
    assert broker not in verified.state.members
    assert broker != rooms["bank"].client.service.fingerprint
    assert verified.state.jobs[job].status == "succeeded"


def test_the_operator_with_every_file_and_key_opens_no_broker_deposit(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """Broker mode: the data directory, database, blobs, job logs and the service's
    own keys hold no data key and open no deposit; the broker wrote nothing."""
    url, data = served
    rooms = _room(url, tmp_path, release="broker")
    job = rooms["analyst"].run_job("offers")
    assert rooms["analyst"].wait_job(job, timeout=120)["status"] == "succeeded"
    keys = _keys(rooms, tmp_path)
    everything = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    for name, key in keys.items():
        assert not any(form in everything for form in _strings(key)), name
    service = Party.load(data / SERVICE_DIR)
    verified = rooms["bank"].audit.verify()
    tried = 0
    for statement in verified.statements:
        if statement.kind != "key.deposit":
            continue
        body = statement.body
        sealed = b64url_decode(body.sealed_key or "")
        with pytest.raises(CleanroomError):
            service.open_sealed(
                sealed, deposit_context(rooms["bank"].id, body.dataset, body.manifest)
            )
        tried += 1
    assert tried == 2
    # the broker process holds no file open for writing, and none under the data dir
    (pid,) = _broker_pids(data)
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink())
        assert not target.startswith(str(data)), target
        if target.startswith("/") and not target.startswith("/dev/"):
            flags = int(Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().split()[3], 8)
            assert flags & (os.O_WRONLY | os.O_RDWR) == 0, target


def test_a_restarted_broker_opens_no_old_deposit_until_owners_redeposit(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, data = served
    rooms = _room(url, tmp_path, release="broker")
    before = _broker_fingerprint(rooms["bank"])
    for pid in _broker_pids(data):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert rooms["bank"].stale_deposits() == ["transactions"]  # a new broker, a new key
    assert _broker_fingerprint(rooms["bank"]) != before
    job = rooms["analyst"].run_job("offers")
    time.sleep(1.0)
    view = rooms["analyst"].job(job)
    assert view["status"] == "requested"  # waiting: the new broker cannot open old deposits
    assert view["waiting_for"] == ["key broker"]
    assert view["stale"] == ["transactions", "customers"]  # what the job says it waits for
    assert rooms["bank"].redeposit() == ["transactions"]
    assert rooms["merchant"].redeposit() == ["customers"]
    assert rooms["bank"].stale_deposits() == []
    done = rooms["analyst"].wait_job(job, timeout=120)
    assert done["status"] == "succeeded", done["reason"]
    releases = [s for s in rooms["bank"].audit.verify().statements if s.kind == "key.release"]
    assert {s.author for s in releases} == {_broker_fingerprint(rooms["bank"])}


def test_an_owner_seals_nothing_to_a_broker_the_contract_does_not_approve(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """The room approves another measurement only: the SDK checks the broker's
    evidence against the verified contract and refuses before sealing the key."""
    url, _ = served
    with pytest.raises(AttestationError, match=r"key broker is not attested.*not approved"):
        _room(url, tmp_path, release="broker", measurement="insecure-virtual:" + "ab" * 48)
    bank = OPEN[-3]
    (info,) = bank.rooms()
    # refused before anything was sealed, proposed, uploaded or deposited: the only
    # proposal is the contract's
    statements = bank.room(info.room).audit.verify().statements
    assert "key.deposit" not in [s.kind for s in statements]
    proposed = [s.body.action.type for s in statements if s.kind == "proposal.create"]
    assert proposed == ["set_measurements"]
