"""Room spam: anyone with a key could create unlimited rooms listing any public
identity as invited. The operator admits creators by fingerprint, and each
creator gets a number of rooms per hour (a real `cleanroom serve`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanroom import Party
from cleanroom.client import Client
from cleanroom.errors import AuthenticationError, AuthorizationError, RateLimitedError
from cleanroom.service.local import local_service


def test_only_admitted_creators_make_rooms_and_only_so_many(tmp_path: Path) -> None:
    bank, spammer, victim = (Party.create(n) for n in ("bank", "spammer", "victim"))
    env = {
        "CLEANROOM_ROOM_CREATORS": json.dumps([bank.fingerprint]),
        "CLEANROOM_ROOMS_PER_CREATOR_PER_HOUR": "3",
    }
    with local_service(tmp_path / "data", env=env) as url:
        with (
            Client(url, spammer, state_dir=tmp_path / "spammer") as client,
            pytest.raises(AuthorizationError, match="does not let you create rooms"),
        ):
            client.create_room(
                "spam",
                [
                    (spammer.identity_document(), ["analyst"]),
                    (victim.identity_document(), ["analyst"]),
                ],
            )
        with Client(url, bank, state_dir=tmp_path / "bank") as client:
            made = [
                client.create_room(f"r{i}", [(bank.identity_document(), ["analyst"])]).id
                for i in range(3)
            ]
            with pytest.raises(RateLimitedError, match="try again later"):
                client.create_room("r3", [(bank.identity_document(), ["analyst"])])
            assert sorted(r.room for r in client.rooms()) == sorted(made)  # nothing lost
        # no spam room lists the victim: the service does not even know its key
        with (
            Client(url, victim, state_dir=tmp_path / "victim") as client,
            pytest.raises(AuthenticationError, match="unknown key"),
        ):
            client.rooms()
