"""The tree heads a party accepted, kept across sessions to detect forks and
rollbacks; and reading ledger exports from disk (the I/O beside the pure
verification in :mod:`cleanroom.ledger.verify`).

:class:`TreeHeadTracker` accepts a newer head for a room only if it extends
the last one it accepted (:func:`~cleanroom.ledger.verify.check_extends`); its
heads live in an injected :class:`HeadStore`: in memory (an attested broker's
view, which dies with it) or in a file (an auditor's ``--known-heads``). A
stored head is verified again under the service key when it is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cleanroom.errors import DeserializationError
from cleanroom.fs import write_file
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger.entries import TreeHead
from cleanroom.ledger.merkle import MerkleTree
from cleanroom.ledger.verify import MAX_EXPORT_BYTES, VerifiedLedger, check_extends, gc_paused
from cleanroom.wire import read_json_file


class HeadStore(Protocol):
    """Where accepted tree heads are kept: their signed tokens, by room."""

    def load(self) -> dict[str, str]: ...

    def save(self, tokens: dict[str, str]) -> None: ...


class MemoryHeadStore:
    """Heads kept for the life of the process only."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def load(self) -> dict[str, str]:
        return dict(self._tokens)

    def save(self, tokens: dict[str, str]) -> None:
        self._tokens = dict(tokens)


class FileHeadStore:
    """Heads kept in a JSON file (``{room: tree-head token}``), replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        document = read_json_file(self.path, what="known tree heads")
        if not isinstance(document, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in document.items()
        ):
            raise DeserializationError(
                f"{self.path} is not a known-heads file: expected {{room: tree-head token}}"
            )
        return document

    def save(self, tokens: dict[str, str]) -> None:
        write_file(self.path, json.dumps(tokens, indent=2, sort_keys=True).encode() + b"\n")


def load_export(path: Path) -> Any:
    """An export document read from ``path`` (bounded in size), for :func:`verify_export`."""
    with gc_paused():
        return read_json_file(path, what="ledger export", max_bytes=MAX_EXPORT_BYTES)


class TreeHeadTracker:
    """The last tree head a client accepted per room, kept in ``store``.

    :meth:`observe` accepts a newer head only with a valid consistency proof
    from the last one; it raises :class:`RollbackError` or :class:`ForkError`
    otherwise, and then keeps the old head.
    """

    def __init__(self, service: PublicIdentity, store: HeadStore | None = None) -> None:
        self.service = service
        self.store: HeadStore = store if store is not None else MemoryHeadStore()
        self._heads: dict[str, TreeHead] = {
            room: TreeHead.verify(token, service, room=room)
            for room, token in self.store.load().items()
        }

    def last(self, room: str) -> TreeHead | None:
        return self._heads.get(room)

    def observe(self, head: TreeHead, proof: Callable[[int, int], list[bytes]]) -> TreeHead:
        """Accept ``head`` if it extends the last one seen; ``proof(old, new)`` fetches
        a consistency proof."""
        old = self._heads.get(head.room)
        if old is not None:
            check_extends(old, head, proof(old.size, head.size) if head.size > old.size else [])
        self._heads[head.room] = head
        self._save()
        return head

    def observe_verified(self, verified: VerifiedLedger) -> TreeHead:
        """Accept the head of a fully verified export; its own entries give the proof."""
        tree = MerkleTree([e.leaf_hash for e in verified.entries])
        return self.observe(verified.head, tree.consistency_proof)

    def _save(self) -> None:
        self.store.save({room: head.token for room, head in self._heads.items()})
