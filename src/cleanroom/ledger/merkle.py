"""Merkle trees as RFC 9162 (Certificate Transparency 2.0) defines them.

Pure: hashes in, hashes or exceptions out.

* leaf hash  = SHA-256(0x00 || entry)
* node hash  = SHA-256(0x01 || left || right)
* MTH of n leaves splits at k, the largest power of two below n.

:class:`MerkleTree` keeps every level of complete subtrees, so appending is
O(log n) amortised and roots, inclusion proofs and consistency proofs for any
earlier size cost O(log^2 n) at most. The verifiers follow RFC 9162 sections
2.1.3.2 and 2.1.4.2 step by step and raise :class:`IntegrityError`.
"""

from __future__ import annotations

import hashlib

from cleanroom.errors import IntegrityError

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only tree over leaf hashes, with every complete subtree cached."""

    def __init__(self, leaves: list[bytes] | None = None) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves or []:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def append(self, leaf: bytes) -> None:
        if len(leaf) != HASH_LEN:
            raise ValueError("leaves are 32-byte hashes")
        self._levels[0].append(leaf)
        level = 0
        # each time a level gets an even count, a complete subtree closes above it
        while len(self._levels[level]) % 2 == 0:
            pair = self._levels[level][-2:]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(pair[0], pair[1]))
            level += 1

    def _range(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); ``start`` is aligned to the largest power of two in the range."""
        n = end - start
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self._levels[level][start >> level]
        k = _split(n)
        return node_hash(self._range(start, start + k), self._range(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._range(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[size])."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        return self._path(index, 0, size)

    def _path(self, index: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if index < k:
            return [*self._path(index, start, start + k), self._range(start + k, end)]
        return [*self._path(index - k, start + k, end), self._range(start, start + k)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[new_size])."""
        new_size = self.size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"cannot prove size {old_size} consistent with size {new_size}")
        if old_size in (0, new_size):
            return []
        return self._subproof(old_size, 0, new_size, complete=True)

    def _subproof(self, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [self._range(start, end)]
        k = _split(n)
        if m <= k:
            return [
                *self._subproof(m, start, start + k, complete=complete),
                self._range(start + k, end),
            ]
        return [
            *self._subproof(m - k, start + k, end, complete=False),
            self._range(start, start + k),
        ]

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree has {self.size} leaves, not {size}")


def _check_hashes(proof: list[bytes]) -> None:
    if any(len(h) != HASH_LEN for h in proof):
        raise IntegrityError("proof contains a hash of the wrong length")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 2.1.3.2: ``leaf`` is at ``index`` in the tree of ``size`` with ``root``."""
    _check_hashes(proof)
    # (1) the index is inside the tree
    if not 0 <= index < size:
        raise IntegrityError(f"inclusion proof: leaf {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf  # (2), (3)
    for p in proof:  # (4)
        if sn == 0:
            raise IntegrityError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # (5) the path consumed the whole tree and reached the signed root
    if sn != 0 or r != root:
        raise IntegrityError("inclusion proof does not lead to the signed root")


def verify_consistency(  # noqa: PLR0912 - follows RFC 9162 2.1.4.2 step by step
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    """RFC 9162 2.1.4.2: the tree of ``new_size`` extends the tree of ``old_size``."""
    _check_hashes(proof)
    if not 0 <= old_size <= new_size:
        raise IntegrityError(f"tree size went backwards from {old_size} to {new_size}")
    if old_size == 0:
        # the empty tree is a prefix of every tree; nothing can prove it, so a proof
        # or an old root other than the empty tree's is an error (as transparency-dev's)
        if proof or old_root != EMPTY_ROOT:
            raise IntegrityError("a consistency proof from the empty tree must be empty")
        return
    if old_size == new_size:
        if proof or old_root != new_root:
            raise IntegrityError("two different roots for the same tree size")
        return
    # (1) a proof is needed
    if not proof:
        raise IntegrityError("consistency proof is empty")
    path = list(proof)
    # (2) a complete old tree is its own first node
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # (3)
    while fn & 1:  # (4)
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # (5)
    for c in path[1:]:  # (6)
        if sn == 0:
            raise IntegrityError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # (7) both roots are reproduced and the path covered the new tree
    if sn != 0 or fr != old_root or sr != new_root:
        raise IntegrityError("consistency proof does not link the two roots")
