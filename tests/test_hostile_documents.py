"""Hostile documents at the verifier's edge raise the project's errors, never a
Python one: a ledger export, tree heads, receipts and evidence as an operator
or a stranger could hand them over (truncated, emptied, retyped, cut tails).
Any other exception would be a crash an attacker chooses, or a message that
says more than the fixed categories do."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom.attestation import Policy, VirtualPlatform, appraise, binding, verify_evidence
from cleanroom.errors import (
    AttestationError,
    DeserializationError,
    GovernanceError,
    IntegrityError,
)
from cleanroom.ledger import TreeHead, load_export, verify_export, verify_receipt
from tests.rooms import CODE, Clock, RoomFixture, make_ledger

NOW = datetime.now(UTC)
# what a hostile document may raise: bad input, named as such
REFUSALS = (IntegrityError, DeserializationError, GovernanceError, AttestationError)

MEASUREMENTS = {
    "type": "set_measurements",
    "measurements": [{"platform": "tdx", "value": "ab" * 48}],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[RoomFixture, dict[str, Any]]:
    clock = Clock()
    fixture = RoomFixture(make_ledger(tmp_path_factory.mktemp("hostile"), clock), clock)
    clock.advance(1_000)
    fixture.propose("bank", MEASUREMENTS)
    document = json.loads(json.dumps(fixture.ledger.export(fixture.room)))
    return fixture, document


# -- hand-picked cases: one row each -------------------------------------------------


def _cases() -> list[tuple[str, Any]]:
    def cut_tail(d: dict[str, Any]) -> None:
        last = d["entries"][-1]
        key = next(k for k, v in last.items() if isinstance(v, str) and len(v) > 8)
        last[key] = last[key][: len(last[key]) // 2]

    return [
        ("no tree heads", lambda d: d.update(tree_heads=[])),
        ("no entries", lambda d: d.update(entries=[])),
        ("entries not a list", lambda d: d.update(entries={"0": d["entries"][0]})),
        ("an entry that is a number", lambda d: d["entries"].__setitem__(0, 7)),
        ("an empty entry", lambda d: d["entries"].__setitem__(0, {})),
        ("a cut entry tail", cut_tail),
        ("the last entry dropped", lambda d: d["entries"].pop()),
        ("a tree head that is not a token", lambda d: d["tree_heads"].__setitem__(0, "x.y")),
        ("a tree head of null", lambda d: d["tree_heads"].__setitem__(0, None)),
        ("a cut tree head", lambda d: d["tree_heads"].__setitem__(0, d["tree_heads"][0][:40])),
        ("no room", lambda d: d.pop("room")),
        ("a room that is a list", lambda d: d.update(room=[d["room"]])),
        ("no service", lambda d: d.pop("service", None) or d.pop("entries")),
        ("a document that is a list", None),
    ]


@pytest.mark.parametrize(("what", "change"), _cases(), ids=[c[0] for c in _cases()])
def test_a_hostile_export_is_refused_with_a_project_error(
    built: tuple[RoomFixture, dict[str, Any]], what: str, change: Any
) -> None:
    fixture, original = built
    document: Any = copy.deepcopy(original)
    if change is None:
        document = [document]
    else:
        change(document)
    with pytest.raises(REFUSALS):
        verify_export(document, fixture.ledger.service.identity, room=fixture.room)


# -- any structural change: a property ---------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            found += _paths(v, (*prefix, i))
    return found


REPLACEMENTS = st.sampled_from(
    [None, 0, -1, 2**70, 1.5, "", "x", "A" * 300, [], {}, True, [None], {"": None}]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_value_replaced_is_refused_or_verifies(
    built: tuple[RoomFixture, dict[str, Any]], data: st.DataObject
) -> None:
    fixture, original = built
    document = copy.deepcopy(original)
    paths = [p for p in _paths(document) if p]
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(REPLACEMENTS)
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = replacement
    # refused with a project error, or verified (a field the verifier ignores)
    with contextlib.suppress(*REFUSALS):
        verify_export(document, fixture.ledger.service.identity, room=fixture.room)


def test_a_hostile_tree_head_or_receipt_is_refused(
    built: tuple[RoomFixture, dict[str, Any]],
) -> None:
    fixture, document = built
    service = fixture.ledger.service.identity
    for token in ["", "a.b.c", "..", document["tree_heads"][0][:-5], 5, None]:
        with pytest.raises(REFUSALS):
            TreeHead.verify(token, service, room=fixture.room)  # type: ignore[arg-type]
    for receipt in [None, [], {}, {"entry": 5}, "receipt", {"tree_head": "x", "proof": None}]:
        with pytest.raises(REFUSALS):
            verify_receipt(receipt, service)


@pytest.mark.parametrize(
    "evidence",
    [
        None,
        [],
        {},
        "",
        {"format": "insecure-virtual"},
        {"format": 5},
        {"format": "sev-snp", "report": ""},
    ],
)
def test_hostile_evidence_is_refused(evidence: Any) -> None:
    with pytest.raises(REFUSALS):
        verify_evidence(evidence, now=NOW)


def test_an_empty_measurement_list_admits_nothing() -> None:
    with pytest.raises(REFUSALS):
        appraise(_virtual_claims(), Policy(frozenset(), allow_insecure_virtual=True))


def _virtual_claims() -> Any:
    evidence = VirtualPlatform(CODE).attest(binding(nonce="n", tee_pubkey="k", job="j"))
    return verify_evidence(evidence, now=NOW)


def test_the_export_file_reader_refuses_what_is_not_json(tmp_path: Path) -> None:
    for content in [b"", b"{", b"\xff\xfe", b"[" * 100_000]:
        path = tmp_path / "export.json"
        path.write_bytes(content)
        with pytest.raises(DeserializationError):
            load_export(path)
