"""Ledger entries, signed tree heads and receipts (pure).

* An entry is ``{"seq", "time", "statement"}``: a signed statement plus the
  position and time (ms) the ledger assigned. Its RFC 8785 bytes are the
  Merkle leaf.
* A signed tree head (STH) is a JWS by the ledger's service key over
  ``{"format", "room", "size", "root", "time"}``.
* A receipt is an entry, its inclusion proof and an STH that covers it; it
  verifies offline with nothing but the service's public identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import parse_json
from cleanroom.errors import DeserializationError, IntegrityError
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party
from cleanroom.ledger.merkle import leaf_hash, verify_inclusion
from cleanroom.wire import WireModel, parse_model

TREE_HEAD_TYP = "cleanroom-tree-head+jws"
_TOKEN = re.compile(r"[A-Za-z0-9_.-]*")
HexHash = Field(pattern=r"^[0-9a-f]{64}$")


class EntryWire(WireModel):
    seq: StrictInt = Field(ge=0)
    time: StrictInt = Field(ge=0)
    statement: StrictStr


@dataclass(frozen=True)
class Entry:
    seq: int
    time: int
    statement: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "statement": self.statement}

    def encode(self) -> bytes:
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        if _TOKEN.fullmatch(self.statement):
            # RFC 8785 of {seq, statement, time} with integer values and a string
            # that needs no escaping is exactly this; tests check the equivalence
            return b'{"seq":%d,"statement":"%s","time":%d}' % (
                self.seq,
                self.statement.encode("ascii"),
                self.time,
            )
        return canonical_json(self.to_json())

    @cached_property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self._encoded)

    @classmethod
    def from_json(cls, data: Any) -> Entry:
        wire = parse_model(EntryWire, data, what="ledger entry")
        return cls(wire.seq, wire.time, wire.statement)

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        return cls.from_json(parse_json(data, what="ledger entry"))


class _TreeHeadWire(WireModel):
    format: Literal["cleanroom-tree-head"]
    room: StrictStr
    size: StrictInt = Field(ge=0)
    root: StrictStr = HexHash
    time: StrictInt = Field(ge=0)


@dataclass(frozen=True)
class TreeHead:
    room: str
    size: int
    root: bytes
    time: int
    token: str

    def __repr__(self) -> str:
        return f"TreeHead(size={self.size}, root={self.root.hex()[:16]}..., time={self.time})"

    @classmethod
    def sign(cls, service: Party, room: str, size: int, root: bytes, time: int) -> TreeHead:
        payload = {
            "format": "cleanroom-tree-head",
            "room": room,
            "size": size,
            "root": root.hex(),
            "time": time,
        }
        token = jws.sign(
            canonical_json(payload),
            service.signing_private,
            kid=service.fingerprint,
            typ=TREE_HEAD_TYP,
        )
        return cls(room, size, root, time, token)

    @classmethod
    def verify(cls, token: str, service: PublicIdentity, *, room: str) -> TreeHead:
        """(1) signed by the service; (2) well formed; (3) for this room."""
        payload = jws.verify(token, service.signing_key, kid=service.fingerprint, typ=TREE_HEAD_TYP)
        try:
            wire = parse_model(
                _TreeHeadWire, parse_json(payload, what="tree head"), what="tree head"
            )
        except DeserializationError as exc:
            raise IntegrityError(f"malformed tree head: {exc}") from exc
        if wire.room != room:
            raise IntegrityError("tree head is for another room")
        return cls(wire.room, wire.size, bytes.fromhex(wire.root), wire.time, token)


class _ReceiptWire(WireModel):
    format: Literal["cleanroom-receipt"]
    version: Literal[1]
    room: StrictStr
    entry: dict[str, Any]
    inclusion: list[StrictStr] = Field(max_length=64)
    tree_head: StrictStr


@dataclass(frozen=True)
class Receipt:
    room: str
    entry: Entry
    inclusion: list[bytes]
    tree_head: TreeHead

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "cleanroom-receipt",
            "version": 1,
            "room": self.room,
            "entry": self.entry.to_json(),
            "inclusion": [h.hex() for h in self.inclusion],
            "tree_head": self.tree_head.token,
        }


def verify_receipt(document: Any, service: PublicIdentity) -> Receipt:
    """Verify a receipt offline; returns it, or raises :class:`IntegrityError`.

    (1) well formed; (2) the tree head is signed by the service for this room;
    (3) the entry's leaf is included at its sequence number under that head.
    """
    try:
        wire = parse_model(_ReceiptWire, document, what="receipt")  # (1)
        entry = Entry.from_json(wire.entry)
        inclusion = [bytes.fromhex(h) for h in wire.inclusion]
    except (DeserializationError, ValueError) as exc:
        raise IntegrityError(f"malformed receipt: {exc}") from exc
    head = TreeHead.verify(wire.tree_head, service, room=wire.room)  # (2)
    verify_inclusion(entry.leaf_hash, entry.seq, head.size, inclusion, head.root)  # (3)
    return Receipt(wire.room, entry, inclusion, head)
