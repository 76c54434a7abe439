"""The insecure virtual platform: attestation for development, with no hardware.

Evidence is a JWS signed by a *published* development key, so anyone can forge
it: it proves nothing about where code runs. It exists so that the whole
protocol (challenge, evidence, key release, jobs) runs on a laptop exactly as
it runs on confidential hardware. Its measurement always starts with
``insecure-virtual:`` so it can never be mistaken for a hardware measurement;
appraisal refuses it unless a room's contract allows it explicitly, and every
output of such a run is marked ``insecure-virtual``.

The measurement is a deterministic hash of the installed cleanroom code (every
file of the package) and the versions of the engines it runs on: change one
byte of the runtime and the measurement changes, so keys are refused until
the room approves the new code.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.attestation.claims import Claims
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import b64url_decode, b64url_encode, parse_json
from cleanroom.errors import AttestationError, CleanroomError
from cleanroom.wire import WireModel, parse_model

PREFIX = "insecure-virtual:"
EVIDENCE_TYP = "cleanroom-virtual-evidence+jws"
KEY_ID = "insecure-virtual-development-key"
MAX_AGE_MS = 10 * 60 * 1000
# Deliberately public: this key protects nothing.
_DEV_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"cleanroom insecure-virtual development key: public, protects nothing").digest()
)
_ENGINES = ("duckdb", "duckdb-extension-httpfs", "pyarrow", "cryptography")


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent  # cleanroom/, this file's grandparent


def measure(root: Path | None = None) -> str:
    """The measurement of the cleanroom code installed at ``root`` (default: this one)."""
    root = root or _package_root()
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not files:
        raise AttestationError(f"no runtime code to measure under {root}")
    manifest = {
        "files": [
            [p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()]
            for p in files
        ],
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "engines": {name: _version(name) for name in _ENGINES},
    }
    return PREFIX + hashlib.sha384(canonical_json(manifest)).hexdigest()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class _Payload(WireModel):
    platform: str
    measurement: str
    report_data: str
    host_data: str
    created_at: int


class VirtualPlatform:
    """An attester for development: signs evidence with the published key."""

    platform = "insecure-virtual"

    def __init__(self, measurement: str | None = None, *, now: Callable[[], int] = _now_ms) -> None:
        self.measurement = measurement or measure()
        self.now = now

    def attest(self, report_data: bytes, host_data: str = "") -> dict[str, Any]:
        if len(report_data) != 64:
            raise ValueError("report data is 64 bytes")
        payload = {
            "platform": "insecure-virtual",
            "measurement": self.measurement,
            "report_data": b64url_encode(report_data),
            "host_data": host_data,
            "created_at": self.now(),
        }
        token = jws.sign(canonical_json(payload), _DEV_KEY, kid=KEY_ID, typ=EVIDENCE_TYP)
        return {"format": "insecure-virtual", "token": token}


def verify_virtual(token: str, *, now: datetime) -> Claims:
    """Check virtual evidence: signed by the development key, fresh at ``now``.

    This proves only that the evidence is well formed; assurance is
    ``insecure-virtual`` whatever it says.
    """
    try:
        raw = jws.verify(token, _DEV_KEY.public_key(), kid=KEY_ID, typ=EVIDENCE_TYP)
        payload = parse_model(_Payload, parse_json(raw, what="virtual evidence"), what="evidence")
        report_data = b64url_decode(payload.report_data, what="report data")
    except CleanroomError as exc:
        raise AttestationError(f"the virtual evidence does not verify: {exc}") from exc
    if payload.platform != "insecure-virtual" or not payload.measurement.startswith(PREFIX):
        raise AttestationError("virtual evidence must carry an insecure-virtual measurement")
    if len(report_data) != 64:
        raise AttestationError("the virtual evidence's report data is not 64 bytes")
    if abs(now.timestamp() * 1000 - payload.created_at) > MAX_AGE_MS:
        raise AttestationError("the virtual evidence is stale or from the future")
    return Claims(
        platform="insecure-virtual",
        measurement=payload.measurement,
        report_data=report_data,
        host_data=payload.host_data,
        debug=False,
        tcb={},
        signing_key="development",
        assurance="insecure-virtual",
    )
