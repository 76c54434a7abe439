"""Certificates as evidence carries them: one DER certificate, or PEM text.

PEM follows RFC 7468 section 2: text outside the encapsulation boundaries is
explanatory and ignored (AMD KDS chains are often stored after a ``# SEV-VCEK``
comment line), so it may come before, between and after the blocks. Inside the
boundaries nothing is ignored: every block must be labelled ``CERTIFICATE``,
end with the label it began with, and hold strict base64 of exactly one DER
certificate. Sizes are bounded before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from cleanroom.errors import AttestationError

MAX_CERTIFICATES_BYTES = 64 * 1024
MAX_CERTIFICATES = 8
_BEGIN = b"-----BEGIN "
_BLOCK = re.compile(
    rb"^-----BEGIN ([\x21-\x2c\x2e-\x7e](?:[\x20-\x2c\x2e-\x7e]*[\x21-\x2c\x2e-\x7e])?)-----"
    rb"[ \t]*\r?\n(.*?)^-----END ([\x20-\x2c\x2e-\x7e]*)-----[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
_DER_SEQUENCE = 0x30


def _der(data: bytes, what: str) -> x509.Certificate:
    # AMD's VCEK/VLEK certificates carry serial number 0, which cryptography warns about
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=CryptographyDeprecationWarning)
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError as exc:
            raise AttestationError(f"{what} is not a certificate: {exc}") from exc


def load_certificates(data: bytes, *, what: str = "the certificate data") -> list[x509.Certificate]:
    """The certificates in ``data`` (DER, or PEM with explanatory text), in order."""
    if len(data) > MAX_CERTIFICATES_BYTES:
        raise AttestationError(
            f"{what} is {len(data)} bytes, more than the {MAX_CERTIFICATES_BYTES} accepted"
        )
    if data[:1] == bytes([_DER_SEQUENCE]):
        return [_der(data, what)]
    blocks = list(_BLOCK.finditer(data))
    if data.count(_BEGIN) != len(blocks):
        raise AttestationError(f"{what} holds a PEM block without its END boundary")
    if not blocks:
        raise AttestationError(f"{what} is not a certificate: neither DER nor a PEM block")
    if len(blocks) > MAX_CERTIFICATES:
        raise AttestationError(
            f"{what} holds {len(blocks)} certificates, more than the {MAX_CERTIFICATES} accepted"
        )
    certificates = []
    for number, block in enumerate(blocks, start=1):
        begin, body, end = block.group(1), block.group(2), block.group(3)
        where = f"{what}, PEM block {number}"
        if begin != end:
            raise AttestationError(
                f"{where} begins as {begin.decode()!r} but ends as {end.decode()!r}"
            )
        if begin != b"CERTIFICATE":
            raise AttestationError(f"{where} is a {begin.decode()!r}, not a CERTIFICATE")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except binascii.Error as exc:
            raise AttestationError(f"{where} is not base64: {exc}") from exc
        certificates.append(_der(der, where))
    return certificates
