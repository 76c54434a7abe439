"""One claims model for every platform's attestation evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["sev-snp", "tdx", "sgx", "insecure-virtual"]
# tcb values: SNP component SVNs (ints); DCAP: the TEE TCB SVN as hex
Assurance = Literal["hardware", "insecure-virtual"]


@dataclass(frozen=True)
class Claims:
    """What verified evidence says about the environment that produced it.

    ``measurement`` identifies the code; ``host_data`` (SNP) or the init data
    binds the job manifest; ``report_data`` binds a fresh key and nonce.
    ``assurance`` is ``hardware`` only for evidence whose chain ends in a
    vendor root shipped with cleanroom.
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
    runtime_claims: bytes | None = field(default=None, repr=False)
