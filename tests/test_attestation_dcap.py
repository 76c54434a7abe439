"""Intel TDX and SGX DCAP quotes on real evidence (../shared/vectors/attestation):
verified offline with collateral at an injected time; outdated platforms, debug
TDs and enclaves, tampered quotes and stale collateral are refused."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from cleanroom.attestation import Policy, UnsafeAllowDebug, appraise, verify_dcap
from cleanroom.attestation.dcap import claims_of, parse_quote
from cleanroom.errors import AttestationError
from tests.test_attestation_snp import MANIFEST, VECTORS

DCAP = VECTORS / "dcap-qvl"


def collateral(name: str) -> tuple[str, datetime]:
    """The collateral JSON and a time one hour after its TCB info was issued."""
    text = (DCAP / name).read_text()
    tcb_info = json.loads(json.loads(text)["tcb_info"])
    issued = datetime.fromisoformat(tcb_info["issueDate"].replace("Z", "+00:00"))
    return text, issued + timedelta(hours=1)


def test_tdx_quote_verifies_up_to_date_with_the_published_claims() -> None:
    text, now = collateral("tdx_quote_collateral.json")
    claims = verify_dcap((DCAP / "tdx_quote").read_bytes(), text, now=now)
    entry = MANIFEST["dcap-qvl-tdx-v4"]
    assert (claims.platform, claims.assurance, claims.tcb_status) == ("tdx", "hardware", "UpToDate")
    assert claims.measurement == entry["mr_td"]
    assert claims.tcb["tee_tcb_svn"] == entry["tee_tcb_svn"]
    assert claims.debug is False
    assert claims.version == 4
    policy = Policy(frozenset({("tdx", claims.measurement)}))
    assert appraise(claims, policy) is claims


def test_sgx_quote_reports_its_tcb_status_and_policy_decides() -> None:
    text, now = collateral("sgx_quote_collateral.json")
    claims = verify_dcap((DCAP / "sgx_quote").read_bytes(), text, now=now)
    entry = MANIFEST["dcap-qvl-sgx-v3"]
    assert claims.platform == "sgx"
    assert claims.measurement == entry["mr_enclave"]
    assert claims.signer == entry["mr_signer"]
    assert claims.report_data.hex() == entry["report_data"]
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert claims.advisories
    measurements = frozenset({("sgx", claims.measurement)})
    with pytest.raises(AttestationError, match="ConfigurationAndSWHardeningNeeded"):
        appraise(claims, Policy(measurements))
    lenient = Policy(measurements, frozenset({"UpToDate", "ConfigurationAndSWHardeningNeeded"}))
    assert appraise(claims, lenient) is claims


def test_an_outdated_platform_is_refused() -> None:
    text, now = collateral("tdx_quote_outdated_collateral.json")
    with pytest.raises(AttestationError, match="No matching TCB level"):
        verify_dcap((DCAP / "tdx_quote_outdated").read_bytes(), text, now=now)


@pytest.mark.parametrize(
    ("name", "platform"), [("trustee-tdx-v4-debug", "tdx"), ("trustee-occlum-sgx-v3-debug", "sgx")]
)
def test_debug_tds_and_enclaves_are_refused(name: str, platform: str) -> None:
    quote = (VECTORS / MANIFEST[name]["files"][0]).read_bytes()
    claims = claims_of(parse_quote(quote))
    assert (claims.platform, claims.debug) == (platform, True)
    approved = frozenset({(platform, claims.measurement)})
    with pytest.raises(AttestationError, match="DEBUG"):
        appraise(claims, Policy(approved))
    assert appraise(claims, UnsafeAllowDebug(approved)) is claims
    text, now = collateral("tdx_quote_collateral.json")
    with pytest.raises(AttestationError):  # and no collateral of another platform verifies it
        verify_dcap(quote, text, now=now)


# header, TD report body (MRTD, RTMRs, report data), the quote signature, the QE report
@pytest.mark.parametrize("offset", [8, 200, 400, 600, 640, 700, 1000])
def test_tampered_quotes_are_refused(offset: int) -> None:
    text, now = collateral("tdx_quote_collateral.json")
    quote = bytearray((DCAP / "tdx_quote").read_bytes())
    quote[offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_dcap(bytes(quote), text, now=now)


def test_stale_collateral_and_garbage_are_refused() -> None:
    text, now = collateral("tdx_quote_collateral.json")
    quote = (DCAP / "tdx_quote").read_bytes()
    with pytest.raises(AttestationError, match="does not verify"):
        verify_dcap(quote, text, now=now + timedelta(days=400))
    with pytest.raises(AttestationError, match="does not verify"):
        verify_dcap(quote, "{}", now=now)
    for junk in (b"", b"\x00" * 48, quote[:100]):
        with pytest.raises(AttestationError):
            verify_dcap(junk, text, now=now)
