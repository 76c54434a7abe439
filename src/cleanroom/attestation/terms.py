"""Policy terms a room approves besides the measurement (pure).

:class:`AttestationPolicy` names the terms; :func:`check_terms` raises an
:class:`AttestationError` for the first term the verified :class:`Claims` do
not meet, naming the term, the value expected and the value found, in full,
and returns the claims otherwise. It never returns a bool.

Invariants:

- a policy names at least one term (an empty one would check nothing: skip
  it instead of passing it);
- a term belongs to a platform (``vmpl`` and ``min_tcb``: SEV-SNP;
  ``mrconfigid`` and ``rtmrs``: TDX). Evidence of another platform fails the
  term rather than skipping it, so a policy written for SNP never lets a TDX
  guest through unchecked;
- ``host_data`` is the host-set value that binds the job manifest on every
  platform (SEV-SNP HOST_DATA, TDX MRCONFIGID, the virtual platform's field);
- ``min_tcb`` requires every named component, so a policy that names Turin's
  ``fmc`` refuses Milan and Genoa evidence, which have none;
- hashes are compared as full lowercase hex.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cleanroom.attestation.claims import Claims
from cleanroom.errors import AttestationError

SNP_TCB_COMPONENTS = frozenset({"bootloader", "tee", "snp", "microcode", "fmc"})
TDX_RTMRS = range(4)
_HEX = frozenset(string.hexdigits)


def _hex(value: str, term: str, size: int | None = None) -> str:
    if not isinstance(value, str) or not value or set(value) - _HEX or len(value) % 2:
        raise ValueError(f"{term} is a hex string, not {value!r}")
    if size is not None and len(value) != 2 * size:
        raise ValueError(f"{term} is {size} bytes ({2 * size} hex digits), not {len(value)} digits")
    return value.lower()


def _int(value: int, term: str, lowest: int, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise ValueError(f"{term} is an integer from {lowest} to {highest}, not {value!r}")
    return value


@dataclass(frozen=True)
class AttestationPolicy:
    """Terms beyond the measurement; ``None`` means the term is not part of the policy.

    ``host_data``: exact host data (hex); ``min_tcb``: the least SVN of each named
    SEV-SNP TCB component (bootloader, tee, snp, microcode, fmc); ``vmpl``: the
    exact SEV-SNP VMPL; ``min_report_version``: the least report (or quote)
    version; ``mrconfigid``: exact TDX MRCONFIGID (48 bytes, hex); ``rtmrs``:
    exact TDX RTMR values by index (0-3), the others unchecked.
    """

    host_data: str | None = None
    min_tcb: Mapping[str, int] | None = None
    vmpl: int | None = None
    min_report_version: int | None = None
    mrconfigid: str | None = None
    rtmrs: Mapping[int, str] | None = None

    def __post_init__(self) -> None:
        terms = (
            self.host_data,
            self.min_tcb,
            self.vmpl,
            self.min_report_version,
            self.mrconfigid,
            self.rtmrs,
        )
        if all(term is None for term in terms):
            raise ValueError("an attestation policy with no terms would check nothing; name one")
        if self.host_data is not None:
            object.__setattr__(self, "host_data", _hex(self.host_data, "host_data"))
        if self.min_tcb is not None:
            if not self.min_tcb:
                raise ValueError("min_tcb names no component; leave it None instead")
            unknown = set(self.min_tcb) - SNP_TCB_COMPONENTS
            if unknown:
                raise ValueError(
                    f"min_tcb names unknown components {sorted(unknown)}; "
                    f"known: {sorted(SNP_TCB_COMPONENTS)}"
                )
            checked = {k: _int(v, f"min_tcb[{k!r}]", 0, 255) for k, v in self.min_tcb.items()}
            object.__setattr__(self, "min_tcb", MappingProxyType(checked))
        if self.vmpl is not None:
            _int(self.vmpl, "vmpl", 0, 3)
        if self.min_report_version is not None:
            _int(self.min_report_version, "min_report_version", 1, 2**32 - 1)
        if self.mrconfigid is not None:
            object.__setattr__(self, "mrconfigid", _hex(self.mrconfigid, "mrconfigid", 48))
        if self.rtmrs is not None:
            if not self.rtmrs:
                raise ValueError("rtmrs names no register; leave it None instead")
            rtmrs = {}
            for index, value in self.rtmrs.items():
                if isinstance(index, bool) or index not in TDX_RTMRS:
                    raise ValueError(f"rtmrs are indexed 0 to 3, not {index!r}")
                rtmrs[index] = _hex(value, f"rtmrs[{index}]", 48)
            object.__setattr__(self, "rtmrs", MappingProxyType(rtmrs))


def _only_on(claims: Claims, platform: str, term: str, expected: object) -> None:
    if claims.platform != platform:
        raise AttestationError(
            f"the policy requires {term} {expected}, a {platform} term, but the evidence "
            f"is {claims.platform}"
        )


def _check_snp_terms(claims: Claims, policy: AttestationPolicy) -> None:
    # (3) SEV-SNP: the guest runs at the approved privilege level
    if policy.vmpl is not None:
        _only_on(claims, "sev-snp", "vmpl", policy.vmpl)
        if claims.vmpl != policy.vmpl:
            raise AttestationError(f"vmpl: expected {policy.vmpl}, found {claims.vmpl}")
    # (4) SEV-SNP: firmware and microcode are not older than the room accepts
    if policy.min_tcb is not None:
        _only_on(claims, "sev-snp", "min_tcb", dict(policy.min_tcb))
        for name, least in sorted(policy.min_tcb.items()):
            found = claims.tcb.get(name)
            if not isinstance(found, int):
                raise AttestationError(
                    f"tcb {name}: expected at least {least}, found none (the "
                    f"{claims.generation or claims.platform} evidence reports "
                    f"{', '.join(sorted(claims.tcb)) or 'no components'})"
                )
            if found < least:
                raise AttestationError(f"tcb {name}: expected at least {least}, found {found}")


def _check_tdx_terms(claims: Claims, policy: AttestationPolicy) -> None:
    # (5) TDX: the host-set configuration id and the runtime measurements
    if policy.mrconfigid is not None:
        _only_on(claims, "tdx", "mrconfigid", policy.mrconfigid)
        if claims.mr_config_id.lower() != policy.mrconfigid:
            raise AttestationError(
                f"mrconfigid: expected {policy.mrconfigid}, found {claims.mr_config_id or '(none)'}"
            )
    if policy.rtmrs is not None:
        _only_on(claims, "tdx", "rtmrs", dict(policy.rtmrs))
        for index, expected in sorted(policy.rtmrs.items()):
            found_rtmr = claims.rtmrs[index].lower() if index < len(claims.rtmrs) else "(none)"
            if found_rtmr != expected:
                raise AttestationError(f"rtmr{index}: expected {expected}, found {found_rtmr}")


def check_terms(claims: Claims, policy: AttestationPolicy) -> Claims:
    """Raise unless ``claims`` meet every term of ``policy``; return them otherwise."""
    # (1) the manifest the host bound at launch is the approved one
    if policy.host_data is not None and claims.host_data.lower() != policy.host_data:
        raise AttestationError(
            f"host_data: expected {policy.host_data}, found {claims.host_data or '(none)'}"
        )
    # (2) the report format is recent enough to carry what the room relies on
    if policy.min_report_version is not None and claims.version < policy.min_report_version:
        raise AttestationError(
            f"report version: expected at least {policy.min_report_version}, found {claims.version}"
        )
    _check_snp_terms(claims, policy)  # (3) and (4)
    _check_tdx_terms(claims, policy)  # (5)
    return claims
