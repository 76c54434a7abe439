"""Attacks on the attestation terms and the virtual platform that no other test
made: each kills mutants of ``attestation/terms.py`` or ``attestation/virtual.py``
that survived the mutation run (docs/testing.md), and each refusal is matched on
the phrase of the one check that must make it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.attestation import (
    AttestationPolicy,
    VirtualPlatform,
    measure,
    verify_virtual,
)
from cleanroom.attestation.virtual import EVIDENCE_TYP, KEY_ID, PREFIX
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.errors import AttestationError

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
# the development key is published (attestation/virtual.py): anyone can sign with it
DEV_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"cleanroom insecure-virtual development key: public, protects nothing").digest()
)


def _forged(**payload: object) -> str:
    """Virtual evidence signed with the published key, any payload the attacker likes."""
    body = {
        "platform": "insecure-virtual",
        "measurement": PREFIX + "ab" * 48,
        "report_data": b64url_encode(bytes(64)),
        "host_data": "",
        "created_at": NOW_MS,
        **payload,
    }
    return jws.sign(canonical_json(body), DEV_KEY, kid=KEY_ID, typ=EVIDENCE_TYP)


# -- virtual.py --------------------------------------------------------------------------


def test_the_forging_helper_makes_evidence_that_verifies() -> None:
    claims = verify_virtual(_forged(), now=NOW)
    assert claims.report_data == bytes(64)
    assert claims.measurement == PREFIX + "ab" * 48


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_virtual_evidence_binding_a_report_of_the_wrong_size_is_refused(size: int) -> None:
    # a short report could be a prefix of the binding (nonce, key, job), a long one
    # could carry anything after it: the report data is exactly 64 bytes
    token = _forged(report_data=b64url_encode(bytes(size)))
    with pytest.raises(AttestationError, match="report data is not 64 bytes"):
        verify_virtual(token, now=NOW)


@pytest.mark.parametrize("size", [0, 63, 65])
def test_the_virtual_attester_refuses_report_data_of_the_wrong_size(size: int) -> None:
    platform = VirtualPlatform(PREFIX + "ab" * 48, now=lambda: NOW_MS)
    with pytest.raises(ValueError, match="report data is 64 bytes"):
        platform.attest(bytes(size))


def test_an_empty_runtime_is_not_measured(tmp_path: Path) -> None:
    # an empty folder (or one holding only bytecode caches) would otherwise measure as
    # a fixed, code-independent value that a contract could approve by mistake
    with pytest.raises(AttestationError, match="no runtime code to measure"):
        measure(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    with pytest.raises(AttestationError, match="no runtime code to measure"):
        measure(tmp_path)
    (tmp_path / "x.py").write_text("")
    assert measure(tmp_path).startswith(PREFIX)


# -- terms.py ----------------------------------------------------------------------------


def test_the_report_version_term_takes_every_32_bit_version_from_1() -> None:
    # the edges are part of the term: 1 is the lowest version, 2**32 - 1 the highest
    assert AttestationPolicy(min_report_version=1).min_report_version == 1
    assert AttestationPolicy(min_report_version=2**32 - 1).min_report_version == 2**32 - 1
    for bad in (0, -1, 2**32, True):
        with pytest.raises(
            ValueError, match="min_report_version is an integer from 1 to 4294967295"
        ):
            AttestationPolicy(min_report_version=bad)
