"""Attestation: verify evidence from confidential hardware into one claims model,
then appraise it against a policy.

Verifiers are pure: evidence, certificates and the clock are inputs; vendor
roots ship with the package (``anchors/``). Every failure is an
:class:`cleanroom.errors.AttestationError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom.attestation.azure import bind_azure_tdx_hcl, verify_azure_hcl
from cleanroom.attestation.claims import Claims
from cleanroom.attestation.dcap import verify_dcap
from cleanroom.attestation.evidence import binding, check_binding, verify_evidence
from cleanroom.attestation.snp import verify_snp
from cleanroom.attestation.terms import AttestationPolicy, check_terms
from cleanroom.attestation.virtual import VirtualPlatform, measure, verify_virtual
from cleanroom.errors import AttestationError

__all__ = [
    "AttestationError",
    "AttestationPolicy",
    "Claims",
    "Policy",
    "UnsafeAllowDebug",
    "VirtualPlatform",
    "appraise",
    "bind_azure_tdx_hcl",
    "binding",
    "check_binding",
    "check_terms",
    "measure",
    "verify_azure_hcl",
    "verify_dcap",
    "verify_evidence",
    "verify_snp",
    "verify_virtual",
]


@dataclass(frozen=True)
class Policy:
    """What a room accepts: the approved measurements per platform.

    An empty policy accepts nothing. Debug-mode evidence is always refused,
    unless the policy is :class:`UnsafeAllowDebug` (for tests on developer
    machines, never in a room's contract). Evidence of the insecure virtual
    platform is refused unless ``allow_insecure_virtual`` is set, which a room
    does only by an explicit, approved contract change. ``terms`` adds the
    room's other approved terms (host data, TCB, VMPL, RTMRs...), see
    :class:`AttestationPolicy`.
    """

    measurements: frozenset[tuple[str, str]]
    tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allow_insecure_virtual: bool = False
    terms: AttestationPolicy | None = None

    def __post_init__(self) -> None:
        if not self.measurements:
            raise AttestationError(
                "an empty attestation policy would accept nothing; name measurements"
            )


@dataclass(frozen=True)
class UnsafeAllowDebug(Policy):
    """A policy that also accepts debug-mode evidence. Never for real data."""


def appraise(claims: Claims, policy: Policy) -> Claims:
    """Raise unless ``claims`` meet ``policy``: (0) hardware assurance, unless the
    policy allows the insecure virtual platform; (1) not debug, unless the
    policy is unsafe; (2) a graded TCB has an accepted status; (3) the
    measurement is approved for that platform; (4) the policy's other terms
    hold. Refusals name the values in full: a user needs the whole hash."""
    if claims.assurance != "hardware" and not policy.allow_insecure_virtual:  # (0)
        raise AttestationError(
            "the evidence comes from the insecure virtual platform (no hardware protection), "
            "which this room's contract does not allow"
        )
    if claims.debug and not isinstance(policy, UnsafeAllowDebug):  # (1)
        raise AttestationError(f"the {claims.platform} evidence comes from a DEBUG guest")
    if claims.tcb_status and claims.tcb_status not in policy.tcb_statuses:  # (2)
        raise AttestationError(f"the platform's TCB is {claims.tcb_status}, not accepted")
    if (claims.platform, claims.measurement) not in policy.measurements:  # (3)
        raise AttestationError(
            f"measurement {claims.measurement} is not approved for {claims.platform}"
        )
    if policy.terms is not None:  # (4)
        check_terms(claims, policy.terms)
    return claims
