"""One room whose stored history does not verify must not stop the service: it
is quarantined (refused with a clear problem, reported by health), every other
room is served. A real `cleanroom serve`, restarted on a corrupted store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from cleanroom import Party
from cleanroom.client import Client
from cleanroom.errors import CleanroomError
from cleanroom.ledger.local import DATABASE_FILE
from cleanroom.service.local import local_service


def test_a_corrupted_room_is_quarantined_and_the_others_are_served(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bank = Party.create("bank")
    with local_service(data) as url, Client(url, bank, state_dir=tmp_path / "bank") as client:
        rooms = [
            client.create_room(name, [(bank.identity_document(), ["analyst"])]).id
            for name in ("broken", "fine")
        ]
        for room in rooms:
            client.room(room).state()
    broken, fine = rooms
    db = sqlite3.connect(data / DATABASE_FILE)
    (row,) = db.execute("SELECT data FROM entries WHERE room = ? AND seq = 0", (broken,)).fetchone()
    db.execute(
        "UPDATE entries SET data = ? WHERE room = ? AND seq = 0",
        (row.replace(b'"time":', b'"time":1'), broken),
    )
    db.commit()
    db.close()
    with local_service(data) as url:  # starts although one room does not verify
        with httpx.Client() as http:
            health = http.get(f"{url}/v1/health").json()
        assert health["status"] == "degraded"
        assert health["quarantined_rooms"] == [broken]
        with Client(url, bank, state_dir=tmp_path / "bank") as client:
            assert client.room(fine).state()["name"] == "fine"
            assert [r.room for r in client.rooms()] == [fine]
            with pytest.raises(CleanroomError, match="quarantined"):
                client.room(broken).state()
