"""SEV-SNP chains across CPU generations, attacked: the generation comes from the
report (CPUID, version 3+) or from the chain that issued its key (version 2), and a
report never verifies under another generation's VCEK or AMD chain. Certificates
flipped in their signed part or signature, truncated, oversized, or forged with
AMD's names and re-signed by an attacker are refused."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from cleanroom.attestation import verify_evidence, verify_snp
from cleanroom.attestation.azure import parse_hcl
from cleanroom.attestation.pem import load_certificates
from cleanroom.attestation.snp import SIGNED_LEN, parse_report, report_generation
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.errors import AttestationError
from tests.test_attestation_snp import MANIFEST, NOW, VECTORS, files

TURIN = "routex-turin-v5"
GENOA = "trustee-azure-cvm-genoa-hcl"
MILAN = "trustee-vcek-milan"
BUNDLES = {
    g: (VECTORS / f"trustee/deps_verifier_src_snp_{g}_ask_ark_asvk.pem").read_bytes()
    for g in ("milan", "genoa", "turin")
}


def report_and_vek(name: str) -> tuple[bytes, bytes]:
    raw, vek = files(name)
    if name == GENOA:
        return parse_hcl(raw).hardware_report, vek
    return raw, vek


def vek_der(name: str) -> bytes:
    return load_certificates(report_and_vek(name)[1])[0].public_bytes(Encoding.DER)


def test_the_generation_is_derived_from_the_reports_cpuid() -> None:
    expected = {TURIN: "turin", GENOA: "genoa", MILAN: None}  # version 2 carries no CPUID
    for name, generation in expected.items():
        assert report_generation(parse_report(report_and_vek(name)[0])) == generation
    vlek_report, _ = files("trustee-vlek-milan")
    assert report_generation(parse_report(vlek_report)) == "milan"


@pytest.mark.parametrize(
    ("report_of", "vek_of", "message"),
    [
        (TURIN, GENOA, "Turin CPU .* issued by AMD's Genoa chain"),
        (GENOA, TURIN, "Genoa CPU .* issued by AMD's Turin chain"),
        (TURIN, "trustee-azure-cvm-milan-hcl", "Turin CPU .* issued by AMD's Milan chain"),
        (GENOA, "trustee-azure-cvm-milan-hcl", "Genoa CPU .* issued by AMD's Milan chain"),
    ],
)
def test_a_report_with_another_generations_vcek_is_refused(
    report_of: str, vek_of: str, message: str
) -> None:
    report, _ = report_and_vek(report_of)
    with pytest.raises(AttestationError, match=message):
        verify_snp(report, report_and_vek(vek_of)[1], now=NOW)


@pytest.mark.parametrize(
    ("name", "bundle"), [(TURIN, "genoa"), (TURIN, "milan"), (GENOA, "turin"), (GENOA, "milan")]
)
def test_a_report_carrying_another_generations_chain_is_refused(name: str, bundle: str) -> None:
    report, _ = report_and_vek(name)
    evidence = vek_der(name)
    pem = b"# VCEK\n" + load_certificates(evidence)[0].public_bytes(Encoding.PEM)
    with pytest.raises(AttestationError, match=f"carries AMD's {bundle.title()} chain"):
        verify_snp(report, pem + BUNDLES[bundle], now=NOW)
    # the report's own generation's chain beside the VCEK is accepted
    own = {TURIN: "turin", GENOA: "genoa"}[name]
    assert verify_snp(report, pem + BUNDLES[own], now=NOW).generation == own


def test_a_version_2_report_takes_its_generation_from_the_chain_and_cannot_switch() -> None:
    report, _ = files(MILAN)
    # a Genoa VCEK over a Milan version-2 report: chain says Genoa, its hwID is another chip
    with pytest.raises(AttestationError, match="another chip"):
        verify_snp(report, report_and_vek(GENOA)[1], now=NOW)
    with pytest.raises(AttestationError, match="another chip"):
        verify_snp(report, report_and_vek(TURIN)[1], now=NOW)


def test_turin_chip_id_is_eight_bytes_and_the_rest_must_be_zero() -> None:
    raw, vek = files(TURIN)
    report = parse_report(raw)
    assert report.chip_id[8:] == bytes(56)
    certificate = load_certificates(vek)[0]
    hw_id = certificate.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
    ).value
    assert getattr(hw_id, "value", b"") == report.chip_id[:8]
    padded = bytearray(raw)
    padded[0x1A0 + 8] = 0x01  # inside the signed part, beyond the 8-byte Turin chip id
    with pytest.raises(AttestationError, match="another chip"):
        verify_snp(bytes(padded), vek, now=NOW)


@pytest.mark.parametrize("name", [MILAN, TURIN, GENOA])
def test_flips_in_the_vcek_are_refused(name: str) -> None:
    report, _ = report_and_vek(name)
    der = vek_der(name)
    chip_id = parse_report(report).chip_id[:8]
    at = der.index(chip_id)  # the hwID extension, inside the signed TBS
    for offset, message in (
        (at, "VCEK: the certificate signature does not verify"),
        (len(der) - 1, "VCEK: the certificate signature does not verify"),
    ):
        flipped = bytearray(der)
        flipped[offset] ^= 0x01
        with pytest.raises(AttestationError, match=message):
            verify_snp(report, bytes(flipped), now=NOW)


@pytest.mark.parametrize("name", [MILAN, TURIN])
def test_truncated_and_oversized_certificates_are_refused(name: str) -> None:
    report, _ = report_and_vek(name)
    der = vek_der(name)
    for broken in (der[:-1], der[: len(der) // 2], der[:4], der + b"\x00"):
        with pytest.raises(AttestationError, match="not a certificate"):
            verify_snp(report, broken, now=NOW)
    pem = load_certificates(der)[0].public_bytes(Encoding.PEM)
    with pytest.raises(AttestationError, match="more than the 65536 accepted"):
        verify_snp(report, b"#" * 70_000 + b"\n" + pem, now=NOW)
    with pytest.raises(AttestationError, match="more than the 8 accepted"):
        verify_snp(report, pem * 9, now=NOW)
    with pytest.raises(AttestationError, match="exactly one VCEK or VLEK"):
        verify_snp(report, pem * 2, now=NOW)
    with pytest.raises(AttestationError, match="exactly one VCEK or VLEK"):
        verify_snp(report, BUNDLES["milan"], now=NOW)


def _forge(name: str, generation: str, *, carry_chain: bool) -> tuple[bytes, bytes]:
    """An attacker's report: the real one with a new measurement, signed by a VCEK
    that copies AMD's names and extensions, under the attacker's own ASK and ARK."""
    report, _ = report_and_vek(name)
    real = load_certificates(vek_der(name))[0]
    ask_real = load_certificates(BUNDLES[generation])[0]
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def certificate(
        subject: x509.Name, issuer: x509.Name, key: object, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)  # type: ignore[arg-type]
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=3650))
        )
        if ca:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=True, path_length=None), critical=True
            )
        else:
            for extension in real.extensions:
                builder = builder.add_extension(extension.value, extension.critical)
        return builder.sign(root_key, hashes.SHA384(), rsa_padding=pss)

    vcek = certificate(real.subject, real.issuer, vcek_key.public_key(), ca=False)
    ask = certificate(ask_real.subject, ask_real.issuer, root_key.public_key(), ca=True)
    forged = bytearray(report)
    forged[0x90:0xC0] = bytes(range(48))  # the attacker's code
    r, s = decode_dss_signature(
        vcek_key.sign(bytes(forged[:SIGNED_LEN]), ec.ECDSA(hashes.SHA384()))
    )
    forged[0x2A0 : 0x2A0 + 144] = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    evidence = vcek.public_bytes(Encoding.PEM)
    if carry_chain:
        evidence += ask.public_bytes(Encoding.PEM)
    return bytes(forged), evidence


def test_a_report_re_signed_under_a_forged_amd_lookalike_chain_is_refused() -> None:
    report, vek = _forge(TURIN, "turin", carry_chain=False)
    with pytest.raises(AttestationError, match="VCEK: the certificate signature does not verify"):
        verify_snp(report, vek, now=NOW)
    report, vek = _forge(TURIN, "turin", carry_chain=True)
    with pytest.raises(AttestationError, match="not AMD's Turin ARK, ASK or ASVK"):
        verify_snp(report, vek, now=NOW)


def test_the_evidence_envelope_needs_no_generation_and_checks_one_given() -> None:
    raw, pem = files(TURIN)
    document = {"format": "sev-snp", "report": b64url_encode(raw), "vek": b64url_encode(pem)}
    assert verify_evidence(document, now=NOW).generation == "turin"
    assert verify_evidence({**document, "generation": "turin"}, now=NOW).tcb["fmc"] == 0
    with pytest.raises(AttestationError, match="Turin CPU, not the Genoa expected"):
        verify_evidence({**document, "generation": "genoa"}, now=NOW)


def test_the_vectors_are_the_published_bytes() -> None:
    for entry in MANIFEST.values():
        for path, digest in entry["sha256"].items():
            assert hashlib.sha256((VECTORS / path).read_bytes()).hexdigest() == digest, path
