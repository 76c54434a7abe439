"""configfs-tsm evidence, against a fake configfs tree fed with real SEV-SNP report bytes.

The fake behaves as the kernel does: ``inblob`` and ``outblob`` are FIFOs served
by a thread that reads the report data, bumps ``generation`` and then returns
the report, so the provider's writes, reads and race check run for real.
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cleanroom.attestation import verify_evidence
from cleanroom.attestation.tsm import VCEK_GUID, TsmProvider, certificate_from_table
from cleanroom.errors import AttestationError
from tests.test_attestation_snp import MANIFEST, NOW, VECTORS, check_published

REPORT = VECTORS / "trustee" / "deps_verifier_test_data_snp_test-report.bin"
VCEK = VECTORS / "trustee" / "deps_verifier_test_data_snp_test-vcek.der"


def table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    header = len(entries) + 1
    offset = header * 24
    rows, blobs = b"", b""
    for guid, blob in entries:
        rows += struct.pack("<16sII", guid.bytes_le, offset + len(blobs), len(blob))
        blobs += blob
    return rows + bytes(24) + blobs


class FakeConfigfs:
    def __init__(self, root: Path, provider: str, report: bytes, aux: bytes, bump: int = 1) -> None:
        self.entry = root / "cleanroom-test"
        self.entry.mkdir(parents=True)
        (self.entry / "generation").write_text("0\n")
        (self.entry / "provider").write_text(provider + "\n")
        (self.entry / "auxblob").write_bytes(aux)
        os.mkfifo(self.entry / "inblob")
        os.mkfifo(self.entry / "outblob")
        self.received = b""
        self._thread = threading.Thread(target=self._serve, args=(report, bump), daemon=True)
        self._thread.start()

    def _serve(self, report: bytes, bump: int) -> None:
        with (self.entry / "inblob").open("rb") as inblob:
            self.received = inblob.read()
        (self.entry / "generation").write_text(f"{bump}\n")
        with (self.entry / "outblob").open("wb") as outblob:
            outblob.write(report)


@pytest.fixture
def snp(tmp_path: Path) -> FakeConfigfs:
    return FakeConfigfs(
        tmp_path, "sev_guest", REPORT.read_bytes(), table([(VCEK_GUID, VCEK.read_bytes())])
    )


def test_a_real_report_through_configfs_verifies(snp: FakeConfigfs, tmp_path: Path) -> None:
    provider = TsmProvider(tmp_path, name="cleanroom-test", generation="milan")
    report_data = bytes(range(64))
    evidence = provider.attest(report_data)
    assert snp.received == report_data  # what the guest asked the hardware to sign
    claims = verify_evidence(evidence, now=NOW)
    check_published(claims, MANIFEST["trustee-vcek-milan"])  # the real report's own claims


def test_a_concurrent_writer_is_detected(tmp_path: Path) -> None:
    FakeConfigfs(tmp_path, "sev_guest", REPORT.read_bytes(), b"", bump=2)
    provider = TsmProvider(tmp_path, name="cleanroom-test", vek=VCEK.read_bytes())
    with pytest.raises(AttestationError, match="another writer"):
        provider.attest(bytes(64))


def test_tdx_needs_collateral_and_unknown_providers_are_refused(tmp_path: Path) -> None:
    FakeConfigfs(tmp_path / "tdx", "tdx_guest", b"quote", b"")
    with pytest.raises(AttestationError, match="collateral"):
        TsmProvider(tmp_path / "tdx", name="cleanroom-test").attest(bytes(64))
    FakeConfigfs(tmp_path / "other", "arm_cca_guest", b"token", b"")
    with pytest.raises(AttestationError, match="not supported"):
        TsmProvider(tmp_path / "other", name="cleanroom-test").attest(bytes(64))


def test_missing_configfs_and_bad_certificate_tables(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="not available"):
        TsmProvider(tmp_path / "absent").attest(bytes(64))
    with pytest.raises(ValueError, match="64 bytes"):
        TsmProvider(tmp_path).attest(b"short")
    with pytest.raises(AttestationError, match="no VCEK"):
        certificate_from_table(table([(uuid.uuid4(), b"x")]))
    broken = struct.pack("<16sII", VCEK_GUID.bytes_le, 10_000, 5) + bytes(24)
    with pytest.raises(AttestationError, match="outside"):
        certificate_from_table(broken)


def test_a_tampered_report_from_configfs_is_refused(tmp_path: Path) -> None:
    raw = bytearray(REPORT.read_bytes())
    raw[0x90] ^= 1  # inside the measurement
    FakeConfigfs(tmp_path, "sev_guest", bytes(raw), table([(VCEK_GUID, VCEK.read_bytes())]))
    evidence = TsmProvider(tmp_path, name="cleanroom-test").attest(bytes(64))
    with pytest.raises(AttestationError, match="signature"):
        verify_evidence(evidence, now=datetime(2025, 6, 1, tzinfo=UTC))
