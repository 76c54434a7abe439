"""Unwanted invitations: anyone admitted to create rooms can list any public
identity as invited. The invitee declines (a signed ``member.decline``): the
room disappears from its listing, a room still being formed can never become
active, and the room cannot invite it again. Nobody else sees the invitation,
and nobody can decline for another party. A real ``cleanroom serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom import Party
from cleanroom.client import Client
from cleanroom.errors import AuthorizationError, GovernanceError
from cleanroom.governance import statements as st
from cleanroom.service.local import local_service

OPEN: list[Client] = []
MEASUREMENTS = {"type": "set_measurements", "measurements": []}


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_service(tmp_path_factory.mktemp("decline") / "data") as served:
        yield served


def connect(url: str, party: Party | Path, state: Path | None = None) -> Client:
    opened = Client(url, party, state_dir=state)
    OPEN.append(opened)
    return opened


def known(url: str, name: str, tmp: Path) -> Client:
    """A party the service knows (it has a room of its own)."""
    client = connect(url, Party.create(name), tmp / name)
    client.create_room(f"{name}-own", [(client.party.identity_document(), ["analyst"])])
    return client


def test_an_unwanted_room_is_declined_for_good_and_hidden(url: str, tmp_path: Path) -> None:
    spammer, victim, accomplice = (known(url, n, tmp_path) for n in ("spam", "victim", "acc"))
    bystander = known(url, "bystander", tmp_path)
    spam = spammer.create_room(
        "win-a-prize",
        [
            (spammer.party.identity_document(), ["analyst"]),
            (victim.party.identity_document(), ["data_provider"]),
            (accomplice.party.identity_document(), ["analyst"]),
        ],
    )
    assert spam.id in {r.room for r in victim.rooms()}
    # (1) the invitation is visible to the invited parties and the room only
    assert spam.id not in {r.room for r in bystander.rooms()}
    with pytest.raises(AuthorizationError, match="not a member"):
        bystander.room(spam.id).state()
    # (2) nobody declines (or accepts) for the victim: its own signature is needed
    forged = st.member_decline(spammer.party, spam.id, spam.invitation())
    with pytest.raises(GovernanceError, match="no pending invitation"):
        spam._submit(forged)
    with pytest.raises(AuthorizationError, match="signed yourself"):
        spammer._call(  # the victim's statement, submitted by another party
            "POST",
            f"/v1/rooms/{spam.id}/statements",
            json_body={"statements": [st.member_decline(victim.party, spam.id, "0" * 64)]},
        )
    # (3) the victim declines: the room is gone from its listing and closed to it
    victim.room(spam.id).decline()
    assert spam.id not in {r.room for r in victim.rooms()}
    assert [r.name for r in victim.rooms()] == ["victim-own"]  # nothing else lost
    for read in (lambda r: r.state(), lambda r: r.tree_head(), lambda r: r.audit.export()):
        with pytest.raises(AuthorizationError, match="not a member"):
            read(victim.room(spam.id))
    with pytest.raises(AuthorizationError, match="not a member"):
        victim.room(spam.id).accept(spam.invitation())  # no change of mind
    # (4) the room can never become active: it takes no statement any more
    state = spam.state()
    assert state["status"] == "declined"
    status = {m["name"]: m["status"] for m in state["members"]}
    assert status == {"spam": "active", "victim": "declined", "acc": "invited"}
    with pytest.raises(GovernanceError, match="declined"):
        accomplice.room(spam.id).accept()
    with pytest.raises(GovernanceError, match="declined"):
        spam.propose(MEASUREMENTS)
    # every member still verifies the whole history offline, the decline included
    assert spam.audit.verify().state.status == "declined"


def test_declining_an_add_member_invitation_leaves_the_room_working(
    url: str, tmp_path: Path
) -> None:
    bank, merchant, invitee = (known(url, n, tmp_path) for n in ("bank", "merchant", "invitee"))
    room = bank.create_room(
        "offers",
        [
            (bank.party.identity_document(), ["data_provider"]),
            (merchant.party.identity_document(), ["data_provider"]),
        ],
    )
    merchant.room(room.id).accept()
    add = {
        "type": "add_member",
        "identity": invitee.party.identity_document(),
        "roles": ["analyst"],
    }
    pid = room.propose(add)
    room.approve(pid)
    merchant.room(room.id).approve(pid)
    theirs = invitee.room(room.id)
    assert theirs.invitation() == pid  # the add_member proposal, found by the SDK
    assert {r.room: r.you for r in invitee.rooms()}[room.id] == "invited"
    theirs.decline()
    assert room.id not in {r.room for r in invitee.rooms()}
    # nothing lost for the others: the room stays active and keeps working
    state = room.state()
    assert state["status"] == "active"
    assert {m["name"]: m["status"] for m in state["members"]}["invitee"] == "declined"
    other = room.propose(MEASUREMENTS)
    room.approve(other)
    merchant.room(room.id).approve(other)
    assert {p["id"]: p["status"] for p in room.proposals()}[other] == "accepted"
    # the room cannot keep inviting a party that said no
    with pytest.raises(GovernanceError, match="declined to join"):
        room.propose(add)


def test_the_command_line_declines_and_the_listing_hides_it(url: str, tmp_path: Path) -> None:
    creator = known(url, "creator", tmp_path)
    keystore = Party.create("guest").save(tmp_path / "keys" / "guest")
    guest = connect(url, keystore)
    guest.create_room("guest-own", [(guest.party.identity_document(), ["analyst"])])
    room = creator.create_room(
        "invite",
        [
            (creator.party.identity_document(), ["analyst"]),
            (guest.party.identity_document(), ["analyst"]),
        ],
    )

    def cli(*args: str) -> str:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        env.pop("CLEANROOM_SERVICE_KEY", None)
        done = subprocess.run(
            [sys.executable, "-m", "cleanroom", *args, "--service", url, "--as", str(keystore)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert room.id in cli("room", "list", "--json")
    assert "Declined" in cli("room", "decline", "--room", room.id)
    listed = cli("room", "list", "--json")
    assert room.id not in listed
    assert "guest-own" in listed
    assert room.state()["status"] == "declined"
