"""RFC 9162 / RFC 6962 Merkle trees: published Certificate Transparency vectors
and exhaustive round trips on small trees."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom.errors import IntegrityError
from cleanroom.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import load_vector

V = load_vector("rfc6962/merkle.json")
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in V["leaves"]]
TREE = MerkleTree(LEAVES)


def h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_empty_root() -> None:
    assert MerkleTree().root() == EMPTY_ROOT == bytes.fromhex(V["empty_root"])


@pytest.mark.parametrize("size", range(1, 9))
def test_published_roots(size: int) -> None:
    assert TREE.root(size).hex() == V["roots"][size - 1]
    assert MerkleTree(LEAVES[:size]).root().hex() == V["roots"][size - 1]


@pytest.mark.parametrize("case", V["inclusion"], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_published_inclusion_proofs(case: dict) -> None:  # type: ignore[type-arg]
    proof = TREE.inclusion_proof(case["index"], case["size"])
    assert [p.hex() for p in proof] == case["path"]
    root = bytes.fromhex(V["roots"][case["size"] - 1])
    verify_inclusion(LEAVES[case["index"]], case["index"], case["size"], proof, root)


@pytest.mark.parametrize("case", V["consistency"], ids=lambda c: f"{c['old']}-to-{c['new']}")
def test_published_consistency_proofs(case: dict) -> None:  # type: ignore[type-arg]
    proof = TREE.consistency_proof(case["old"], case["new"])
    assert [p.hex() for p in proof] == case["path"]
    old_root = bytes.fromhex(V["roots"][case["old"] - 1])
    new_root = bytes.fromhex(V["roots"][case["new"] - 1])
    verify_consistency(case["old"], case["new"], old_root, new_root, proof)


def test_production_log_audit_path() -> None:
    case = V["production_log_inclusion"]
    verify_inclusion(
        bytes.fromhex(case["leaf_hash"]),
        case["index"],
        case["size"],
        h(case["path"]),
        bytes.fromhex(case["root"]),
    )
    with pytest.raises(IntegrityError):
        verify_inclusion(
            bytes.fromhex(case["leaf_hash"]),
            case["index"] + 1,
            case["size"],
            h(case["path"]),
            bytes.fromhex(case["root"]),
        )


def test_rejections_from_the_reference_suite() -> None:
    r = h(V["roots"])
    path_6_8 = h(V["consistency"][2]["path"])
    flipped_new = bytearray(r[7])
    flipped_new[-1] ^= 1
    flipped_old = bytearray(r[5])
    flipped_old[-1] ^= 1
    cases = [
        (6, 8, r[5], r[7], path_6_8[:2]),  # proof too short
        (6, 8, r[5], bytes(flipped_new), path_6_8),  # bad new root
        (6, 8, bytes(flipped_old), r[7], path_6_8),  # bad old root
        (3, 3, r[0], r[2], []),  # same size, different roots
        (5, 2, r[4], r[1], h(V["consistency"][3]["path"])),  # newer tree is smaller
        (6, 8, r[5], r[7], []),  # empty proof
        (6, 8, r[5], r[7], [*path_6_8, path_6_8[0]]),  # proof too long
    ]
    for old, new, old_root, new_root, proof in cases:
        with pytest.raises(IntegrityError):
            verify_consistency(old, new, old_root, new_root, proof)


@pytest.mark.parametrize("size", range(1, 34))
def test_every_inclusion_and_consistency_proof_verifies(size: int) -> None:
    tree = MerkleTree([leaf_hash(bytes([i])) for i in range(size)])
    root = tree.root()
    for index in range(size):
        proof = tree.inclusion_proof(index)
        verify_inclusion(tree.leaf(index), index, size, proof, root)
        if size > 1:  # the same path never proves a different leaf
            with pytest.raises(IntegrityError):
                verify_inclusion(tree.leaf((index + 1) % size), index, size, proof, root)
    for old in range(size + 1):
        verify_consistency(old, size, tree.root(old), root, tree.consistency_proof(old))


@given(st.integers(2, 300), st.data())
def test_a_rewritten_history_fails_consistency(size: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    old = data.draw(st.integers(1, size - 1))
    changed = data.draw(st.integers(0, old - 1))
    honest = MerkleTree(leaves)
    forked_leaves = list(leaves)
    forked_leaves[changed] = leaf_hash(b"forged")
    forked = MerkleTree(forked_leaves)
    with pytest.raises(IntegrityError):
        verify_consistency(
            old, size, honest.root(old), forked.root(), forked.consistency_proof(old)
        )


def test_duplicated_last_leaf_changes_the_root() -> None:
    # the CVE-2012-2459 shape: [a, b, c] vs [a, b, c, c]
    assert MerkleTree(LEAVES[:3]).root() != MerkleTree([*LEAVES[:3], LEAVES[2]]).root()
