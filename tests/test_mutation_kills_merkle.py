"""RFC 9162 proof verification at its boundaries, each rejection by the one
check that names it (the mutants in tests/mutation that survived the vector
suite, which only asks for *some* IntegrityError)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cleanroom.errors import IntegrityError
from cleanroom.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

TREE = MerkleTree([leaf_hash(bytes([i])) for i in range(8)])
ROOT_5 = TREE.root(5)
ROOT_8 = TREE.root(8)
PROOF_5_8 = TREE.consistency_proof(5, 8)
PATH_2_5 = TREE.inclusion_proof(2, 5)
SHORT = bytes(31)


def _inclusion(
    index: int, size: int, proof: list[bytes], root: bytes = ROOT_5
) -> Callable[[], None]:
    return lambda: verify_inclusion(TREE.leaf(2), index, size, proof, root)


def _consistency(
    old: int, new: int, proof: list[bytes], old_root: bytes = ROOT_5, new_root: bytes = ROOT_8
) -> Callable[[], None]:
    return lambda: verify_consistency(old, new, old_root, new_root, proof)


ATTACKS: dict[str, tuple[Callable[[], None], str]] = {
    "inclusion: a 31-byte hash in the path": (
        _inclusion(2, 5, [*PATH_2_5[:-1], SHORT]),
        "proof contains a hash of the wrong length",
    ),
    "inclusion: leaf -1": (
        _inclusion(-1, 5, PATH_2_5),
        "inclusion proof: leaf -1 is outside a tree of size 5",
    ),
    "inclusion: leaf 5 of 5": (
        _inclusion(5, 5, PATH_2_5),
        "inclusion proof: leaf 5 is outside a tree of size 5",
    ),
    "inclusion: a hash appended to a valid path": (
        _inclusion(2, 5, [*PATH_2_5, ROOT_5]),
        "inclusion proof is too long",
    ),
    "inclusion: a valid path, cut short": (
        _inclusion(2, 5, PATH_2_5[:-1]),
        "inclusion proof does not lead to the signed root",
    ),
    "consistency: a 33-byte hash": (
        _consistency(5, 8, [*PROOF_5_8, bytes(33)]),
        "proof contains a hash of the wrong length",
    ),
    "consistency: from size -1": (
        _consistency(-1, 8, PROOF_5_8),
        "tree size went backwards from -1 to 8",
    ),
    "consistency: to a smaller tree": (
        _consistency(8, 5, PROOF_5_8, ROOT_8, ROOT_5),
        "tree size went backwards from 8 to 5",
    ),
    "consistency: from the empty tree, with a proof": (
        _consistency(0, 8, PROOF_5_8, EMPTY_ROOT),
        "a consistency proof from the empty tree must be empty",
    ),
    "consistency: from the empty tree, another old root": (
        _consistency(0, 8, [], ROOT_5),
        "a consistency proof from the empty tree must be empty",
    ),
    "consistency: same size, with a proof": (
        _consistency(8, 8, PROOF_5_8, ROOT_8, ROOT_8),
        "two different roots for the same tree size",
    ),
    "consistency: a hash appended to a valid proof": (
        _consistency(5, 8, [*PROOF_5_8, ROOT_5]),
        "consistency proof is too long",
    ),
    "consistency: a valid proof, cut short": (
        _consistency(5, 8, PROOF_5_8[:-1]),
        "consistency proof does not link the two roots",
    ),
}


@pytest.mark.parametrize("case", ATTACKS)
def test_a_proof_attack_is_refused_by_its_own_check(case: str) -> None:
    attack, message = ATTACKS[case]
    with pytest.raises(IntegrityError, match=f"^{message}$"):
        attack()


def test_the_untampered_proofs_verify() -> None:
    _inclusion(2, 5, PATH_2_5)()
    _consistency(5, 8, PROOF_5_8)()
    _consistency(0, 8, [], EMPTY_ROOT)()
    _consistency(8, 8, [], ROOT_8, ROOT_8)()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.append(bytes(31)), "leaves are 32-byte hashes"),
        (lambda t: t.root(-1), "tree has 8 leaves, not -1"),
        (lambda t: t.root(9), "tree has 8 leaves, not 9"),
        (lambda t: t.inclusion_proof(-1), "leaf -1 is not in a tree of size 8"),
        (lambda t: t.inclusion_proof(8), "leaf 8 is not in a tree of size 8"),
        (lambda t: t.inclusion_proof(0, 9), "tree has 8 leaves, not 9"),
        (lambda t: t.consistency_proof(-1), "cannot prove size -1 consistent with size 8"),
        (lambda t: t.consistency_proof(6, 5), "cannot prove size 6 consistent with size 5"),
        (lambda t: t.consistency_proof(1, 9), "tree has 8 leaves, not 9"),
    ],
)
def test_programmer_errors_name_the_bad_size(
    call: Callable[[MerkleTree], object], message: str
) -> None:
    tree = MerkleTree([leaf_hash(bytes([i])) for i in range(8)])
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(tree)
    assert tree.size == 8
