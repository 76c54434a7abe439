"""One party's connection to one service: the pinned service key, the rooms.

The client trusts one ledger service key per service URL, pinned on first use
or given out of band (``service_key=``), and refuses any other key unless the
pinned one signed a rotation to it (:mod:`cleanroom.client.trust`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from cleanroom.client.answers import RoomCreated, RoomListed, parse_answer, parse_list, parse_view
from cleanroom.client.room import Room, RoomInfo
from cleanroom.client.state import ClientState
from cleanroom.client.transport import Transport, answer_name
from cleanroom.client.trust import Pin, ServiceRotation, parse_service_key
from cleanroom.errors import DeserializationError, IntegrityError
from cleanroom.governance import statements as st
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party
from cleanroom.wire import read_json_file

STATE_DIR = "state"  # inside a keystore directory

ServiceKey = PublicIdentity | ServiceRotation | dict[str, Any] | Path


class Client:
    """One party's connection to one service.

    ``party`` is a keystore directory (loaded with ``passphrase``; the client's
    state is then kept in ``KEYSTORE/state``) or a loaded :class:`Party`
    (give ``state_dir`` to keep state across runs; without it the client
    remembers pins and tree heads only while it lives). ``service_key`` is the
    service's identity given out of band (a ``service.identity.json`` document,
    or a rotation statement from the pinned key); without it the key the
    service presents is pinned on first use.
    """

    def __init__(
        self,
        url: str,
        party: Party | str | os.PathLike[str],
        *,
        state_dir: Path | None = None,
        service_key: ServiceKey | None = None,
        passphrase: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(party, Party):
            keystore = Path(party)
            party = Party.load(keystore, passphrase=passphrase)
            state_dir = state_dir if state_dir is not None else keystore / STATE_DIR
        self.url = url.rstrip("/")
        self.party = party
        self.state_dir = state_dir
        self.known = ClientState(party, state_dir)
        given, rotations = _service_key(service_key)
        self._transport = Transport(self.url, party, timeout=timeout, transport=transport)
        try:
            presented = self._presented()
            self.pin: Pin = self.known.trust(self.url, presented, given=given, rotations=rotations)
        except BaseException:
            self._transport.close()
            raise
        self.service = self.pin.identity

    def _presented(self) -> dict[str, Any]:
        """The identity document the service presents (checked against the pin)."""
        presented = self._call("GET", "/v1/service", auth=False)
        if not isinstance(presented, dict):
            raise DeserializationError(f"{answer_name('GET', '/v1/service')} is not a JSON object")
        return presented

    def __repr__(self) -> str:
        return f"Client({self.url!r}, as {self.party.name})"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        auth: bool = True,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """The service's answer to a (signed) request, as parsed JSON."""
        return self._transport.call(method, path, json_body=json_body, auth=auth, params=params)

    # -- rooms ------------------------------------------------------------------------

    def rooms(self) -> list[RoomInfo]:
        what = answer_name("GET", "/v1/rooms")
        listed = parse_list(self._call("GET", "/v1/rooms"), what=what)
        return [
            RoomInfo(**parse_view(RoomListed, r, what=f"{what}, room {i}").model_dump())
            for i, r in enumerate(listed)
        ]

    def room(self, room_id: str) -> Room:
        """A handle on a room; refused at once if the room was last seen under a
        service key this service's pin does not cover."""
        self.known.check_room(room_id, self.pin, self.url)
        return Room(self, room_id)

    def create_room(
        self,
        name: str,
        members: Sequence[tuple[dict[str, Any] | Path, Sequence[str]]],
        constitution: dict[str, Any] | None = None,
    ) -> Room:
        """Create a room; ``members`` are (identity document or file, roles), yourself included."""
        room_id = st.new_room_id()
        documents = [(_identity_document(m), list(roles)) for m, roles in members]
        token = st.room_create(
            self.party, room_id, name=name, members=documents, constitution=constitution
        )
        answer = self._call("POST", "/v1/rooms", json_body={"statement": token})
        created = parse_answer(RoomCreated, answer, what=answer_name("POST", "/v1/rooms"))
        if created.room != room_id:
            raise IntegrityError("the service created another room than the one signed")
        room = Room(self, room_id)
        room.tree_head()  # the room.create receipt: signed, and extending nothing seen before
        return room


def _service_key(key: ServiceKey | None) -> tuple[PublicIdentity | None, list[ServiceRotation]]:
    """An out-of-band service key: an identity (to pin or match), or a rotation."""
    if key is None:
        return None, []
    parsed: PublicIdentity | ServiceRotation
    if isinstance(key, Path):
        parsed = parse_service_key(read_json_file(key, what="service key file"))
    elif isinstance(key, dict):
        parsed = parse_service_key(key)
    else:
        parsed = key
    if isinstance(parsed, ServiceRotation):
        return None, [parsed]
    return parsed, []


def _identity_document(member: dict[str, Any] | Path) -> dict[str, Any]:
    """A member's self-signed identity document (its signature goes on the ledger)."""
    if isinstance(member, Path):
        document: dict[str, Any] = json.loads(member.read_text())
        PublicIdentity.from_document(document)
        return document
    return member
