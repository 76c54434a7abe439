"""Test helpers: a ledger with a room of real parties, driven by signed statements."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from cleanroom import Party, Schema, seal_dataset
from cleanroom.attestation import VirtualPlatform, binding
from cleanroom.attestation.virtual import measure
from cleanroom.broker.attested import AttestedBroker
from cleanroom.broker.desk import KeyDesk
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.governance import (
    member_accept,
    new_room_id,
    propose,
    revoke_consent,
    room_create,
    sign_statement,
    statement_digest,
    vote,
)
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger import Ledger, SQLiteStore, TreeHeadPolicy
from cleanroom.protocol.sealing import seal_deposit

CODE = measure()  # the code's measurement, once: what the rooms' contracts approve

ROLES = {
    "bank": ["data_provider", "result_recipient"],
    "merchant": ["data_provider"],
    "analyst": ["analyst"],
    "auditor": ["observer"],
}


class Clock:
    """A settable millisecond clock, shared by signers and the ledger."""

    def __init__(self, start: int = 1_800_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class RoomFixture:
    def __init__(
        self,
        ledger: Ledger,
        clock: Clock,
        roles: dict[str, list[str]] | None = None,
        constitution: dict[str, Any] | None = None,
        *,
        accept: bool = True,
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.roles = roles or ROLES
        self.parties = {name: Party.create(name) for name in self.roles}
        # the attested key broker, in this process (the service runs it in its own)
        self.broker = AttestedBroker(
            VirtualPlatform(CODE, now=clock), ledger.service.identity, clock=clock
        )
        self.room = new_room_id()
        creator = next(iter(self.parties))
        self.create_token = room_create(
            self.parties[creator],
            self.room,
            name="offers",
            members=[(p.identity_document(), self.roles[n]) for n, p in self.parties.items()],
            constitution=constitution,
            now=clock,
        )
        ledger.create_room(self.create_token)
        if accept:
            for name in list(self.parties)[1:]:
                self.accept(name)

    def fp(self, name: str) -> str:
        return self.parties[name].fingerprint

    def submit(self, token: str) -> str:
        self.ledger.submit(self.room, [token])
        return statement_digest(token)

    def accept(self, name: str, invitation: str | None = None) -> str:
        token = member_accept(
            self.parties[name],
            self.room,
            invitation or statement_digest(self.create_token),
            now=self.clock,
        )
        return self.submit(token)

    def propose(self, name: str, action: dict[str, Any]) -> str:
        return self.submit(propose(self.parties[name], self.room, action, now=self.clock))

    def vote(self, name: str, proposal: str, *, approve: bool = True) -> str:
        return self.submit(
            vote(self.parties[name], self.room, proposal, approve=approve, now=self.clock)
        )

    def revoke(self, name: str, dataset: str) -> str:
        return self.submit(revoke_consent(self.parties[name], self.room, dataset, now=self.clock))

    def deposit(
        self, owner: str, name: str, manifest: dict[str, Any], key: bytes, platforms: list[str]
    ) -> str:
        """Deposit a dataset version's key with the room's attested key broker."""
        digest = canonical_digest(manifest)
        offer = self.broker.offer(f"deposit-{digest[:16]}-{self.clock()}")
        broker = PublicIdentity.from_document(offer["identity"])
        body = {
            "dataset": name,
            "manifest": digest,
            "sealed_key": seal_deposit(key, broker, room=self.room, dataset=name, manifest=digest),
            "broker": offer,
            "policy": {"platforms": platforms},
        }
        statement = sign_statement(
            self.parties[owner], self.room, "key.deposit", body, now=self.clock
        )
        return self.submit(statement)

    def status(self, proposal: str) -> str:
        return self.ledger.state(self.room).proposals[proposal].status

    def manifest(self, owner: str, name: str, tmp: Path, rows: int = 3) -> dict[str, Any]:
        schema = Schema.from_json(
            {
                "identity_column": "id",
                "columns": [{"name": "id", "type": "string", "nullable": False}],
            }
        )
        out = tmp / f"{name}-{owner}-{rows}"
        seal_dataset(
            pa.table({"id": [f"r{i}" for i in range(rows)]}),
            schema=schema,
            owner=self.parties[owner],
            output=out,
            name=name,
        )
        document: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        return document

    def register(self, owner: str, name: str, tmp: Path, voters: list[str]) -> str:
        pid = self.propose(
            owner, {"type": "register_dataset", "manifest": self.manifest(owner, name, tmp)}
        )
        for voter in voters:
            self.vote(voter, pid)
        return pid


def make_ledger(path: Path, clock: Clock, **policy: int) -> Ledger:
    path.mkdir(parents=True, exist_ok=True)
    return Ledger(
        SQLiteStore(path / "ledger.sqlite3"),
        Party.create("ledger"),
        policy=TreeHeadPolicy(**policy),
        clock=clock,
    )


@dataclass
class Attempt:
    """One enclave's try at a key release, step by step: a launch token and a
    nonce from the service's key desk, then evidence and the release, each of which a test
    may replace to attack that step."""

    desk: KeyDesk
    room: str
    job: str
    clock: Clock
    enclave: Party = field(default_factory=lambda: Party.create("enclave"))

    def __post_init__(self) -> None:
        self.token = self.desk.launch(self.room, self.job)
        self.nonce = self.desk.challenge(self.room, self.job, self.token)

    def evidence(
        self, measurement: str | None = None, *, at: Clock | None = None, nonce: str | None = None
    ) -> dict[str, Any]:
        """Virtual evidence binding ``nonce`` (default: the desk's), this enclave and job."""
        report = binding(
            nonce=nonce or self.nonce, tee_pubkey=self.enclave.fingerprint, job=self.job
        )
        return VirtualPlatform(measurement or CODE, now=at or self.clock).attest(report)

    def release(
        self,
        evidence: dict[str, Any] | None = None,
        *,
        nonce: str | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        return self.desk.release(
            self.room,
            self.job,
            token=token or self.token,
            nonce=nonce or self.nonce,
            enclave=self.enclave.identity_document(),
            evidence=evidence or self.evidence(),
        )
