"""Azure confidential VMs (HCL report + vTPM) on real evidence: the SNP report
inside the HCL report verifies against its VCEK and its report data binds the
runtime claims; for TDX the HCL's TDREPORT must be the quote's and bind the claims.
Inconsistent sizes, oversized lengths, trailing data, unknown hashes and swapped
report types are refused."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from cleanroom.attestation import bind_azure_tdx_hcl, verify_azure_hcl
from cleanroom.attestation.azure import parse_hcl
from cleanroom.attestation.dcap import claims_of, parse_quote
from cleanroom.errors import AttestationError
from tests.test_attestation_snp import HCL, MANIFEST, NOW, VECTORS, files

TDX_HCL = VECTORS / "trustee/deps_verifier_test_data_az-tdx-vtpm_hcl-report.bin"
TDX_QUOTE = VECTORS / MANIFEST["trustee-azure-tdx-cvm"]["files"][0]
REQUEST = 32 + 1184  # where the IGVM request data starts


def patched(raw: bytes, offset: int, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into("<I", out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("name", HCL)
def test_the_runtime_claims_hash_is_bound(name: str) -> None:
    raw, vcek = files(name)
    hcl = parse_hcl(raw)
    claims = verify_azure_hcl(raw, vcek, now=NOW)
    assert claims.runtime_claims == hcl.runtime_claims
    assert hashlib.sha256(hcl.runtime_claims).hexdigest() == MANIFEST[name]["report_data"][:64]
    assert json.loads(hcl.runtime_claims)["keys"][0]["kid"] == "HCLAkPub"


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (8, 5000, "says 5000 bytes but its parts add up to"),  # header report size
        (REQUEST, 5000, "request data says 5000 bytes"),  # request data size
        (REQUEST + 16, 0xFFFFFFFF, "request data says"),  # claims size, oversized
        (REQUEST + 12, 9, "unknown hash type 9"),
        (REQUEST + 8, 4, "report type 4, not an SEV-SNP report"),
    ],
)
def test_inconsistent_hcl_headers_are_refused(offset: int, value: int, message: str) -> None:
    raw, vcek = files("trustee-azure-cvm-milan-hcl")
    with pytest.raises(AttestationError, match=message):
        verify_azure_hcl(patched(raw, offset, value), vcek, now=NOW)


def test_a_declared_hash_the_report_does_not_bind_is_refused() -> None:
    raw, vcek = files("trustee-azure-cvm-milan-hcl")
    with pytest.raises(AttestationError, match="sha384 of the claims"):
        verify_azure_hcl(patched(raw, REQUEST + 12, 2), vcek, now=NOW)


def test_truncated_trailing_and_oversized_hcl_reports_are_refused() -> None:
    raw, vcek = files("trustee-azure-cvm-milan-hcl")
    (size,) = struct.unpack_from("<I", raw, 8)
    with pytest.raises(AttestationError, match="truncated"):
        verify_azure_hcl(raw[: size - 1], vcek, now=NOW)
    assert verify_azure_hcl(raw[:size], vcek, now=NOW).runtime_claims  # padding is optional
    with pytest.raises(AttestationError, match="data after its declared end"):
        verify_azure_hcl(raw[:size] + b"\x01", vcek, now=NOW)
    with pytest.raises(AttestationError, match="larger than accepted"):
        verify_azure_hcl(raw + bytes(70_000), vcek, now=NOW)
    for short in (b"", raw[:4], raw[:REQUEST]):
        with pytest.raises(AttestationError, match="not an Azure HCL report"):
            verify_azure_hcl(short, vcek, now=NOW)


def test_azure_tdx_runtime_claims_are_bound_to_the_td_quote() -> None:
    raw = TDX_HCL.read_bytes()
    claims = claims_of(parse_quote(TDX_QUOTE.read_bytes()))  # quote body; no collateral shipped
    bound = bind_azure_tdx_hcl(raw, claims)
    assert bound.runtime_claims == parse_hcl(raw).runtime_claims
    assert bound.measurement == MANIFEST["trustee-azure-tdx-cvm"]["mr_td"]
    claims_start = REQUEST + 20
    tampered = bytearray(raw)
    tampered[claims_start + 5] ^= 0x01
    with pytest.raises(AttestationError, match="does not bind the HCL runtime claims"):
        bind_azure_tdx_hcl(bytes(tampered), claims)
    # a TDREPORT that is not the quote's: MRTD (TDINFO at 512, MRTD at +16) and RTMR3
    for offset, name in ((32 + 528, "MRTD"), (32 + 720 + 48 * 3, "RTMR3"), (32 + 128, "report")):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        with pytest.raises(AttestationError, match=f"TDREPORT is not the quote's: {name}"):
            bind_azure_tdx_hcl(bytes(tampered), claims)
    snp_raw, _ = files("trustee-azure-cvm-milan-hcl")
    with pytest.raises(AttestationError, match="must be TDX"):
        bind_azure_tdx_hcl(snp_raw, claims)
