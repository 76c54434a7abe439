"""The insecure virtual platform: evidence, measurement, binding and appraisal."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from cleanroom.attestation import (
    Policy,
    VirtualPlatform,
    appraise,
    binding,
    check_binding,
    measure,
    verify_evidence,
    verify_virtual,
)
from cleanroom.crypto.canonical import canonical_json
from cleanroom.errors import AttestationError
from cleanroom.governance.statements import SetMeasurements

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
REPORT = bytes(range(64))


def _evidence(measurement: str | None = None, at: int = NOW_MS) -> str:
    token: str = VirtualPlatform(measurement, now=lambda: at).attest(REPORT, "job")["token"]
    return token


def test_virtual_evidence_verifies_and_says_it_is_insecure() -> None:
    claims = verify_virtual(_evidence(), now=NOW)
    assert claims.platform == "insecure-virtual"
    assert claims.assurance == "insecure-virtual"
    assert claims.measurement == measure()
    assert claims.measurement.startswith("insecure-virtual:")
    assert claims.report_data == REPORT
    assert claims.host_data == "job"


def _flip(token: str, index: int) -> str:
    char = "A" if token[index] != "A" else "B"
    return token[:index] + char + token[index + 1 :]


@pytest.mark.parametrize("where", ["header", "payload", "signature"])
def test_tampered_virtual_evidence_is_refused(where: str) -> None:
    token = _evidence()
    header = token.split(".")[0]
    index = {"header": 3, "payload": len(header) + 10, "signature": len(token) - 5}[where]
    with pytest.raises(AttestationError):
        verify_virtual(_flip(token, index), now=NOW)


def test_stale_or_future_virtual_evidence_is_refused() -> None:
    with pytest.raises(AttestationError, match="stale"):
        verify_virtual(_evidence(at=NOW_MS - 11 * 60_000), now=NOW)
    with pytest.raises(AttestationError, match="stale"):
        verify_virtual(_evidence(at=NOW_MS + 11 * 60_000), now=NOW)
    assert verify_virtual(_evidence(at=NOW_MS - 9 * 60_000), now=NOW)


def test_a_virtual_measurement_without_its_prefix_is_refused() -> None:
    token = _evidence("ab" * 48)
    with pytest.raises(AttestationError, match="insecure-virtual measurement"):
        verify_virtual(token, now=NOW)


def test_default_policy_refuses_the_virtual_platform() -> None:
    claims = verify_evidence({"format": "insecure-virtual", "token": _evidence()}, now=NOW)
    approved = frozenset({("insecure-virtual", measure())})
    with pytest.raises(AttestationError, match="insecure virtual platform"):
        appraise(claims, Policy(approved))
    assert appraise(claims, Policy(approved, allow_insecure_virtual=True)) is claims
    with pytest.raises(AttestationError, match="not approved"):
        appraise(claims, Policy(frozenset({("sev-snp", "ab" * 48)}), allow_insecure_virtual=True))


def test_the_binding_follows_the_published_known_answer() -> None:
    # ../shared/vectors/attestation/README.md: sha384 of RFC 8785 {"b":1,"a":"test","c":{"d":"e"}}
    known = hashlib.sha384(canonical_json({"b": 1, "a": "test", "c": {"d": "e"}})).hexdigest()
    assert known == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )
    value = binding(nonce="n", tee_pubkey="k", job="j")
    assert len(value) == 64
    assert value[48:] == bytes(16)
    assert (
        value[:48]
        == hashlib.sha384(canonical_json({"job": "j", "nonce": "n", "tee_pubkey": "k"})).digest()
    )
    claims = verify_virtual(VirtualPlatform(now=lambda: NOW_MS).attest(value)["token"], now=NOW)
    check_binding(claims, nonce="n", tee_pubkey="k", job="j")
    for other in ({"nonce": "m"}, {"tee_pubkey": "x"}, {"job": "i"}):
        with pytest.raises(AttestationError, match="does not bind"):
            check_binding(claims, **{"nonce": "n", "tee_pubkey": "k", "job": "j", **other})


def test_the_measurement_is_deterministic_and_changes_with_any_byte(tmp_path: Path) -> None:
    import cleanroom  # noqa: PLC0415

    copy = tmp_path / "cleanroom"
    shutil.copytree(
        Path(cleanroom.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    assert measure(copy) == measure()  # where it is installed does not matter
    runtime = copy / "enclave" / "sql.py"
    runtime.write_text(runtime.read_text() + "\n# one more line\n")
    changed = measure(copy)
    assert changed != measure()
    assert changed.startswith("insecure-virtual:")
    (copy / "new_module.py").write_text("")
    assert measure(copy) not in (changed, measure())


def test_contracts_must_approve_virtual_measurements_explicitly() -> None:
    virtual = {"platform": "insecure-virtual", "value": measure()}
    with pytest.raises(ValidationError, match="allow_insecure_virtual"):
        SetMeasurements.model_validate({"type": "set_measurements", "measurements": [virtual]})
    SetMeasurements.model_validate(
        {"type": "set_measurements", "measurements": [virtual], "allow_insecure_virtual": True}
    )
    for bad in (
        {"platform": "sev-snp", "value": measure()},  # a virtual value posing as hardware
        {"platform": "insecure-virtual", "value": "ab" * 48},  # hardware-looking virtual value
    ):
        with pytest.raises(ValidationError, match="starts with"):
            SetMeasurements.model_validate(
                {"type": "set_measurements", "measurements": [bad], "allow_insecure_virtual": True}
            )


def test_evidence_from_another_day_is_checked_at_the_injected_time() -> None:
    token = _evidence()
    assert verify_virtual(token, now=NOW + timedelta(minutes=5))
    with pytest.raises(AttestationError):
        verify_virtual(token, now=NOW + timedelta(days=1))
