"""One party's connection to one service: the pinned service key, the rooms.

The client trusts one ledger service key per service URL, pinned on first use
or given out of band (``service_key=``), and refuses any other key unless the
pinned one signed a rotation to it (:mod:`cleanroom.client.trust`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from cleanroom.client import names
from cleanroom.client.actions import IdentityLike, identity_document
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

ServiceKey = PublicIdentity | ServiceRotation | dict[str, Any] | str | os.PathLike[str]
_ROOM_ID = re.compile(r"^[0-9a-f]{32}$")  # a full room id: used without a look-up
_ROOM_ID_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")  # read as an id prefix, never a name


class Client:
    """One party's connection to one service.

    ``party`` is a keystore directory (loaded with ``passphrase``; the client's
    state is then kept in ``KEYSTORE/state``) or a loaded :class:`Party`
    (give ``state_dir`` to keep state across runs; without it the client
    remembers pins and tree heads only while it lives). ``service_key`` is the
    service's identity given out of band (a ``service.identity.json`` document
    or its path, or a rotation statement from the pinned key); without it the
    key the service presents is pinned on first use. Paths are ``str`` or
    :class:`~pathlib.Path` alike.

        client = Client("http://127.0.0.1:8321", "keys/bank")
        room = client.room("offers")          # a room's name, or a prefix of its id
    """

    def __init__(
        self,
        url: str,
        party: Party | str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        service_key: ServiceKey | None = None,
        passphrase: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if isinstance(party, str | os.PathLike):
            keystore = Path(party)
            party = Party.load(keystore, passphrase=passphrase)
            state_dir = state_dir if state_dir is not None else keystore / STATE_DIR
        elif not isinstance(party, Party):
            raise TypeError(f"party is a keystore directory or a Party, not {type(party).__name__}")
        self.url = url.rstrip("/")
        self.party = party
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.known = ClientState(party, self.state_dir)
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
        """The rooms this party is in or invited to (``you``: its status there)."""
        what = answer_name("GET", "/v1/rooms")
        listed = parse_list(self._call("GET", "/v1/rooms"), what=what)
        return [
            RoomInfo(**parse_view(RoomListed, r, what=f"{what}, room {i}").model_dump())
            for i, r in enumerate(listed)
        ]

    def room(self, room: str) -> Room:
        """A handle on a room, by its name, its id or a unique prefix of its id (the
        names are those of :meth:`rooms`); refused at once if the room was last
        seen under a service key this service's pin does not cover.

            room = client.room("offers")
        """
        if _ROOM_ID.fullmatch(room):
            self.known.check_room(room, self.pin, self.url)
            return Room(self, room)
        found = names.room_id([dataclasses.asdict(r) for r in self.rooms()], room)
        self.known.check_room(found, self.pin, self.url)
        handle = Room(self, found)
        if not _ROOM_ID_PREFIX.fullmatch(room):  # a name: the service's list said so
            named = handle.audit.verify().state.name
            if named != room.strip():  # the room's own room.create says otherwise
                raise IntegrityError(
                    f"the service lists room {found[:12]}... as {room.strip()!r}, but its "
                    f"verified ledger names it {named!r}: use its id"
                )
        return handle

    def create_room(
        self,
        name: str,
        members: Sequence[tuple[IdentityLike, Sequence[str]]],
        constitution: dict[str, Any] | None = None,
    ) -> Room:
        """Create a room; ``members`` are (identity, roles), yourself included, each
        identity an identity document, an identity file or a :class:`Party`.

            room = client.create_room("offers", members=[
                (bank, ["data_provider", "result_recipient"]),
                ("merchant.identity.json", ["data_provider"]),
                ("analyst.identity.json", ["analyst"]),
            ])
        """
        room_id = st.new_room_id()
        documents = [(identity_document(m), list(roles)) for m, roles in members]
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
    if isinstance(key, str | os.PathLike):
        parsed = parse_service_key(read_json_file(Path(key), what="service key file"))
    elif isinstance(key, dict):
        parsed = parse_service_key(key)
    else:
        parsed = key
    if isinstance(parsed, ServiceRotation):
        return None, [parsed]
    return parsed, []
