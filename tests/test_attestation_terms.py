"""Policy terms beyond the measurement, on real evidence: SNP HOST_DATA, report
version, VMPL and per-component TCB (with Turin's FMC); TDX MRCONFIGID and RTMRs.
Each term is accepted when it matches and refused when it does not, with a message
naming the term, the expected and the found value in full."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from cleanroom.attestation import (
    AttestationPolicy,
    Claims,
    Policy,
    appraise,
    check_terms,
)
from cleanroom.attestation.dcap import claims_of, parse_quote
from cleanroom.errors import AttestationError
from tests.test_attestation_snp import MANIFEST, VECTORS, verify

TURIN = "routex-turin-v5"
MILAN = "trustee-vcek-milan"
VLEK = "trustee-vlek-milan"
TDX = "trustee-tdx-v4-b"  # the vector with a non-zero MRCONFIGID


def tdx_claims(name: str = TDX) -> Claims:
    # the quote body only: signature and collateral are test_attestation_dcap's concern
    return claims_of(parse_quote((VECTORS / MANIFEST[name]["files"][0]).read_bytes()))


def refused(claims: Claims, message: str, **terms: Any) -> None:
    with pytest.raises(AttestationError, match=re.escape(message)):
        check_terms(claims, AttestationPolicy(**terms))


def accepted(claims: Claims, **terms: Any) -> None:
    assert check_terms(claims, AttestationPolicy(**terms)) is claims


def test_host_data() -> None:
    claims = verify(TURIN)
    assert claims.host_data == MANIFEST[TURIN]["host_data"]
    accepted(claims, host_data=MANIFEST[TURIN]["host_data"])
    accepted(claims, host_data=MANIFEST[TURIN]["host_data"].upper())
    other = "ab" * 32
    refused(claims, f"host_data: expected {other}, found {'00' * 32}", host_data=other)


def test_report_version() -> None:
    for name, version in ((TURIN, 5), (VLEK, 3), (MILAN, 2)):
        claims = verify(name)
        accepted(claims, min_report_version=version)
        refused(
            claims,
            f"report version: expected at least {version + 1}, found {version}",
            min_report_version=version + 1,
        )


def test_vmpl() -> None:
    accepted(verify(TURIN), vmpl=0)
    refused(verify(TURIN), "vmpl: expected 1, found 0", vmpl=1)
    accepted(verify(VLEK), vmpl=1)
    refused(verify(VLEK), "vmpl: expected 0, found 1", vmpl=0)
    refused(
        tdx_claims(), "the policy requires vmpl 0, a sev-snp term, but the evidence is tdx", vmpl=0
    )


@pytest.mark.parametrize(
    ("name", "component"),
    [(TURIN, c) for c in MANIFEST[TURIN]["reported_tcb_fields"]]
    + [(MILAN, c) for c in ("bootloader", "tee", "snp", "microcode")],
)
def test_min_tcb_per_component(name: str, component: str) -> None:
    claims = verify(name)
    found = claims.tcb[component]
    assert isinstance(found, int)
    accepted(claims, min_tcb={component: found})
    accepted(claims, min_tcb={component: 0})
    if found < 255:
        refused(
            claims,
            f"tcb {component}: expected at least {found + 1}, found {found}",
            min_tcb={component: found + 1},
        )


def test_min_tcb_on_published_turin_values_and_the_whole_set() -> None:
    claims = verify(TURIN)
    published = MANIFEST[TURIN][
        "reported_tcb_fields"
    ]  # fmc 0, bootloader 1, tee 0, snp 2, ucode 71
    accepted(claims, min_tcb=published)
    refused(
        claims,
        "tcb microcode: expected at least 72, found 71",
        min_tcb={**published, "microcode": 72},
    )
    refused(claims, "tcb snp: expected at least 3, found 2", min_tcb={"snp": 3, "tee": 0})


def test_fmc_is_a_turin_component_milan_lacks() -> None:
    refused(
        verify(MILAN),
        "tcb fmc: expected at least 0, found none (the milan evidence "
        "reports bootloader, microcode, snp, tee)",
        min_tcb={"fmc": 0},
    )
    refused(tdx_claims(), "min_tcb", min_tcb={"snp": 0})


def test_mrconfigid() -> None:
    claims = tdx_claims()
    assert claims.mr_config_id.startswith(MANIFEST[TDX]["mr_config_id"].rstrip("."))
    assert len(claims.mr_config_id) == 96
    accepted(claims, mrconfigid=claims.mr_config_id)
    other = "11" * 48
    refused(claims, f"mrconfigid: expected {other}, found {claims.mr_config_id}", mrconfigid=other)
    refused(verify(TURIN), "mrconfigid", mrconfigid=other)


def test_rtmrs() -> None:
    claims = tdx_claims()
    assert claims.rtmrs[0].startswith(MANIFEST[TDX]["rtmr0"].rstrip("."))
    assert len(claims.rtmrs) == 4
    accepted(claims, rtmrs=dict(enumerate(claims.rtmrs)))
    accepted(claims, rtmrs={2: claims.rtmrs[2]})
    other = "22" * 48
    for index in range(4):
        refused(
            claims,
            f"rtmr{index}: expected {other}, found {claims.rtmrs[index]}",
            rtmrs={index: other},
        )
    refused(verify(TURIN), "rtmrs", rtmrs={0: other})


def test_every_term_together_on_real_tdx_and_snp_evidence() -> None:
    tdx = tdx_claims()
    accepted(
        tdx,
        host_data=tdx.host_data,
        min_report_version=4,
        mrconfigid=tdx.mr_config_id,
        rtmrs=dict(enumerate(tdx.rtmrs)),
    )
    turin = verify(TURIN)
    accepted(turin, host_data="00" * 32, min_report_version=5, vmpl=0, min_tcb=dict(turin.tcb))


@pytest.mark.parametrize(
    "terms",
    [
        {},
        {"min_tcb": {}},
        {"min_tcb": {"pmu": 1}},
        {"min_tcb": {"snp": -1}},
        {"min_tcb": {"snp": 256}},
        {"min_tcb": {"snp": True}},
        {"vmpl": 4},
        {"min_report_version": 0},
        {"host_data": "xyz"},
        {"host_data": ""},
        {"mrconfigid": "00" * 32},
        {"rtmrs": {}},
        {"rtmrs": {4: "00" * 48}},
        {"rtmrs": {0: "00"}},
    ],
)
def test_policies_that_would_check_nothing_or_nonsense_are_programmer_errors(
    terms: dict[str, Any],
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        AttestationPolicy(**terms)


def test_terms_are_immutable() -> None:
    policy = AttestationPolicy(min_tcb={"snp": 1}, rtmrs={0: "00" * 48})
    with pytest.raises(TypeError):
        policy.min_tcb["snp"] = 0  # type: ignore[index]


def test_appraise_checks_the_terms_after_the_measurement() -> None:
    claims = verify(TURIN)
    measurements = frozenset({("sev-snp", claims.measurement)})
    assert appraise(claims, Policy(measurements, terms=AttestationPolicy(vmpl=0))) is claims
    with pytest.raises(AttestationError, match="tcb snp: expected at least 9, found 2"):
        appraise(claims, Policy(measurements, terms=AttestationPolicy(min_tcb={"snp": 9})))


def test_refusals_keep_the_full_measurement() -> None:
    """Regression: 'measurement insecure-virtual... is not approved' cut off the hash."""
    claims = verify(TURIN)
    other = Policy(frozenset({("sev-snp", "00" * 48)}))
    with pytest.raises(AttestationError) as refusal:
        appraise(claims, other)
    assert MANIFEST[TURIN]["measurement"] in str(refusal.value)
    virtual = replace(
        claims,
        platform="insecure-virtual",
        assurance="insecure-virtual",
        measurement="insecure-virtual:" + "ab" * 48,
    )
    lenient = Policy(frozenset({("insecure-virtual", "x")}), allow_insecure_virtual=True)
    with pytest.raises(AttestationError) as refusal:
        appraise(virtual, lenient)
    assert f"measurement insecure-virtual:{'ab' * 48} is not approved" in str(refusal.value)
