from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom import Party
from cleanroom.crypto import jws, sign_document, verify_document
from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.errors import IntegrityError
from tests.conftest import load_vector

TYP = "cleanroom-test+jws"
RFC8037 = load_vector("jws/rfc8037-a4.json")


def test_rfc8037_ed25519_signature_known_answer() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037["d"]))
    header_b64, payload_b64, signature_b64 = RFC8037["jws"].split(".")
    assert b64url_decode(payload_b64) == RFC8037["payload"].encode()
    signature = key.sign(f"{header_b64}.{payload_b64}".encode())
    assert b64url_encode(signature) == signature_b64


def test_strict_profile_refuses_rfc_token_without_kid_and_typ() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037["d"]))
    with pytest.raises(IntegrityError, match="exactly alg, kid and typ"):
        jws.verify(RFC8037["jws"], key.public_key(), kid="k", typ=TYP)


def test_sign_and_verify_round_trip(bank: Party) -> None:
    token = jws.sign(b"hello", bank.signing_private, kid=bank.fingerprint, typ=TYP)
    public = bank.identity.signing_key
    assert jws.verify(token, public, kid=bank.fingerprint, typ=TYP) == b"hello"


def _forge_header(token: str, **changes: object) -> str:
    header_b64, body, signature = token.split(".")
    header = json.loads(b64url_decode(header_b64))
    header.update(changes)
    new = b64url_encode(json.dumps(header).encode())
    return f"{new}.{body}.{signature}"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: _forge_header(t, alg="none"), "not allowed"),
        (lambda t: _forge_header(t, alg="HS256"), "not allowed"),
        (lambda t: _forge_header(t, typ="cleanroom-other+jws"), "expected"),
        (lambda t: _forge_header(t, kid="someone-else"), "different key"),
        (lambda t: _forge_header(t, crit=["b64"]), "exactly alg, kid and typ"),
        (lambda t: _forge_header(t, jwk={"kty": "OKP"}), "exactly alg, kid and typ"),
        (lambda t: t.rsplit(".", 1)[0] + ".", "malformed"),
        (lambda t: t + ".x", "malformed"),
        (lambda t: t.replace(".", "..", 1), "malformed"),
        (lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1], "failed"),
        (
            lambda t: t.split(".")[0] + "." + b64url_encode(b"HELLO") + "." + t.split(".")[2],
            "failed",
        ),
        (lambda t: "", "malformed"),
    ],
)
def test_tampered_tokens_are_refused(bank: Party, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    token = jws.sign(b"hello", bank.signing_private, kid=bank.fingerprint, typ=TYP)
    with pytest.raises(IntegrityError, match=message):
        jws.verify(mutate(token), bank.identity.signing_key, kid=bank.fingerprint, typ=TYP)


def test_signature_by_another_key_is_refused(bank: Party, merchant: Party) -> None:
    # the merchant signs claiming the bank's kid
    token = jws.sign(b"pay me", merchant.signing_private, kid=bank.fingerprint, typ=TYP)
    with pytest.raises(IntegrityError, match="failed"):
        jws.verify(token, bank.identity.signing_key, kid=bank.fingerprint, typ=TYP)


def test_detached_and_attached_forms_do_not_mix(bank: Party) -> None:
    attached = jws.sign(b"x", bank.signing_private, kid=bank.fingerprint, typ=TYP)
    with pytest.raises(IntegrityError, match="detached"):
        jws.verify(
            attached,
            bank.identity.signing_key,
            kid=bank.fingerprint,
            typ=TYP,
            detached_payload=b"x",
        )


def test_signed_documents_detect_any_payload_change(bank: Party) -> None:
    document = sign_document(
        {"rows": 10, "name": "cards"}, bank.signing_private, kid=bank.fingerprint, typ=TYP
    )
    assert verify_document(document, bank.identity.signing_key, kid=bank.fingerprint, typ=TYP)
    tampered = {"payload": {**document["payload"], "rows": 11}, "signature": document["signature"]}
    with pytest.raises(IntegrityError, match="failed"):
        verify_document(tampered, bank.identity.signing_key, kid=bank.fingerprint, typ=TYP)


def test_signature_swapped_between_documents_is_refused(bank: Party) -> None:
    one = sign_document({"n": 1}, bank.signing_private, kid=bank.fingerprint, typ=TYP)
    two = sign_document({"n": 2}, bank.signing_private, kid=bank.fingerprint, typ=TYP)
    swapped = {"payload": one["payload"], "signature": two["signature"]}
    with pytest.raises(IntegrityError):
        verify_document(swapped, bank.identity.signing_key, kid=bank.fingerprint, typ=TYP)


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"payload": {}},
        {"payload": [], "signature": ""},
        {"payload": {}, "signature": 1},
        {"payload": {}, "signature": "a..b", "extra": 1},
    ],
)
def test_malformed_documents_are_integrity_errors(bank: Party, document: object) -> None:
    with pytest.raises(IntegrityError):
        verify_document(document, bank.identity.signing_key, kid=bank.fingerprint, typ=TYP)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_bit_in_a_token_is_refused(data: st.DataObject) -> None:
    party = Party.create("p")
    token = jws.sign(b"payload", party.signing_private, kid=party.fingerprint, typ=TYP)
    raw = bytearray(token.encode())
    index = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[index] ^= 1 << bit
    try:
        mutated = raw.decode("ascii")
    except UnicodeDecodeError:
        return
    with pytest.raises(IntegrityError):
        jws.verify(mutated, party.identity.signing_key, kid=party.fingerprint, typ=TYP)
