"""Offline verification of a ledger export, and client-side fork detection (pure).

``verify_export`` takes an export document and the service's public identity
and either returns the verified ledger with the room state derived from it,
or raises. Steps:

(1) the export is well formed, names the expected service and, when the
    caller names the room it asked for, is that room's;
(2) entries are numbered 0..n-1 in order, with non-decreasing times, each
    within MAX_ENTRY_SKEW_MS of the time its statement was signed;
(3) every tree head is signed by the service for this room, their sizes and
    times never decrease, and each root equals the root recomputed from the
    entries at that size (any edit, insertion, deletion or reordering of
    entries changes a root);
(4) the last tree head covers every entry;
(5) every statement parses and is for this room (the room of the tree heads,
    so an export relabelled as another room, its heads re-signed, still states
    the room its members signed), every transition is allowed by the governance
    rules, and every signature verifies under the key the room state gives
    its author at that point (checked on every core once the fold is done).

A client that saw a tree head before keeps it (:class:`cleanroom.ledger.heads.TreeHeadTracker`);
a later head must be consistent with it (:func:`check_extends`): a smaller
size is a rollback, a different root at the same size or a failed consistency
proof is a fork. Nothing here reads or writes a file.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import StrictStr

from cleanroom.crypto import jws
from cleanroom.errors import (
    CleanroomError,
    ForkError,
    IntegrityError,
    RollbackError,
)
from cleanroom.governance.state import RoomState, fold
from cleanroom.governance.statements import Statement, parse_statement
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger.entries import Entry, TreeHead
from cleanroom.ledger.merkle import MerkleTree, verify_consistency
from cleanroom.wire import WireModel, parse_model

_CHUNK = 1_000
# the most a statement's signing time and its entry's time may differ (the service's
# max_skew_s is capped at this, so every honest ledger verifies)
MAX_ENTRY_SKEW_MS = 10 * 60 * 1_000
MAX_EXPORT_BYTES = 4 << 30  # about five million entries


class _ExportWire(WireModel):
    format: Literal["cleanroom-ledger-export"]
    version: Literal[1]
    room: StrictStr
    service: dict[str, Any]
    entries: list[dict[str, Any]]
    tree_heads: list[StrictStr]


@dataclass(frozen=True)
class VerifiedLedger:
    room: str
    entries: list[Entry]
    statements: list[Statement]
    tree_heads: list[TreeHead]
    state: RoomState

    @property
    def head(self) -> TreeHead:
        return self.tree_heads[-1]


def _verify_chunk(items: list[tuple[jws.ParsedToken, Ed25519PublicKey]]) -> int:
    """Index of the first signature in ``items`` that does not verify, or -1."""
    for index, (parsed, key) in enumerate(items):
        try:
            jws.verify_parsed(parsed, key)
        except IntegrityError:
            return index
    return -1


class _DeferredSignatures:
    """Collects the signature checks a fold asks for, then runs them all on threads.

    Ed25519 verification releases the GIL, so after the fold (which holds it)
    the collected checks run on every core. Every check is made; the first
    failing position is reported.
    """

    def __init__(self) -> None:
        self.items: list[tuple[jws.ParsedToken, Ed25519PublicKey]] = []

    def __call__(self, parsed: jws.ParsedToken, key: Ed25519PublicKey) -> None:
        self.items.append((parsed, key))

    def first_failure(self, workers: int) -> int:
        chunks = [self.items[i : i + _CHUNK] for i in range(0, len(self.items), _CHUNK)]
        if workers <= 1 or len(chunks) <= 1:
            results = [_verify_chunk(chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(_verify_chunk, chunks))
        return next((n * _CHUNK + r for n, r in enumerate(results) if r >= 0), -1)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during bulk parsing.

    Verifying builds hundreds of thousands of small acyclic objects; the
    collector's repeated full scans of them doubled the time of a 100k-entry
    audit. Reference counting still frees everything; the collector resumes
    (and runs once) afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def verify_entries(
    room: str,
    entries: Sequence[Entry],
    tree_head_tokens: Sequence[str],
    service: PublicIdentity,
    *,
    workers: int | None = None,
    require_covered: bool = True,
) -> VerifiedLedger:
    """Steps (2) to (5) of the module notes, on already-parsed parts.

    ``require_covered=False`` is for a ledger reopening its own store: entries
    appended after the last tree head (a crash before signing one) are still
    checked in full, and the caller signs a head for them.
    """
    with gc_paused():
        return _verify_entries(
            room,
            entries,
            tree_head_tokens,
            service,
            workers=workers,
            require_covered=require_covered,
        )


def _verify_entries(
    room: str,
    entries: Sequence[Entry],
    tree_head_tokens: Sequence[str],
    service: PublicIdentity,
    *,
    workers: int | None,
    require_covered: bool,
) -> VerifiedLedger:
    if not entries:
        raise IntegrityError("the ledger has no entries")
    tree = MerkleTree()
    last_time = 0
    for index, entry in enumerate(entries):  # (2)
        if entry.seq != index:
            raise IntegrityError(
                f"entry at position {index} claims seq {entry.seq}: "
                "entries were deleted, inserted or reordered"
            )
        if entry.time < last_time:
            raise IntegrityError(f"entry {index} is older than the entry before it")
        last_time = entry.time
        tree.append(entry.leaf_hash)
    heads: list[TreeHead] = []
    for token in tree_head_tokens:  # (3)
        head = TreeHead.verify(token, service, room=room)
        if head.size > tree.size:
            raise IntegrityError(
                f"a tree head covers {head.size} entries; the export has {tree.size}"
            )
        if heads and (head.size < heads[-1].size or head.time < heads[-1].time):
            raise RollbackError("tree heads go backwards in size or time")
        if head.root != tree.root(head.size):
            raise IntegrityError(
                f"entries do not match the signed tree head of size {head.size}: "
                "the ledger was modified"
            )
        heads.append(head)
    if not heads or (require_covered and heads[-1].size != tree.size):  # (4)
        raise IntegrityError("the last entries are not covered by a signed tree head")
    statements = [parse_statement(e.statement) for e in entries]  # (5)
    for entry, statement in zip(entries, statements, strict=True):
        _check_statement(room, entry, statement)
    signatures = _DeferredSignatures()
    state = fold(
        ((e.time, s) for e, s in zip(entries, statements, strict=True)), signatures, service
    )
    failed = signatures.first_failure(workers if workers is not None else (os.cpu_count() or 1))
    if failed >= 0:
        raise IntegrityError(f"the signature of entry {failed} does not verify")
    return VerifiedLedger(room, list(entries), statements, heads, state)


def _check_statement(room: str, entry: Entry, statement: Statement) -> None:
    """Step (5) for one entry, before the fold: its statement is for this room and was
    recorded near the time it was signed."""
    if statement.room != room:
        # the room of the tree heads is only the service's word; the members signed this
        raise IntegrityError(
            f"entry {entry.seq} is a statement for room {statement.room[:12]}..., "
            f"not room {room[:12]}...: the ledger was relabelled"
        )
    # the writer records a statement only near the time it was signed; a statement
    # withheld and appended later would move proposal expiry and evidence checks
    apart = abs(statement.created_at - entry.time)
    if apart > MAX_ENTRY_SKEW_MS:
        raise IntegrityError(
            f"entry {entry.seq} was recorded {apart // 1000} s from the time its "
            f"statement was signed (at most {MAX_ENTRY_SKEW_MS // 1000} s)"
        )


def verify_export(
    document: Any,
    service: PublicIdentity,
    *,
    room: str | None = None,
    workers: int | None = None,
) -> VerifiedLedger:
    """Verify a whole ledger export offline (see the module notes).

    ``room`` is the room the caller asked for: give it whenever it is known, and
    an export of any other room is refused. Without it the export is verified as
    the room it names, and its statements must all be for that room."""
    with gc_paused():
        wire = parse_model(_ExportWire, document, what="ledger export")  # (1)
        entries = [Entry.from_json(e) for e in wire.entries]
    try:
        named = PublicIdentity.from_document(wire.service)
    except CleanroomError as exc:
        raise IntegrityError(f"the export's service identity is invalid: {exc}") from exc
    if named.fingerprint != service.fingerprint:
        raise IntegrityError("the export was made by a different ledger service than the key given")
    if room is not None and wire.room != room:
        raise IntegrityError(
            f"the export is of room {wire.room[:12]}..., not of room {room[:12]}... asked for"
        )
    return verify_entries(wire.room, entries, wire.tree_heads, service, workers=workers)


def check_extends(old: TreeHead, new: TreeHead, proof: list[bytes]) -> None:
    """Raise unless ``new`` is ``old`` or a consistent extension of it."""
    if new.size < old.size:
        raise RollbackError(
            f"the ledger shows {new.size} entries but showed {old.size} before: rolled back"
        )
    if new.time < old.time:
        raise RollbackError("the ledger's tree head is older than one seen before: rolled back")
    try:
        verify_consistency(old.size, new.size, old.root, new.root, proof)
    except IntegrityError as exc:
        raise ForkError(f"the ledger rewrote its history (fork): {exc}") from exc
