"""Where ledger entries and tree heads are kept: one interface, several stores.

Every store honours the same contract (tests/test_ledger_store.py runs it
against each):

* ``append`` is atomic and durable: when it returns, every entry of the batch
  is on stable storage; when it raises, none is visible.
* Entries of a room are numbered 0, 1, 2, ... without gaps; an append whose
  first ``seq`` is not the room's current size is refused (a second writer, or
  a stale one), as is a statement digest the room already holds (a replay).
* Nothing is ever updated or deleted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredEntry:
    seq: int
    time: int
    data: bytes  # the entry's canonical bytes: what the Merkle leaf hashes
    leaf: bytes
    digest: str  # the statement's digest, unique per room


@dataclass(frozen=True)
class StoredHead:
    size: int
    time: int
    token: str


class LedgerStore(Protocol):
    def create_room(self, room: str, first: StoredEntry) -> None:
        """Create ``room`` with its first entry; raises if the room exists."""

    def append(
        self, room: str, entries: Sequence[StoredEntry], head: StoredHead | None = None
    ) -> None:
        """Append ``entries`` (and a tree head covering them) in one durable transaction."""

    def size(self, room: str) -> int: ...

    def entries(self, room: str, start: int = 0, end: int | None = None) -> Iterator[StoredEntry]:
        """Entries ``start <= seq < end`` in order (to the last one if ``end`` is None)."""

    def rooms(self) -> list[str]: ...

    def add_tree_head(self, room: str, size: int, time: int, token: str) -> None: ...

    def tree_heads(self, room: str) -> list[str]:
        """Every tree head issued for ``room``, oldest first."""

    def close(self) -> None: ...
