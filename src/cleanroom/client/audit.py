"""Auditing a room's ledger offline: the whole export, or a removed member's prefix.

Nothing here takes the service's word: every entry, tree head and proof is
verified against the pinned service key, and what a member saw before must be
extended (a rollback or fork raises).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, StrictStr

from cleanroom.client.answers import MAX_PROOF, Consistency
from cleanroom.errors import CleanroomError, DeserializationError, IntegrityError, RollbackError
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger.entries import Entry, TreeHead
from cleanroom.ledger.merkle import MerkleTree, verify_consistency
from cleanroom.ledger.verify import VerifiedLedger, verify_entries, verify_export
from cleanroom.wire import WireModel, parse_model

if TYPE_CHECKING:
    from cleanroom.client.room import Room


class Audit:
    def __init__(self, room: Room) -> None:
        self.room = room

    def export(self) -> dict[str, Any]:
        path = f"/v1/rooms/{self.room.id}/export"
        export = self.room.client._call("GET", path)
        if not isinstance(export, dict):
            raise DeserializationError(f"the service's answer to GET {path} is not a JSON object")
        return export

    def verify(self, document: dict[str, Any] | None = None) -> VerifiedLedger:
        """Verify the whole ledger offline (downloading it unless given) and check it
        extends what this party saw before (a rollback or fork raises).

        A removed member is given the ledger up to and including its removal (a
        ``prefix`` export, see :func:`verify_prefix_export`): that prefix is verified,
        and the later head it is proven consistent with must extend the heads seen."""
        document = document if document is not None else self.export()
        client = self.room.client
        if isinstance(document, dict) and "prefix" in document:
            verified, head, proof = verify_prefix_export(document, client.service)
            given = Consistency(old=len(verified.entries), new=head.size, proof=proof)
            self.room._observe(head, given)
            return verified
        verified = verify_export(document, client.service, room=self.room.id)
        client.known.observe_verified(verified, client.pin, client.url)
        return verified


class _Prefix(WireModel):
    tree_head: StrictStr
    consistency: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        max_length=MAX_PROOF
    )


class _PrefixExport(WireModel):
    format: Literal["cleanroom-ledger-export"]
    version: Literal[1]
    room: StrictStr
    service: dict[str, Any]
    entries: list[dict[str, Any]] = Field(min_length=1)
    tree_heads: list[StrictStr]
    prefix: _Prefix


def verify_prefix_export(
    document: Any, service: PublicIdentity
) -> tuple[VerifiedLedger, TreeHead, list[str]]:
    """Verify offline the ledger a removed member reads: its first entries (up to
    and including the member's removal) and a later signed tree head they are a
    prefix of. Returns the verified prefix, that head and the consistency proof.

    (1) the document is well formed and names the expected service; (2), (3) and
    (5) of :func:`cleanroom.ledger.verify_export` hold for the entries and the
    tree heads among them; (4) instead of a head covering exactly the entries,
    the RFC 9162 consistency proof from the entries' own root to the later head
    (signed by the service for this room, no older than the heads before it)
    verifies. So nothing in the prefix can be edited, dropped or reordered."""
    wire = parse_model(_PrefixExport, document, what="ledger export")  # (1)
    try:
        named = PublicIdentity.from_document(wire.service)
    except CleanroomError as exc:
        raise IntegrityError(f"the export's service identity is invalid: {exc}") from exc
    if named.fingerprint != service.fingerprint:
        raise IntegrityError("the export was made by a different ledger service than the key given")
    entries = [Entry.from_json(e) for e in wire.entries]
    verified = verify_entries(  # (2), (3), (5); (4) below
        wire.room, entries, wire.tree_heads, service, require_covered=False
    )
    head = TreeHead.verify(wire.prefix.tree_head, service, room=wire.room)  # (4)
    if head.time < verified.head.time:
        raise RollbackError("the export's latest tree head is older than the heads it holds")
    root = MerkleTree([e.leaf_hash for e in entries]).root()
    proof = [bytes.fromhex(h) for h in wire.prefix.consistency]
    verify_consistency(len(entries), head.size, root, head.root, proof)
    return verified, head, wire.prefix.consistency
