"""Owner-held key release, attacked: the operator holds every file and process
of the service and still cannot open a dataset; forged, replayed and stale
key requests get nothing from an owner's agent; an agent offline makes the
job wait, then fail, never fall back to another path.

A real service and real enclave processes (tests.test_jobs builds the room)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.agent import KeyAgent
from cleanroom.client import Room
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.crypto.hpke import SealContext
from cleanroom.errors import CleanroomError
from cleanroom.ledger.local import SERVICE_DIR
from cleanroom.protocol.sealing import deposit_context, release_context
from cleanroom.service.local import local_service
from tests.test_jobs import _close_clients, _room, service_dir, start_agent

__all__ = ["_close_clients", "service_dir"]  # fixtures shared with tests.test_jobs


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A service whose jobs wait 3 s for the owners' key agents."""
    data = tmp_path_factory.mktemp("owner") / "data"
    with local_service(data, env={"CLEANROOM_JOB_RELEASE_WAIT_S": "3"}) as url:
        yield url, data


def _agent(room: Room, tmp: Path) -> KeyAgent:
    party = room.client.party
    return KeyAgent(room, KeyVault(party, tmp / party.name / VAULT_DIR))


def _wait_request(agent: KeyAgent, job: str) -> dict[str, Any]:
    for _ in range(200):
        found = [r for r in agent.requests() if r["job"] == job]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the enclave never asked for keys")


def test_an_agent_offline_makes_the_job_wait_then_fail(
    impatient: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = impatient
    rooms = _room(url, tmp_path, agents=False)
    start_agent(url, rooms["bank"].client.party, rooms["bank"].id, tmp_path)  # merchant offline
    job = rooms["analyst"].run_job("offers")
    waiting: list[str] = []
    for _ in range(100):
        view = rooms["analyst"].job(job)
        waiting = view["waiting_for"] or waiting
        if view["status"] == "failed":
            break
        time.sleep(0.1)
    assert waiting == ["merchant"]  # what a user sees while the job waits
    assert view["status"] == "failed"
    assert view["reason"] == "key release timed out"
    statements = rooms["bank"].audit.verify().statements
    releases = [s for s in statements if s.kind == "key.release"]
    # the bank released its own input; nothing ever released the merchant's
    assert [[i.dataset for i in s.body.inputs] for s in releases] == [["transactions"]]


def _strings(data: bytes) -> set[bytes]:
    return {data, data.hex().encode(), base64.b64encode(data), b64url_encode(data).encode()}


def test_the_operator_with_every_file_and_key_cannot_open_a_dataset(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    """Owner mode: the service's data directory, database, blobs, job logs and the
    service's own private keys open no data key, dataset or result."""
    url, data = service_dir
    rooms = _room(url, tmp_path)
    job = rooms["analyst"].run_job("offers")
    assert rooms["analyst"].wait_job(job, timeout=120)["status"] == "succeeded"
    keys = {}
    for owner, name in (("bank", "transactions"), ("merchant", "customers")):
        room = rooms[owner]
        state = room.audit.verify().state
        manifest = state.datasets[name].versions[-1].digest
        keys[name] = _agent(room, tmp_path).vault.open(room.id, name, manifest)
    # (1) no copy of a data key, in any encoding, anywhere the operator keeps files
    everything = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    for name, key in keys.items():
        assert not any(form in everything for form in _strings(key)), name
    # (2) nothing on the ledger is sealed to the service: owner deposits carry no key,
    # and every release is sealed to an enclave's ephemeral key
    verified = rooms["bank"].audit.verify()
    deposits = [s for s in verified.statements if s.kind == "key.deposit"]
    assert deposits
    assert all(s.body.release == "owner" and s.body.sealed_key is None for s in deposits)
    # (3) the service's own keys (every keystore in its data directory) open nothing
    service = Party.load(data / SERVICE_DIR)
    room = rooms["bank"].id
    opened = 0
    for statement in verified.statements:
        if statement.kind != "key.release":
            continue
        for sealed in statement.body.sealed_keys or []:
            contexts: list[SealContext] = [
                release_context(room, job, sealed.dataset, sealed.manifest),
                deposit_context(room, sealed.dataset, sealed.manifest),
            ]
            for context in contexts:
                with pytest.raises(CleanroomError):
                    service.open_sealed(b64url_decode(sealed.sealed), context)
                opened += 1
    assert opened == 4


def test_forged_and_replayed_key_requests_get_nothing_from_an_agent(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    """The operator controls what the key-requests route says: an agent must
    release only for a job its own verified ledger shows waiting, to the enclave
    the request binds, once."""
    url, _ = service_dir
    rooms = _room(url, tmp_path, agents=False)
    bank = _agent(rooms["bank"], tmp_path)
    merchant = _agent(rooms["merchant"], tmp_path)
    job = rooms["analyst"].run_job("offers")
    genuine = _wait_request(bank, job)
    other = Party.create("enclave")
    analyst = rooms["analyst"].client.party
    forged: list[Any] = [
        {**genuine, "job": "0" * 64},  # a job the ledger does not have
        {**genuine, "enclave": other.identity_document()},  # keys to another enclave
        {**genuine, "nonce": b64url_encode(b"\x07" * 32)},  # evidence bound to another nonce
        {**genuine, "evidence": {**genuine["evidence"], "report": "AAAA"}},  # tampered
        # malformed or stale requests must not make the owner sign a denial either
        {**genuine, "nonce": "x"},
        {**genuine, "enclave": analyst.identity_document()},  # a member's key, not fresh
        {**genuine, "enclave": {"not": "an identity"}},
        {"job": job},
        {"job": 5},
        42,
        "junk",
    ]
    before = len(rooms["bank"].audit.verify().statements)
    bank.requests = lambda: forged  # type: ignore[method-assign]
    assert bank.step() == []
    assert len(rooms["bank"].audit.verify().statements) == before  # no release, no denial
    # the genuine request: both owners release, the job runs
    bank.requests = lambda: [genuine]  # type: ignore[method-assign]
    assert [a.action for a in bank.step()] == ["released"]
    # after the bank's release, a request naming another enclave is ignored, not denied
    rival = {**genuine, "enclave": other.identity_document()}
    merchant.requests = lambda: [rival]  # type: ignore[method-assign]
    assert merchant.step() == []
    assert rooms["analyst"].job(job)["status"] == "requested"
    merchant.requests = lambda: [genuine]  # type: ignore[method-assign]
    assert [a.action for a in merchant.step()] == ["released"]
    assert rooms["analyst"].wait_job(job, timeout=120)["status"] == "succeeded"
    # replayed afterwards: the job is no longer waiting, so nothing is released
    after = len(rooms["bank"].audit.verify().statements)
    assert bank.step() == []
    assert len(rooms["bank"].audit.verify().statements) == after


def test_an_owner_denies_a_job_its_rules_no_longer_allow(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = service_dir
    rooms = _room(url, tmp_path, agents=False)
    bank = _agent(rooms["bank"], tmp_path)
    job = rooms["analyst"].run_job("offers")
    request = _wait_request(bank, job)
    rooms["merchant"].revoke_consent("customers")  # after the request, before any release
    answers = bank.step()
    assert [(a.job, a.action) for a in answers] == [(job, "denied")]
    assert "revoked consent" in answers[0].detail
    view = rooms["analyst"].wait_job(job, timeout=60)
    assert view["status"] == "failed"
    assert request["job"] == job


def test_an_agent_verifies_the_ledger_once_per_new_request(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    """While a job waits for another owner, its request stays open: the agent does
    not download and verify the whole ledger again at every poll."""
    url, _ = service_dir
    rooms = _room(url, tmp_path, agents=False)
    bank = _agent(rooms["bank"], tmp_path)
    job = rooms["analyst"].run_job("offers")
    _wait_request(bank, job)
    verifications = []
    audit = bank.room.audit
    real = audit.verify
    audit.verify = lambda *a: verifications.append(1) or real(*a)  # type: ignore[method-assign]
    assert [a.action for a in bank.step()] == ["released"]
    for _ in range(5):  # the merchant has not released: the request is still open
        assert bank.step() == []
    assert len(verifications) == 1
    assert rooms["analyst"].job(job)["waiting_for"] == ["merchant"]
