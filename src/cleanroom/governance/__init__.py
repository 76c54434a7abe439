"""Rooms, members, constitutions, proposals, ballots and consent.

Statements are signed by members (:mod:`statements`); the room state is a pure
fold over them (:mod:`state`); who must approve what is the constitution's
business (:mod:`constitution`).
"""

from cleanroom.governance.constitution import Constitution
from cleanroom.governance.state import RoomState, fold
from cleanroom.governance.statements import (
    Statement,
    member_accept,
    new_room_id,
    parse_statement,
    propose,
    revoke_consent,
    room_create,
    sign_statement,
    statement_digest,
    vote,
    withdraw,
)

__all__ = [
    "Constitution",
    "RoomState",
    "Statement",
    "fold",
    "member_accept",
    "new_room_id",
    "parse_statement",
    "propose",
    "revoke_consent",
    "room_create",
    "sign_statement",
    "statement_digest",
    "vote",
    "withdraw",
]
