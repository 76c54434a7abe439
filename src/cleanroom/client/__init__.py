"""The Python SDK: ``cleanroom.Client``.

The client does all cryptography itself: it signs every request (RFC 9421)
and every statement, seals datasets before uploading them, verifies every
receipt it is given and checks that every tree head it sees extends the last
one it saw, so a service that rolls back or forks its ledger is caught by each
member on its next call.

It trusts one ledger service key per service URL, pinned on first use or given
out of band (``service_key=``), and refuses any other key unless the pinned
one signed a rotation to it (:mod:`cleanroom.client.trust`). Pins and the last
tree head of each room persist in the party's state directory
(:mod:`cleanroom.client.state`): ``KEYSTORE/state`` when the client is given a
keystore directory, or ``state_dir=``.

    client = Client("http://127.0.0.1:8321", Path("keys/bank"))
    room = client.create_room("offers", members=[(bank_id, ["data_provider"]), ...])
    pid = room.propose({"type": "set_measurements", "measurements": []})
    room.approve(pid)
    room.audit.verify()

Layout: :mod:`~cleanroom.client.connection` (the client, its pin, the rooms),
:mod:`~cleanroom.client.room` (governance and jobs),
:mod:`~cleanroom.client.datasets` (publishing, key deposits, results),
:mod:`~cleanroom.client.audit` (offline verification),
:mod:`~cleanroom.client.answers` (the service's answers, parsed at the edge),
:mod:`~cleanroom.client.transport` (signed HTTP, errors mapped).
Importing the SDK loads neither the service nor DuckDB (tests/test_import_graph.py).
"""

from cleanroom.client.audit import Audit, verify_prefix_export
from cleanroom.client.connection import STATE_DIR, Client
from cleanroom.client.room import Room, RoomInfo
from cleanroom.client.state import HEADS_FILE, PIN_FILE
from cleanroom.client.trust import (
    SERVICE_IDENTITY_FILE,
    ServiceIdentityError,
    ServiceRotation,
    sign_service_rotation,
)

__all__ = [
    "HEADS_FILE",
    "PIN_FILE",
    "SERVICE_IDENTITY_FILE",
    "STATE_DIR",
    "Audit",
    "Client",
    "Room",
    "RoomInfo",
    "ServiceIdentityError",
    "ServiceRotation",
    "sign_service_rotation",
    "verify_prefix_export",
]
