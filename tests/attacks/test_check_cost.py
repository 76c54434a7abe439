"""Expensive proposals: each proposed analysis costs the service a policy check
(parsing up to 16 KiB of SQL). A member sends many at once, or one after the
other, to keep the service busy. The service takes at most a few per request
and a few per party at a time (then 429), before the ledger is touched, and
SQL past the length bound is refused before it is parsed (a real
`cleanroom serve`)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from cleanroom import Party, Schema
from cleanroom.client import Client
from cleanroom.errors import GovernanceError, InvalidInputError, RateLimitedError
from cleanroom.governance import propose
from cleanroom.policy.grammar import MAX_SQL_CHARS
from cleanroom.service.local import local_service


def _analysis(party: Party, room: str, n: int, text: str = "SELECT 1 AS one") -> str:
    action = {
        "type": "add_analysis",
        "name": f"a{n}",
        "language": "sql",
        "text": text,
        "inputs": ["d"],
        "recipients": [party.fingerprint],
    }
    return propose(party, room, action)


def test_a_member_cannot_keep_the_service_busy_with_policy_checks(tmp_path: Path) -> None:
    member = Party.create("member")
    roles = ["data_provider", "analyst", "result_recipient"]
    with (
        local_service(tmp_path / "data") as url,
        Client(url, member, state_dir=tmp_path / "member") as client,
    ):
        room = client.create_room("busy", [(member.identity_document(), roles)])
        schema = Schema.from_json(
            {
                "identity_column": "id",
                "columns": [{"name": "id", "type": "string", "nullable": False}],
            }
        )
        room.approve(room.publish_dataset(pa.table({"id": ["a", "b"]}), schema=schema, name="d"))
        before = len(room.audit.verify().statements)
        # nine analyses in one request: refused whole, before any check runs
        with pytest.raises(InvalidInputError, match="at most 8 analyses may be proposed"):
            room._submit(*(_analysis(member, room.id, n) for n in range(9)))
        # a text past the bound: refused by its length, before it is parsed
        started = time.perf_counter()
        with pytest.raises(GovernanceError, match="at most 16384 characters"):
            room._submit(_analysis(member, room.id, 99, "SELECT 1 " * (MAX_SQL_CHARS // 9 + 1)))
        assert time.perf_counter() - started < 2.0
        # then one at a time: a burst is admitted and checked (each recorded or
        # refused by the room's rules), past it the service answers 429 unchecked
        before = len(room.audit.verify().statements)
        refusal = ""
        admitted = 0
        for n in range(20):
            try:
                room._submit(_analysis(member, room.id, n))
            except RateLimitedError as exc:
                refusal = str(exc)
                break
            except GovernanceError:
                pass  # checked and refused: it was admitted all the same
            admitted += 1
        assert "too many analyses in a short time" in refusal
        assert 1 <= admitted <= 8
        assert len(room.audit.verify().statements) - before <= admitted
