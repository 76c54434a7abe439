"""AMD SEV-SNP verification on real hardware evidence (../shared/vectors/attestation,
sources in its README): every valid vector (Milan, Genoa, Turin) yields the published
claims with the CPU generation derived from the report; flipped bits, wrong chains,
other chips, expired certificates and debug guests are refused."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cleanroom.attestation import (
    Claims,
    Policy,
    UnsafeAllowDebug,
    appraise,
    verify_azure_hcl,
    verify_snp,
)
from cleanroom.errors import AttestationError

VECTORS = Path(
    os.environ.get("CLEANROOM_VECTORS")
    or Path(__file__).resolve().parents[2] / "shared" / "vectors" / "attestation"
)
if not (VECTORS / "manifest.json").exists():
    if os.environ.get("CLEANROOM_REQUIRE_VECTORS") == "1":
        pytest.fail(f"CLEANROOM_REQUIRE_VECTORS=1 but {VECTORS} is missing", pytrace=False)
    pytest.skip(f"attestation vectors not found at {VECTORS}", allow_module_level=True)

MANIFEST = {v["name"]: v for v in json.loads((VECTORS / "manifest.json").read_text())}
# inside every certificate's validity: the Turin VCEK starts 2025-07-17, the VLEK expired
# 2025-12-10
NOW = datetime(2025, 9, 1, tzinfo=UTC)
SNP = ["trustee-vcek-milan", "trustee-vlek-milan", "routex-turin-v5"]
HCL = [
    "trustee-azure-cvm-milan-hcl",
    "trustee-azure-cvm-genoa-hcl",
    "trustee-azure-cvm-milan-v3-hcl",
]


def files(name: str) -> tuple[bytes, bytes]:
    """(report or HCL report, VCEK/VLEK certificate) of a vector, as its source stores them."""
    first = VECTORS / MANIFEST[name]["files"][0].split(" ")[0]
    if first.suffix == ".json":  # Azure evidence documents
        document = json.loads(first.read_text())
        if "hcl_report" in document:
            return (
                base64.urlsafe_b64decode(document["hcl_report"] + "=="),
                base64.urlsafe_b64decode(document["vcek"] + "=="),
            )
        return bytes(document["report"]), document["vcek"].encode()
    vek = next(
        f for f in MANIFEST[name]["files"] if f.endswith((".der", ".pem")) and "ask_ark" not in f
    )
    return first.read_bytes(), (VECTORS / vek).read_bytes()


def verify(
    name: str, report: bytes | None = None, *, now: datetime = NOW, generation: str | None = None
) -> Claims:
    """Verify a vector as its source stores it; the generation is the verifier's to derive."""
    raw, vek = files(name)
    evidence = raw if report is None else report
    if name in HCL:
        return verify_azure_hcl(evidence, vek, generation=generation, now=now)  # type: ignore[arg-type]
    return verify_snp(evidence, vek, generation=generation, now=now)  # type: ignore[arg-type]


def check_published(claims: Claims, entry: dict[str, Any]) -> None:
    assert claims.platform == "sev-snp"
    assert claims.assurance == "hardware"
    assert claims.measurement == entry["measurement"]
    assert claims.report_data.hex() == entry["report_data"]
    assert claims.host_data == entry["host_data"]
    assert claims.signing_key == entry["signing_key"]
    assert claims.policy == int(entry["policy_hex"], 16)
    assert claims.debug is entry["policy_debug"]
    assert claims.vmpl == entry["vmpl"]
    assert claims.version == entry["version"]
    assert claims.generation == entry["generation"]
    tcb = bytes.fromhex(entry["reported_tcb"])
    if entry["generation"] == "turin":  # fmc, bootloader, tee, snp at 0-3, microcode at 7
        assert claims.tcb == entry["reported_tcb_fields"]
        assert claims.tcb == {
            "fmc": tcb[0],
            "bootloader": tcb[1],
            "tee": tcb[2],
            "snp": tcb[3],
            "microcode": tcb[7],
        }
    else:
        assert claims.tcb == {
            "bootloader": tcb[0],
            "tee": tcb[1],
            "snp": tcb[6],
            "microcode": tcb[7],
        }
    if entry["signing_key"] == "VCEK":
        assert claims.chip_id == entry["chip_id"]


@pytest.mark.parametrize("name", SNP + HCL)
def test_real_evidence_yields_the_published_claims(name: str) -> None:
    check_published(verify(name), MANIFEST[name])


def test_every_snp_vector_in_the_manifest_is_covered() -> None:
    published = {n for n, v in MANIFEST.items() if v["kind"] == "sev-snp-report"}
    assert published == set(SNP + HCL)


@pytest.mark.parametrize("name", SNP + HCL)
def test_a_generation_the_caller_expects_must_be_the_reports(name: str) -> None:
    actual = MANIFEST[name]["generation"]
    check_published(verify(name, generation=actual), MANIFEST[name])
    for other in {"milan", "genoa", "turin"} - {actual}:
        with pytest.raises(AttestationError, match=f"not the {other.title()} expected"):
            verify(name, generation=other)


@pytest.mark.parametrize("name", HCL)
def test_azure_runtime_claims_are_bound(name: str) -> None:
    claims = verify(name)
    assert claims.runtime_claims is not None
    assert json.loads(claims.runtime_claims)["keys"]
    raw, _ = files(name)
    tampered = bytearray(raw)
    tampered[32 + 1184 + 20 + 5] ^= 0x01  # inside the runtime claims, outside the signed report
    with pytest.raises(AttestationError, match="does not bind"):
        verify(name, bytes(tampered))
    with pytest.raises(AttestationError, match="not an Azure HCL report"):
        verify(name, b"XXXX" + raw[4:])


# offsets in the SNP report of fields worth flipping (all inside the signed part)
SIGNED_FIELDS = {
    "version": 0x00,
    "CPUID family": 0x188,
    "CPUID model": 0x189,
    "policy (DEBUG bit)": 0x0A,
    "vmpl": 0x30,
    "signing key kind": 0x48,
    "report_data": 0x50,
    "measurement": 0x90,
    "host_data": 0xC0,
    "reported_tcb": 0x186,
    "chip_id": 0x1A0,
    "last signed byte": 0x29F,
}


@pytest.mark.parametrize("field", sorted(SIGNED_FIELDS))
@pytest.mark.parametrize(
    "name", ["trustee-vcek-milan", "trustee-azure-cvm-genoa-hcl", "routex-turin-v5"]
)
def test_any_flipped_bit_in_the_signed_report_is_refused(name: str, field: str) -> None:
    raw, _ = files(name)
    offset = SIGNED_FIELDS[field] + (32 if name in HCL else 0)
    flipped = bytearray(raw)
    flipped[offset] ^= 0x08 if field == "policy (DEBUG bit)" else 0x01
    with pytest.raises(AttestationError):
        verify(name, bytes(flipped))


# fields a flip leaves parseable and generation-neutral: only the signature can catch it
@pytest.mark.parametrize("offset", [0x04, 0x50, 0x8F, 0x90, 0xBF, 0xC0, 0xDF, 0x140, 0x29F])
@pytest.mark.parametrize("name", ["trustee-vcek-milan", "routex-turin-v5"])
def test_flips_in_the_signed_body_fail_the_report_signature(name: str, offset: int) -> None:
    raw, _ = files(name)
    flipped = bytearray(raw)
    flipped[offset] ^= 0x01
    with pytest.raises(AttestationError, match="SNP report signature does not verify"):
        verify(name, bytes(flipped))


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 40, 0x2A0 + 72, 0x2A0 + 143])
@pytest.mark.parametrize("name", ["trustee-vcek-milan", "routex-turin-v5"])
def test_signature_bit_flips_are_refused(name: str, offset: int) -> None:
    raw, _ = files(name)
    flipped = bytearray(raw)
    flipped[offset] ^= 0x01
    with pytest.raises(AttestationError, match="signature"):
        verify(name, bytes(flipped))


@pytest.mark.parametrize("name", ["trustee-vcek-milan", "routex-turin-v5"])
def test_truncated_and_oversized_reports(name: str) -> None:
    raw, _ = files(name)
    for broken in (raw[:-1], raw + b"\x00", b"", raw[:0x2A0], raw * 2):
        with pytest.raises(AttestationError, match="1184 bytes"):
            verify(name, broken)


def test_wrong_generation_expectation_is_refused() -> None:
    with pytest.raises(AttestationError, match="Milan CPU, not the Genoa expected"):
        verify("trustee-vcek-milan", generation="genoa")


def test_a_vcek_for_another_chip_is_refused() -> None:
    raw, _ = files("trustee-vcek-milan")
    _, other_vcek = files("trustee-azure-cvm-milan-hcl")
    with pytest.raises(AttestationError, match="another chip"):
        verify_snp(raw, other_vcek, generation="milan", now=NOW)


def test_a_vlek_presented_as_vcek_is_refused() -> None:
    raw, _ = files("trustee-vcek-milan")
    _, vlek = files("trustee-vlek-milan")
    with pytest.raises(AttestationError):
        verify_snp(raw, vlek, generation="milan", now=NOW)


def test_expired_certificates_are_refused_with_an_injected_clock() -> None:
    with pytest.raises(AttestationError, match="VLEK is not valid"):
        verify("trustee-vlek-milan", now=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(AttestationError, match="VCEK is not valid"):
        verify("trustee-vcek-milan", now=datetime(2031, 1, 1, tzinfo=UTC))
    with pytest.raises(AttestationError, match="not valid"):
        verify("trustee-vcek-milan", now=datetime(2010, 1, 1, tzinfo=UTC))


def test_garbage_certificates_are_refused() -> None:
    raw, _ = files("trustee-vcek-milan")
    for junk in (
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        with pytest.raises(AttestationError):
            verify_snp(raw, junk, generation="milan", now=NOW)


def test_appraisal_refuses_debug_guests_and_unapproved_measurements() -> None:
    claims = verify("trustee-vcek-milan")
    approved = Policy(frozenset({("sev-snp", claims.measurement)}))
    assert appraise(claims, approved) is claims
    with pytest.raises(AttestationError, match="not approved"):
        appraise(claims, Policy(frozenset({("sev-snp", "00" * 48)})))
    with pytest.raises(AttestationError, match="not approved"):
        appraise(claims, Policy(frozenset({("tdx", claims.measurement)})))
    debug = Claims(**{**claims.__dict__, "debug": True})
    with pytest.raises(AttestationError, match="DEBUG"):
        appraise(debug, approved)
    assert appraise(debug, UnsafeAllowDebug(approved.measurements)) is debug
    with pytest.raises(AttestationError, match="empty attestation policy"):
        Policy(frozenset())
