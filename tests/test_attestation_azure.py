"""Azure confidential VMs (HCL report + vTPM) on real evidence: the SNP report
inside the HCL report verifies against its VCEK and its report data binds the
runtime claims; for TDX the HCL's TDREPORT must be the quote's and bind the claims.
Inconsistent sizes, oversized lengths, trailing data, unknown hashes and swapped
report types are refused."""

from __future__ import annotations

import base64
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


def _azure_snp(raw: bytes, vcek: bytes) -> dict[str, str]:
    from cleanroom.crypto.encoding import b64url_encode  # noqa: PLC0415

    return {"format": "azure-snp-hcl", "hcl_report": b64url_encode(raw), "vek": b64url_encode(vcek)}


@pytest.mark.parametrize("name", HCL)
def test_azure_evidence_releases_keys_through_its_user_data(name: str) -> None:
    """Key release takes Azure CVM evidence: the SNP report verifies, binds the
    runtime claims, and the claims' user data is what must bind nonce, key and job."""
    from cleanroom.attestation import binding, check_binding, verify_evidence  # noqa: PLC0415

    raw, vcek = files(name)
    claims = verify_evidence(_azure_snp(raw, vcek), now=NOW)
    user = json.loads(parse_hcl(raw).runtime_claims)["user-data"]
    assert claims.report_data == bytes.fromhex(user)
    assert len(claims.report_data) == 64
    assert claims.platform == "sev-snp"
    # the vectors' user data is what their guests set: it binds no job of ours
    with pytest.raises(AttestationError, match="does not bind this nonce"):
        check_binding(claims, nonce="n" * 43, tee_pubkey="k" * 64, job="j" * 64)
    assert claims.report_data != binding(nonce="n" * 43, tee_pubkey="k" * 64, job="j" * 64)


def test_azure_user_data_edited_in_the_claims_is_refused() -> None:
    """The guest's user data sits in the runtime claims; editing it breaks the hash
    the hardware report binds."""
    from cleanroom.attestation import verify_evidence  # noqa: PLC0415

    raw, vcek = files("trustee-azure-cvm-milan-hcl")
    claims = parse_hcl(raw).runtime_claims
    at = raw.index(claims)
    edited = claims.replace(b'"user-data":"0', b'"user-data":"1', 1)
    assert edited != claims
    forged = raw[:at] + edited + raw[at + len(claims) :]
    with pytest.raises(AttestationError, match="does not bind the HCL runtime claims"):
        verify_evidence(_azure_snp(forged, vcek), now=NOW)


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (b"", "carry no user data"),
        (b"[]", "not 64 bytes"),
        (b'{"keys": []}', "carry no user data"),
        (b'{"user-data": "zz"}', "carry no user data"),
        (b'{"user-data": 5}', "not 64 bytes"),
        (b'{"user-data": "00"}', "not 64 bytes"),
        (b'{"user-data": "' + b"00" * 65 + b'"}', "not 64 bytes"),
    ],
)
def test_runtime_claims_without_64_bytes_of_user_data_bind_nothing(
    runtime: bytes, message: str
) -> None:
    from dataclasses import replace  # noqa: PLC0415

    from cleanroom.attestation.evidence import azure_user_data  # noqa: PLC0415

    raw, vcek = files("trustee-azure-cvm-milan-hcl")
    claims = verify_azure_hcl(raw, vcek, now=NOW)
    with pytest.raises(AttestationError, match=message):
        azure_user_data(replace(claims, runtime_claims=runtime))
    good = b'{"user-data": "' + b"ab" * 64 + b'"}'
    assert azure_user_data(replace(claims, runtime_claims=good)).report_data == b"\xab" * 64


def test_azure_tdx_evidence_needs_its_quote_to_verify() -> None:
    """The TDX form verifies the quote first (with its collateral) and only then
    binds the HCL report; no collateral ships with the vector, so it is refused."""
    from cleanroom.attestation import verify_evidence  # noqa: PLC0415
    from cleanroom.crypto.encoding import b64url_encode  # noqa: PLC0415

    document = {
        "format": "azure-tdx-hcl",
        "hcl_report": b64url_encode(TDX_HCL.read_bytes()),
        "quote": b64url_encode(TDX_QUOTE.read_bytes()),
        "collateral": "{}",
    }
    with pytest.raises(AttestationError, match="the DCAP quote does not verify"):
        verify_evidence(document, now=NOW)
    with pytest.raises(AttestationError, match="malformed evidence"):
        verify_evidence({**document, "quote": 5}, now=NOW)


@pytest.mark.parametrize("name", ["trustee-vcek-milan", "routex-turin-v5"])
def test_the_certificate_json_of_azure_container_instances_is_accepted(name: str) -> None:
    """ACI (and Azure's THIM) give the VCEK and its chain as JSON with PEM inside:
    the same report verifies with the same claims from that form as from PEM/DER."""
    from cleanroom.attestation import verify_evidence  # noqa: PLC0415
    from cleanroom.crypto.encoding import b64url_encode  # noqa: PLC0415

    report, vek = files(name)
    if b"-----BEGIN" in vek:
        end = vek.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
        leaf, chain = vek[:end], vek[end:].strip()
    else:  # PEM is base64 of the DER between its boundaries (RFC 7468)
        body = base64.encodebytes(vek)
        leaf = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
        chain = b""
    thim = json.dumps(
        {"vcekCert": leaf.decode(), "certificateChain": chain.decode(), "tcbm": "x"}
    ).encode()
    plain = {"format": "sev-snp", "report": b64url_encode(report), "vek": b64url_encode(vek)}
    claims = verify_evidence(plain, now=NOW)
    assert verify_evidence({**plain, "vek": b64url_encode(thim)}, now=NOW) == claims
    for broken, message in (
        (b"{not json", "not Azure's"),
        (b'{"certificateChain": ""}', "not Azure's"),
        (b'{"vcekCert": 5}', "not PEM text"),
    ):
        with pytest.raises(AttestationError, match=message):
            verify_evidence({**plain, "vek": b64url_encode(broken)}, now=NOW)
