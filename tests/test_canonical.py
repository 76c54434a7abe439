from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom.crypto import canonical_json
from cleanroom.crypto.encoding import b64url_decode, b64url_encode, parse_json
from cleanroom.errors import DeserializationError
from tests.conftest import load_vector

NUMBERS = load_vector("rfc8785/numbers.json")
DOCUMENTS = load_vector("rfc8785/documents.json")


def _double(bits: str) -> float:
    return float(struct.unpack(">d", bytes.fromhex(bits))[0])


@pytest.mark.parametrize(("bits", "expected"), NUMBERS["cases"])
def test_rfc8785_number_serialisation(bits: str, expected: str) -> None:
    assert canonical_json(_double(bits)) == expected.encode()


@pytest.mark.parametrize("bits", NUMBERS["invalid"])
def test_rfc8785_rejects_nan_and_infinity(bits: str) -> None:
    with pytest.raises(DeserializationError):
        canonical_json(_double(bits))


@pytest.mark.parametrize("case", DOCUMENTS["cases"])
def test_rfc8785_documents(case: dict[str, str]) -> None:
    assert canonical_json(json.loads(case["input"])) == case["output"].encode("utf-8")


def test_integers_beyond_two_to_the_53_are_refused() -> None:
    with pytest.raises(DeserializationError):
        canonical_json({"n": 2**53 + 1})


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    # doubles at or beyond 2**53 parse back as integers outside JSON's safe range
    | st.floats(
        allow_nan=False, allow_infinity=False, min_value=-(2.0**53) + 1, max_value=2.0**53 - 1
    )
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=0) or float(a) == float(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(JSON)
def test_canonical_json_round_trips_and_is_idempotent(value: Any) -> None:
    encoded = canonical_json(value)
    parsed = parse_json(encoded)
    assert _same(parsed, value)
    assert canonical_json(parsed) == encoded


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 9), min_size=2, max_size=6))
def test_key_order_never_changes_the_bytes(value: dict[str, int]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(value) == canonical_json(reordered)


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "a": 2}', '{"a": NaN}', '{"a": Infinity}', "{", b"\xff\xfe".decode("latin-1")],
)
def test_strict_json_parser_refuses_ambiguous_input(text: str) -> None:
    with pytest.raises(DeserializationError):
        parse_json(text)


@given(st.binary(max_size=64))
def test_base64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


@pytest.mark.parametrize("text", ["AA==", "A", "AB", "A+/=", "a b", "AB\n"])
def test_base64url_refuses_padding_and_non_canonical_forms(text: str) -> None:
    with pytest.raises(DeserializationError):
        b64url_decode(text)
