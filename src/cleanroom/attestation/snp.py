"""AMD SEV-SNP attestation reports: parsing and verification (pure).

``verify_snp(report, vek, generation=..., now=...)`` checks, in order:

(1) the report is 1184 bytes, a known version, signed with ECDSA P-384/SHA-384;
(2) the ARK (root) is the one cleanroom ships for that CPU generation and is
    validly self-signed; the ASK (for a VCEK) or ASVK (for a VLEK) is signed
    by it; the VCEK/VLEK given as evidence is signed by that ASK/ASVK, all
    with RSA-PSS SHA-384 (salt 48), all valid at ``now``;
(3) the report's signing-key field names the kind of key given (VCEK or VLEK);
(4) for a VCEK, the certificate's hwID extension equals the report's chip id;
    for both, the certificate's TCB extensions equal the report's reported TCB;
(5) the report's signature over bytes 0x000-0x29F verifies under that key.

It returns :class:`Claims`; the DEBUG policy bit is reported, and refused by
:func:`cleanroom.attestation.appraise` unless a policy explicitly allows it.
Azure confidential VMs wrap the report in an HCL report whose runtime claims
are bound by ``report_data[0:32] = SHA-256(claims)``: :func:`verify_azure_hcl`.

Certificates and the clock are inputs; nothing is fetched.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ObjectIdentifier

from cleanroom.attestation.claims import Claims
from cleanroom.errors import AttestationError

Generation = Literal["milan", "genoa", "turin"]
REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
HCL_HEADER_LEN = 32
DEBUG_BIT = 1 << 19
_OID = "1.3.6.1.4.1.3704.1."
HW_ID = ObjectIdentifier(_OID + "4")
# TCB components in reported_tcb (Milan and Genoa layout): byte offset -> SPL extension
_TCB_FIELDS = {
    "bootloader": (0, "3.1"),
    "tee": (1, "3.2"),
    "snp": (6, "3.3"),
    "microcode": (7, "3.8"),
}


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    signing_key: int  # 0 = VCEK, 1 = VLEK
    report_data: bytes
    measurement: bytes
    host_data: bytes
    reported_tcb: bytes
    chip_id: bytes
    signature: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy & DEBUG_BIT)


def parse_report(raw: bytes) -> SnpReport:
    """Parse a 1184-byte SNP attestation report (AMD SEV-SNP ABI, table 'ATTESTATION_REPORT')."""
    if len(raw) != REPORT_LEN:
        raise AttestationError(f"an SNP report is {REPORT_LEN} bytes, not {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    vmpl, signature_algo = struct.unpack_from("<II", raw, 0x30)
    (key_info,) = struct.unpack_from("<I", raw, 0x48)
    if version not in (2, 3, 4, 5):
        raise AttestationError(f"unsupported SNP report version {version}")
    if signature_algo != 1:
        raise AttestationError(f"unsupported SNP signature algorithm {signature_algo}")
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        vmpl=vmpl,
        signature_algo=signature_algo,
        signing_key=(key_info >> 2) & 0b111,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        reported_tcb=raw[0x180:0x188],
        chip_id=raw[0x1A0:0x1E0],
        signature=raw[0x2A0 : 0x2A0 + 144],
    )


def _load(data: bytes) -> list[x509.Certificate]:
    # AMD's VEK certificates carry serial number 0, which cryptography warns about
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=CryptographyDeprecationWarning)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return list(x509.load_pem_x509_certificates(data))
            return [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise AttestationError(f"not a certificate: {exc}") from exc


def _anchors(generation: Generation) -> dict[str, x509.Certificate]:
    """The shipped ARK, ASK and ASVK for one CPU generation, by role."""
    data = resources.files("cleanroom.attestation").joinpath(f"anchors/amd-{generation}.pem")
    by_role: dict[str, x509.Certificate] = {}
    for cert in _load(data.read_bytes()):
        name = cert.subject.rfc4514_string()
        role = "ark" if "CN=ARK-" in name else "asvk" if "VLEK" in name else "ask"
        by_role[role] = cert
    if set(by_role) != {"ark", "ask", "asvk"}:
        raise RuntimeError(f"the shipped AMD {generation} bundle is incomplete")
    return by_role


def _check_rsa_pss(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    key = parent.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"{what}: the issuer key is not RSA")
    try:
        key.verify(
            child.signature,
            child.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise AttestationError(f"{what}: the certificate signature does not verify") from None
    if child.issuer != parent.subject:
        raise AttestationError(f"{what}: the issuer name does not match")


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{what} is not valid at {now:%Y-%m-%d %H:%M} (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )


def _extension(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(ObjectIdentifier(_OID + oid)).value
    except x509.ExtensionNotFound:
        return None
    return bytes(getattr(value, "value", b""))


def _der_integer(encoded: bytes) -> int:
    if len(encoded) < 3 or encoded[0] != 0x02 or encoded[1] != len(encoded) - 2:
        raise AttestationError("a TCB extension is not a DER INTEGER")
    return int.from_bytes(encoded[2:], "big")


def _tcb(reported: bytes) -> dict[str, int | str]:
    return {name: reported[offset] for name, (offset, _) in _TCB_FIELDS.items()}


def verify_snp(report_bytes: bytes, vek: bytes, *, generation: Generation, now: datetime) -> Claims:
    """Verify an SNP report against its VCEK/VLEK (DER or PEM); see the module notes."""
    report = parse_report(report_bytes)  # (1)
    anchors = _anchors(generation)  # (2)
    # the evidence may carry the AMD chain after the VCEK/VLEK; only the VEK is taken from it
    certificates = [
        c
        for c in _load(vek)
        if "CN=ARK-" not in c.subject.rfc4514_string()
        and c.subject != anchors["ask"].subject
        and c.subject != anchors["asvk"].subject
    ]
    if len(certificates) != 1:
        raise AttestationError("give exactly one VCEK or VLEK certificate")
    vek_cert = certificates[0]
    ark = anchors["ark"]
    _check_rsa_pss(ark, ark, "the AMD root (ARK)")
    kind = {0: "VCEK", 1: "VLEK"}.get(report.signing_key)
    if kind is None:  # (3)
        raise AttestationError(f"the report names an unknown signing key kind {report.signing_key}")
    intermediate = anchors["ask"] if kind == "VCEK" else anchors["asvk"]
    _check_rsa_pss(intermediate, ark, "the AMD signing key (ASK/ASVK)")
    _check_rsa_pss(vek_cert, intermediate, f"the {kind}")
    for cert, what in ((ark, "the ARK"), (intermediate, "the ASK/ASVK"), (vek_cert, f"the {kind}")):
        _check_validity(cert, now, what)
    if kind == "VCEK":  # (4)
        hw_id = _extension(vek_cert, "4")
        if hw_id != report.chip_id:
            raise AttestationError("the VCEK was issued for another chip than the report's")
    for name, (offset, oid) in _TCB_FIELDS.items():
        encoded = _extension(vek_cert, oid)
        if encoded is None or _der_integer(encoded) != report.reported_tcb[offset]:
            raise AttestationError(f"the {kind} was issued for another TCB ({name} differs)")
    key = vek_cert.public_key()  # (5)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError(f"the {kind} is not a P-384 key")
    r = int.from_bytes(report.signature[:72], "little")
    s = int.from_bytes(report.signature[72:144], "little")
    try:
        key.verify(encode_dss_signature(r, s), report.raw[:SIGNED_LEN], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError("the SNP report signature does not verify") from None
    return Claims(
        platform="sev-snp",
        measurement=report.measurement.hex(),
        report_data=report.report_data,
        host_data=report.host_data.hex(),
        debug=report.debug,
        tcb=_tcb(report.reported_tcb),
        signing_key=kind,
        assurance="hardware",
        chip_id=report.chip_id.hex(),
        policy=report.policy,
        vmpl=report.vmpl,
        version=report.version,
    )


def verify_azure_hcl(
    hcl_report: bytes, vcek: bytes, *, generation: Generation, now: datetime
) -> Claims:
    """Verify an Azure CVM HCL report: the SNP report inside, and the runtime claims
    after it, which ``report_data[0:32]`` must bind (SHA-256)."""
    start, end = HCL_HEADER_LEN, HCL_HEADER_LEN + REPORT_LEN
    if len(hcl_report) < end + 20 or hcl_report[:4] != b"HCLA":
        raise AttestationError("not an Azure HCL report")
    claims = verify_snp(hcl_report[start:end], vcek, generation=generation, now=now)
    (size,) = struct.unpack_from("<I", hcl_report, end + 16)
    runtime = hcl_report[end + 20 : end + 20 + size]
    if len(runtime) != size:
        raise AttestationError("the HCL runtime claims are truncated")
    if hashlib.sha256(runtime).digest() != claims.report_data[:32]:
        raise AttestationError("the report does not bind the HCL runtime claims")
    return Claims(**{**claims.__dict__, "runtime_claims": runtime})
