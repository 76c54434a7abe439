"""One claims model for every platform's attestation evidence.

Every term a room's policy can check is here, named once: the measurement,
``host_data`` (SEV-SNP HOST_DATA; TDX MRCONFIGID), the report version, the
SEV-SNP VMPL and CPU generation, per-component TCB versions, and TDX
MRCONFIGID and RTMRs. Hashes are lowercase hex, in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["sev-snp", "tdx", "sgx", "insecure-virtual"]
# tcb values: SNP component SVNs (ints: bootloader, tee, snp, microcode, and fmc on
# Turin); DCAP: the TEE TCB SVN (TDX) or CPU SVN (SGX) as hex
Assurance = Literal["hardware", "insecure-virtual"]


@dataclass(frozen=True)
class Claims:
    """What verified evidence says about the environment that produced it.

    ``measurement`` identifies the code; ``host_data`` (SNP) or the init data
    binds the job manifest; ``report_data`` binds a fresh key and nonce.
    ``assurance`` is ``hardware`` only for evidence whose chain ends in a
    vendor root shipped with cleanroom. ``version`` is the SNP report version
    or the DCAP quote version; ``vmpl`` and ``generation`` are SEV-SNP's
    (``generation`` is milan, genoa or turin, from the report's CPUID or, for
    version 2 reports, from the chain that signed it); ``mr_config_id`` and
    ``rtmrs`` (RTMR0-3) are TDX's, empty elsewhere.
    """

    platform: Platform
    measurement: str
    report_data: bytes
    host_data: str
    debug: bool
    tcb: dict[str, int | str]
    signing_key: str
    assurance: Assurance
    chip_id: str = ""
    policy: int = 0
    vmpl: int = 0
    version: int = 0
    tcb_status: str = ""  # DCAP: UpToDate, SWHardeningNeeded, ...; empty where not graded
    advisories: tuple[str, ...] = ()
    signer: str = ""  # SGX MRSIGNER
    generation: str = ""
    mr_config_id: str = ""
    rtmrs: tuple[str, ...] = ()
    runtime_claims: bytes | None = field(default=None, repr=False)
