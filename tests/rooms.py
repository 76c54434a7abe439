"""Test helpers: a ledger with a room of real parties, driven by signed statements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from cleanroom import Party, Schema, seal_dataset
from cleanroom.governance import (
    member_accept,
    new_room_id,
    propose,
    revoke_consent,
    room_create,
    statement_digest,
    vote,
)
from cleanroom.ledger import Ledger, SQLiteStore, TreeHeadPolicy

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
