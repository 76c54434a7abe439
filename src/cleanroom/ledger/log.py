"""The ledger writer: validates statements, appends entries, signs tree heads.

One :class:`Ledger` serves many rooms over one store. For each room it keeps
the Merkle tree and the derived :class:`RoomState` in memory, rebuilt on first
use by verifying everything in the store exactly as an auditor would (so a
store edited while the service was down is caught at start).

``submit`` is the only way in: statements are parsed, checked for freshness,
applied to the room state (which verifies signatures and governance rules),
then appended in one durable transaction. If anything fails, nothing is
appended; the in-memory state stays exact (a refused statement changes
nothing) or, after a partly applied batch or a storage failure, is rebuilt
from the store.

Tree heads are signed when ``max_entries`` entries are uncovered, when an
uncovered entry is older than ``max_delay_ms`` (checked on every write and
read, and by :meth:`Ledger.issue_due_tree_heads`, which a service calls
periodically), and whenever a receipt or export needs one.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cleanroom.crypto import jws
from cleanroom.errors import GovernanceError, IntegrityError
from cleanroom.governance.state import RoomState, folding_with
from cleanroom.governance.statements import Statement, parse_statement
from cleanroom.identities.keystore import Party
from cleanroom.ledger.entries import Entry, Receipt, TreeHead
from cleanroom.ledger.merkle import MerkleTree
from cleanroom.ledger.store import LedgerStore, StoredEntry, StoredHead
from cleanroom.ledger.verify import verify_entries
from cleanroom.policy.memo import CheckMemo


class QuarantinedError(IntegrityError):
    """A room whose stored history does not verify: refused, not served."""


class _NoRoomError(GovernanceError):
    """No such room on this ledger."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TreeHeadPolicy:
    """When to sign a new tree head: after this many entries or this much time."""

    max_entries: int = 256
    max_delay_ms: int = 1_000
    max_clock_skew_ms: int = 10 * 60 * 1_000

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_delay_ms < 0:
            raise ValueError("tree head policy needs max_entries >= 1 and max_delay_ms >= 0")


@dataclass
class _Room:
    tree: MerkleTree
    state: RoomState
    head: TreeHead
    last_time: int


ROOM_LOCKS = 64  # locks rooms are spread over


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        service: Party,
        *,
        policy: TreeHeadPolicy | None = None,
        clock: Callable[[], int] = now_ms,
        verify_workers: int | None = None,
        memo: CheckMemo | None = None,
    ) -> None:
        self.memo = memo  # the service's memo of policy check outcomes, for its own view
        self.store = store
        self.service = service
        self.policy = policy or TreeHeadPolicy()
        self.clock = clock
        self._workers = verify_workers if verify_workers is not None else (os.cpu_count() or 1)
        self._rooms: dict[str, _Room] = {}
        self.quarantined: dict[str, str] = {}  # room -> why its history did not verify
        # one lock per room, so that a slow check (a large analysis's policy check, a
        # long history verified at first use) in one room never stalls another
        self._locks = [threading.RLock() for _ in range(ROOM_LOCKS)]

    def _lock(self, room: str) -> threading.RLock:
        """The room's lock: one of a fixed set (a room id any caller names must not
        grow memory), so two rooms share one only by chance."""
        return self._locks[zlib.crc32(room.encode()) % len(self._locks)]

    # -- reading ---------------------------------------------------------------------

    def _room(self, room: str) -> _Room:
        cached = self._rooms.get(room)
        if cached is None:
            if room in self.quarantined:
                raise QuarantinedError(self.quarantined[room])
            try:
                cached = self._load(room)
            except _NoRoomError:
                raise
            except (IntegrityError, GovernanceError) as exc:
                # a room whose stored history does not verify is set apart, with the
                # reason; the others are served (one bad room must not stop the service)
                reason = f"room {room[:12]}... failed verification and is quarantined: {exc}"
                self.quarantined[room] = reason
                raise QuarantinedError(reason) from exc
            self._rooms[room] = cached
        return cached

    def _load(self, room: str) -> _Room:
        stored = list(self.store.entries(room))
        if not stored:
            raise _NoRoomError(f"no room {room[:12]}... on this ledger")
        entries = [Entry.decode(s.data) for s in stored]
        with folding_with(self.memo):
            verified = verify_entries(
                room,
                entries,
                self.store.tree_heads(room),
                self.service.identity,
                workers=self._workers,
                require_covered=False,
            )
        tree = MerkleTree([s.leaf for s in stored])
        loaded = _Room(tree, verified.state, verified.head, entries[-1].time)
        if verified.head.size < tree.size:
            self._issue(room, loaded)
        return loaded

    def rooms(self) -> list[str]:
        return self.store.rooms()

    def healthy_rooms(self) -> list[str]:
        """Every room whose history verifies (verifying each one not yet loaded)."""
        healthy = []
        for room in self.rooms():
            try:
                with self._lock(room):
                    self._room(room)
            except QuarantinedError:
                continue
            healthy.append(room)
        return healthy

    def state(self, room: str) -> RoomState:
        """The derived room state; callers must not mutate it."""
        with self._lock(room):
            return self._room(room).state

    def size(self, room: str) -> int:
        with self._lock(room):
            return self._room(room).tree.size

    def entries(self, room: str, start: int = 0, end: int | None = None) -> list[Entry]:
        size = self.size(room)
        end = size if end is None else min(end, size)
        if not 0 <= start < end:
            return []
        return [Entry.decode(s.data) for s in self.store.entries(room, start, end)]

    def tree_head(self, room: str) -> TreeHead:
        with self._lock(room):
            cached = self._room(room)
            self._maybe_issue(room, cached)
            return cached.head

    def receipt(self, room: str, seq: int) -> Receipt:
        with self._lock(room):
            cached = self._room(room)
            if not 0 <= seq < cached.tree.size:
                raise GovernanceError(f"no entry {seq} in room {room[:12]}...")
            if cached.head.size <= seq:
                self._issue(room, cached)
            head = cached.head
            entry = next(iter(self.store.entries(room, seq, seq + 1)))
            return Receipt(
                room, Entry.decode(entry.data), cached.tree.inclusion_proof(seq, head.size), head
            )

    def consistency_proof(self, room: str, old_size: int, new_size: int) -> list[bytes]:
        with self._lock(room):
            tree = self._room(room).tree
            if not 0 <= old_size <= new_size <= tree.size:
                raise GovernanceError(f"no consistency proof from {old_size} to {new_size}")
            return tree.consistency_proof(old_size, new_size)

    def export(self, room: str) -> dict[str, Any]:
        """A portable export that :func:`verify_export` checks offline."""
        with self._lock(room):
            cached = self._room(room)
            if cached.head.size != cached.tree.size:
                self._issue(room, cached)
            return {
                "format": "cleanroom-ledger-export",
                "version": 1,
                "room": room,
                "service": self.service.identity_document(),
                "entries": [e.to_json() for e in self.entries(room)][: cached.head.size],
                "tree_heads": self.store.tree_heads(room),
            }

    # -- writing -----------------------------------------------------------------------

    def _parse(self, tokens: Sequence[str]) -> list[Statement]:
        statements = [parse_statement(t) for t in tokens]
        now = self.clock()
        for statement in statements:
            if abs(statement.created_at - now) > self.policy.max_clock_skew_ms:
                raise GovernanceError(
                    "statement was signed too long ago or in the future; sign it again"
                )
        return statements

    def create_room(self, token: str) -> Entry:
        """Record a ``room.create`` statement as entry 0 of a new room."""
        (statement,) = self._parse([token])
        with self._lock(statement.room):
            when = self.clock()
            state = RoomState.genesis(statement, when, jws.verify_parsed, self.service.identity)
            state.memo = self.memo
            entry = Entry(0, when, token)
            self.store.create_room(statement.room, self._stored(entry, statement))
            tree = MerkleTree([entry.leaf_hash])
            head = self._sign(statement.room, tree, when)
            self._rooms[statement.room] = _Room(tree, state, head, when)
            return entry

    def submit(
        self, room: str, tokens: Sequence[str], *, with_receipts: bool = False
    ) -> list[Entry]:
        """Validate and durably append statements, all or none.

        ``with_receipts`` signs a tree head covering them in the same
        transaction, so :meth:`receipts` can answer at once.
        """
        if not tokens:
            return []
        statements = self._parse(tokens)
        with self._lock(room):
            cached = self._room(room)
            when = max(self.clock(), cached.last_time)
            applied = 0
            try:
                for statement in statements:
                    cached.state.apply(statement, when, jws.verify_parsed)
                    applied += 1
                first = cached.tree.size
                entries = [Entry(first + i, when, s.token) for i, s in enumerate(statements)]
                for entry in entries:
                    cached.tree.append(entry.leaf_hash)
                head = None
                if with_receipts or self._due(cached):
                    head = TreeHead.sign(
                        self.service,
                        room,
                        cached.tree.size,
                        cached.tree.root(),
                        max(when, cached.head.time),
                    )
                self.store.append(
                    room,
                    [self._stored(e, s) for e, s in zip(entries, statements, strict=True)],
                    StoredHead(head.size, head.time, head.token) if head else None,
                )
            except BaseException:
                # apply() changes nothing when it refuses a statement, so a refused first
                # statement leaves the cache exact; after anything else (a partly applied
                # batch, a failed commit, an interrupt) rebuild it from what is durable
                if applied:
                    del self._rooms[room]
                raise
            cached.last_time = when
            if head is not None:
                cached.head = head
            return entries

    def receipts(self, room: str, entries: Sequence[Entry]) -> list[Receipt]:
        """Receipts for entries just appended, under the latest tree head."""
        with self._lock(room):
            cached = self._room(room)
            if entries and cached.head.size <= entries[-1].seq:
                self._issue(room, cached)
            head = cached.head
            return [
                Receipt(room, e, cached.tree.inclusion_proof(e.seq, head.size), head)
                for e in entries
            ]

    def issue_due_tree_heads(self) -> None:
        for room in list(self._rooms.copy()):
            with self._lock(room):
                # read under the room's lock: a failed write may have dropped the cache
                cached = self._rooms.get(room)
                if cached is not None:
                    self._maybe_issue(room, cached)

    def _stored(self, entry: Entry, statement: Statement) -> StoredEntry:
        return StoredEntry(entry.seq, entry.time, entry.encode(), entry.leaf_hash, statement.digest)

    def _due(self, cached: _Room) -> bool:
        uncovered = cached.tree.size - cached.head.size
        late = self.clock() - cached.head.time >= self.policy.max_delay_ms
        return uncovered > 0 and (uncovered >= self.policy.max_entries or late)

    def _maybe_issue(self, room: str, cached: _Room) -> None:
        if self._due(cached):
            self._issue(room, cached)

    def _issue(self, room: str, cached: _Room) -> None:
        cached.head = self._sign(room, cached.tree, max(self.clock(), cached.head.time))

    def _sign(self, room: str, tree: MerkleTree, when: int) -> TreeHead:
        head = TreeHead.sign(self.service, room, tree.size, tree.root(), when)
        self.store.add_tree_head(room, head.size, head.time, head.token)
        return head
