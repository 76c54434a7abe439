"""Evidence from real confidential guests through Linux configfs-tsm.

The kernel (6.7+) exposes ``/sys/kernel/config/tsm/report``: make a directory,
write 64 bytes of report data to its ``inblob``, read the signed report from
``outblob`` (an SEV-SNP report or a TDX quote, per ``provider``). ``generation``
counts writes to ``inblob``: if it moved by more than our own write, someone
else wrote in between and the report may bind their data, so we refuse it.
For SEV-SNP, ``auxblob`` carries the host-provided certificate table (GUID,
offset, length entries) holding the VCEK or VLEK.

DCAP quotes need collateral from Intel's PCS or a caching service, which this
provider does not fetch: pass a ``collateral`` function (quote -> JSON).
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleanroom.crypto.encoding import b64url_encode
from cleanroom.errors import AttestationError

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
_ENTRY = struct.Struct("<16sII")


def certificate_from_table(table: bytes) -> bytes:
    """The VCEK (or VLEK) DER from an SNP extended-report certificate table."""
    offset = 0
    while offset + _ENTRY.size <= len(table):
        guid, start, length = _ENTRY.unpack_from(table, offset)
        if guid == bytes(16):
            break
        if uuid.UUID(bytes_le=guid) in (VCEK_GUID, VLEK_GUID):
            if start + length > len(table) or length == 0:
                raise AttestationError("the SNP certificate table points outside itself")
            return table[start : start + length]
        offset += _ENTRY.size
    raise AttestationError("the SNP certificate table holds no VCEK or VLEK")


class TsmProvider:
    """An attester for SEV-SNP and TDX guests, through configfs-tsm."""

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        *,
        name: str | None = None,
        generation: str | None = None,
        vek: bytes | None = None,
        collateral: Callable[[bytes], str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.name = name or f"cleanroom-{os.getpid()}"
        self.generation = generation
        self.vek = vek
        self.collateral = collateral
        self.platform = "configfs-tsm"

    def _read(self, entry: Path, attribute: str) -> bytes:
        try:
            return (entry / attribute).read_bytes()
        except OSError as exc:
            raise AttestationError(f"configfs-tsm: cannot read {attribute}: {exc}") from exc

    def report(self, report_data: bytes) -> tuple[str, bytes, bytes]:
        """(provider, outblob, auxblob) for ``report_data``."""
        if len(report_data) != 64:
            raise ValueError("report data is 64 bytes")
        if not self.root.is_dir():
            raise AttestationError(f"configfs-tsm is not available at {self.root}")
        entry = self.root / self.name
        try:
            entry.mkdir(exist_ok=True)
            before = int(self._read(entry, "generation").decode().strip() or "0")
            (entry / "inblob").write_bytes(report_data)
        except (OSError, ValueError) as exc:
            raise AttestationError(f"configfs-tsm: cannot request a report: {exc}") from exc
        outblob = self._read(entry, "outblob")
        provider = self._read(entry, "provider").decode().strip()
        auxblob = self._read(entry, "auxblob") if (entry / "auxblob").exists() else b""
        after = int(self._read(entry, "generation").decode().strip() or "0")
        if after != before + 1:
            raise AttestationError("configfs-tsm: another writer used the report entry meanwhile")
        if not outblob:
            raise AttestationError("configfs-tsm returned an empty report")
        return provider, outblob, auxblob

    def attest(self, report_data: bytes, host_data: str = "") -> dict[str, Any]:
        """Evidence for :func:`cleanroom.attestation.verify_evidence` (host data is
        set by the host at launch, not here)."""
        provider, outblob, auxblob = self.report(report_data)
        if provider == "sev_guest":
            vek = self.vek or certificate_from_table(auxblob)
            evidence = {
                "format": "sev-snp",
                "report": b64url_encode(outblob),
                "vek": b64url_encode(vek),
            }
            if self.generation is not None:  # an expectation: the verifier derives it
                evidence["generation"] = self.generation
            return evidence
        if provider == "tdx_guest":
            if self.collateral is None:
                raise AttestationError("a TDX quote needs collateral: give a collateral function")
            return {
                "format": "dcap",
                "quote": b64url_encode(outblob),
                "collateral": self.collateral(outblob),
            }
        raise AttestationError(f"configfs-tsm provider {provider!r} is not supported")
