"""Evidence dispatch, pinned by the mutants it must kill (tests/mutation): each
platform's document reaches that platform's verifier and no other, a verifier's
own error comes through unchanged, a malformed field is malformed evidence, an
unknown format is refused by name, and the collateral size limit is exact."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cleanroom.attestation.evidence import MAX_FIELD, verify_evidence
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.errors import AttestationError

NOW = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"format": "tpm", "quote": "AAAA"}, "'tpm'"),
        ({"quote": "AAAA"}, "None"),
        (["sev-snp"], "None"),
    ],
)
def test_an_unknown_format_is_refused_by_name(document: Any, named: str) -> None:
    with pytest.raises(AttestationError, match=f"unknown evidence format {named}: expected"):
        verify_evidence(document, now=NOW)


def test_an_snp_document_reaches_the_snp_verifier() -> None:
    document = {"format": "sev-snp", "report": b64url_encode(bytes(10)), "vek": "AAAA"}
    with pytest.raises(AttestationError, match="an SNP report is 1184 bytes, not 10"):
        verify_evidence(document, now=NOW)


def test_a_dcap_document_reaches_the_dcap_verifier() -> None:
    document = {"format": "dcap", "quote": b64url_encode(b"not a quote"), "collateral": "{}"}
    with pytest.raises(AttestationError, match="not a DCAP quote"):
        verify_evidence(document, now=NOW)


def test_a_verifier_error_keeps_its_own_message() -> None:
    document = {"format": "insecure-virtual", "token": "a.b.c"}
    with pytest.raises(AttestationError, match="the virtual evidence does not verify"):
        verify_evidence(document, now=NOW)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"format": "sev-snp", "report": "not base64!", "vek": "AAAA"}, "SNP report"),
        ({"format": "sev-snp", "report": "AAAA", "vek": "not base64!"}, "VCEK/VLEK"),
        ({"format": "dcap", "quote": "not base64!", "collateral": "{}"}, "quote"),
    ],
)
def test_a_malformed_field_is_malformed_evidence(document: dict[str, str], field: str) -> None:
    with pytest.raises(AttestationError, match=f"malformed evidence: {field} is not"):
        verify_evidence(document, now=NOW)


def test_the_collateral_limit_is_exactly_max_field() -> None:
    quote = b64url_encode(b"not a quote")
    at_limit = {"format": "dcap", "quote": quote, "collateral": "x" * MAX_FIELD}
    with pytest.raises(AttestationError, match="not a DCAP quote"):  # parsed, then refused
        verify_evidence(at_limit, now=NOW)
    over = {**at_limit, "collateral": "x" * (MAX_FIELD + 1)}
    with pytest.raises(AttestationError, match=r"malformed evidence: .*at most 1048576"):
        verify_evidence(over, now=NOW)
