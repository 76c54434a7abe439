"""AMD SEV-SNP attestation reports: parsing and verification (pure).

``verify_snp(report, vek, now=...)`` checks, in order:

(1) the report is 1184 bytes, a known version, signed with ECDSA P-384/SHA-384;
(2) the certificates given hold exactly one VCEK or VLEK, of the kind the
    report's signing-key field names;
(3) the CPU generation (Milan, Genoa, Turin) is the report's own: version 3
    and later reports carry CPUID family and model, which decide it; a
    version 2 report has none, so the shipped AMD chain that issued the VEK
    decides it. The VEK's issuer, its product-name extension, any AMD
    certificate the evidence carries beside it, and a generation the caller
    expects must all be that generation's, or the report is refused: a Turin
    report never verifies under a Genoa chain nor the reverse;
(4) the ARK (root) is the one cleanroom ships for that generation and is
    validly self-signed; the ASK (for a VCEK) or ASVK (for a VLEK) is signed
    by it; the VCEK/VLEK is signed by that ASK/ASVK, all with RSA-PSS SHA-384
    (salt 48), all valid at ``now``;
(5) for a VCEK, the certificate's hwID extension is the report's chip id (64
    bytes on Milan and Genoa; 8 bytes on Turin, where the rest of the chip id
    is zero); the certificate's TCB extensions equal the report's reported
    TCB, read with the generation's layout (Turin adds FMC and moves the
    others);
(6) the report's signature over bytes 0x000-0x29F verifies under that key.

It returns :class:`Claims`; the DEBUG policy bit is reported, and refused by
:func:`cleanroom.attestation.appraise` unless a policy explicitly allows it.
Azure confidential VMs wrap the report in an HCL report whose runtime claims
are bound by ``report_data``: :func:`cleanroom.attestation.azure.verify_azure_hcl`.

Certificates and the clock are inputs; nothing is fetched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, ObjectIdentifier

from cleanroom.attestation.claims import Claims
from cleanroom.attestation.pem import load_certificates
from cleanroom.errors import AttestationError

Generation = Literal["milan", "genoa", "turin"]
GENERATIONS: tuple[Generation, ...] = ("milan", "genoa", "turin")
REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
DEBUG_BIT = 1 << 19
_OID = "1.3.6.1.4.1.3704.1."
HW_ID = ObjectIdentifier(_OID + "4")
PRODUCT_NAME = ObjectIdentifier(_OID + "2")
# TCB components in reported_tcb: byte offset -> VEK SPL extension, per generation
_MILAN_GENOA_TCB = {
    "bootloader": (0, "3.1"),
    "tee": (1, "3.2"),
    "snp": (6, "3.3"),
    "microcode": (7, "3.8"),
}
_TURIN_TCB = {
    "fmc": (0, "3.9"),
    "bootloader": (1, "3.1"),
    "tee": (2, "3.2"),
    "snp": (3, "3.3"),
    "microcode": (7, "3.8"),
}
TCB_LAYOUT: dict[Generation, dict[str, tuple[int, str]]] = {
    "milan": _MILAN_GENOA_TCB,
    "genoa": _MILAN_GENOA_TCB,
    "turin": _TURIN_TCB,
}
HW_ID_LEN: dict[Generation, int] = {"milan": 64, "genoa": 64, "turin": 8}
_VEK_NAMES = {"SEV-VCEK": "VCEK", "SEV-VLEK": "VLEK"}


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
    cpuid: tuple[int, int, int]  # family, model, stepping; zero before version 3
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
        cpuid=(raw[0x188], raw[0x189], raw[0x18A]),
        chip_id=raw[0x1A0:0x1E0],
        signature=raw[0x2A0 : 0x2A0 + 144],
    )


def report_generation(report: SnpReport) -> Generation | None:
    """The CPU generation a version 3+ report names by its CPUID (None for version 2)."""
    if report.version < 3:
        return None
    family, model, _ = report.cpuid
    if family == 0x19 and model <= 0x0F:
        return "milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "genoa"
    if family == 0x1A and model <= 0x11:
        return "turin"
    raise AttestationError(
        f"the report comes from an AMD CPU (family {family:#04x}, model {model:#04x}) "
        "that is not a Milan, Genoa or Turin cleanroom has roots for"
    )


@cache
def _anchors(generation: Generation) -> dict[str, x509.Certificate]:
    """The shipped ARK, ASK and ASVK for one CPU generation, by role."""
    data = resources.files("cleanroom.attestation").joinpath(f"anchors/amd-{generation}.pem")
    by_role: dict[str, x509.Certificate] = {}
    for cert in load_certificates(data.read_bytes(), what=f"the shipped AMD {generation} bundle"):
        name = cert.subject.rfc4514_string()
        role = "ark" if "CN=ARK-" in name else "asvk" if "VLEK" in name else "ask"
        by_role[role] = cert
    if set(by_role) != {"ark", "ask", "asvk"}:
        raise RuntimeError(f"the shipped AMD {generation} bundle is incomplete")
    return by_role


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else ""


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


def _product_name(cert: x509.Certificate) -> str | None:
    encoded = _extension(cert, "2")
    if encoded is None:
        return None
    # an IA5String: tag 0x16, a short length, ASCII
    if len(encoded) < 2 or encoded[0] != 0x16 or encoded[1] != len(encoded) - 2:
        raise AttestationError("the VEK's product-name extension is not an IA5String")
    return encoded[2:].decode("ascii", errors="replace")


def tcb_of(reported_tcb: bytes, generation: Generation) -> dict[str, int | str]:
    """The named TCB components of an 8-byte TCB_VERSION, in the generation's layout."""
    return {name: reported_tcb[offset] for name, (offset, _) in TCB_LAYOUT[generation].items()}


def _split_evidence(
    certificates: list[x509.Certificate],
) -> tuple[x509.Certificate, str, list[x509.Certificate]]:
    """(the one VEK, its kind, the other certificates) of the evidence."""
    veks = [c for c in certificates if _common_name(c) in _VEK_NAMES]
    if len(veks) != 1:
        raise AttestationError(
            f"give exactly one VCEK or VLEK certificate, not {len(veks)} "
            f"(subjects: {[c.subject.rfc4514_string() for c in certificates]})"
        )
    others = [c for c in certificates if c is not veks[0]]
    return veks[0], _VEK_NAMES[_common_name(veks[0])], others


def _issuing_generation(vek: x509.Certificate, kind: str) -> Generation:
    role = "ask" if kind == "VCEK" else "asvk"
    for generation in GENERATIONS:
        if vek.issuer == _anchors(generation)[role].subject:
            return generation
    raise AttestationError(
        f"the {kind} was issued by {vek.issuer.rfc4514_string()}, which is no AMD "
        f"{role.upper()} cleanroom trusts"
    )


def _generation_of(
    report: SnpReport,
    vek: x509.Certificate,
    kind: str,
    carried: list[x509.Certificate],
    expected: Generation | None,
) -> Generation:
    """(3) the report's CPU generation, refusing a chain or VEK of another one."""
    from_report = report_generation(report)
    from_chain = _issuing_generation(vek, kind)
    if from_report is not None and from_report != from_chain:
        family, model, stepping = report.cpuid
        raise AttestationError(
            f"the report comes from a {from_report.title()} CPU (CPUID family {family:#04x}, "
            f"model {model:#04x}, stepping {stepping}) but its {kind} was issued by AMD's "
            f"{from_chain.title()} chain ({vek.issuer.rfc4514_string()})"
        )
    generation = from_report or from_chain
    product = _product_name(vek)
    if product is not None and product.split("-")[0].lower() != generation:
        raise AttestationError(
            f"the {kind} was issued for product {product!r}, not for the report's "
            f"{generation.title()} CPU"
        )
    shipped = {c.public_bytes(Encoding.DER) for c in _anchors(generation).values()}
    for cert in carried:
        if cert.public_bytes(Encoding.DER) in shipped:
            continue
        other = next(
            (
                g
                for g in GENERATIONS
                if cert.public_bytes(Encoding.DER)
                in {c.public_bytes(Encoding.DER) for c in _anchors(g).values()}
            ),
            None,
        )
        if other is not None:
            raise AttestationError(
                f"the evidence carries AMD's {other.title()} chain "
                f"({cert.subject.rfc4514_string()}) but the report comes from a "
                f"{generation.title()} CPU"
            )
        raise AttestationError(
            f"the evidence carries {cert.subject.rfc4514_string()}, which is not AMD's "
            f"{generation.title()} ARK, ASK or ASVK as cleanroom ships them"
        )
    if expected is not None and expected != generation:
        raise AttestationError(
            f"the report comes from a {generation.title()} CPU, not the {expected.title()} expected"
        )
    return generation


def verify_snp(
    report_bytes: bytes,
    vek: bytes,
    *,
    now: datetime,
    generation: Generation | None = None,
) -> Claims:
    """Verify an SNP report against its VCEK/VLEK (DER or PEM, optionally followed by
    AMD's chain); see the module notes. The CPU generation comes from the report;
    ``generation``, if given, is only an expectation that must hold."""
    report = parse_report(report_bytes)  # (1)
    vek_cert, kind, carried = _split_evidence(load_certificates(vek, what="the VCEK/VLEK"))  # (2)
    named = {0: "VCEK", 1: "VLEK"}.get(report.signing_key)
    if named is None:
        raise AttestationError(f"the report names an unknown signing key kind {report.signing_key}")
    if named != kind:
        raise AttestationError(f"the report is signed by a {named}, but a {kind} was given")
    gen = _generation_of(report, vek_cert, kind, carried, generation)  # (3)
    anchors = _anchors(gen)  # (4)
    ark = anchors["ark"]
    _check_rsa_pss(ark, ark, f"the AMD {gen.title()} root (ARK)")
    intermediate = anchors["ask"] if kind == "VCEK" else anchors["asvk"]
    _check_rsa_pss(intermediate, ark, f"the AMD {gen.title()} signing key (ASK/ASVK)")
    _check_rsa_pss(vek_cert, intermediate, f"the {kind}")
    for cert, what in ((ark, "the ARK"), (intermediate, "the ASK/ASVK"), (vek_cert, f"the {kind}")):
        _check_validity(cert, now, what)
    if kind == "VCEK":  # (5)
        hw_id = _extension(vek_cert, "4")
        size = HW_ID_LEN[gen]
        if (
            hw_id is None
            or len(hw_id) != size
            or hw_id != report.chip_id[:size]
            or any(report.chip_id[size:])
        ):
            raise AttestationError(
                f"the VCEK was issued for another chip than the report's: hwID "
                f"{(hw_id or b'').hex() or '(none)'}, report chip id {report.chip_id.hex()}"
            )
    for name, (offset, oid) in TCB_LAYOUT[gen].items():
        encoded = _extension(vek_cert, oid)
        found = report.reported_tcb[offset]
        if encoded is None or _der_integer(encoded) != found:
            certified = "(none)" if encoded is None else _der_integer(encoded)
            raise AttestationError(
                f"the {kind} was issued for another TCB ({name} differs: certificate "
                f"{certified}, report {found})"
            )
    key = vek_cert.public_key()  # (6)
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
        tcb=tcb_of(report.reported_tcb, gen),
        signing_key=kind,
        assurance="hardware",
        chip_id=report.chip_id.hex(),
        policy=report.policy,
        vmpl=report.vmpl,
        version=report.version,
        generation=gen,
    )
