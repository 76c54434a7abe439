"""PEM certificates with explanatory text (RFC 7468 section 2), attacked: text
before, between and after blocks is ignored; anything inside a block that is not
one well-formed certificate is refused. Regression: the Turin chain as AMD KDS users
store it (a '# SEV-VCEK' line first) used to fail as "not a certificate"."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cleanroom.attestation import verify_snp
from cleanroom.attestation.pem import load_certificates
from cleanroom.errors import AttestationError
from tests.test_attestation_snp import MANIFEST, NOW, VECTORS, check_published, files

TURIN = "routex-turin-v5"


def blocks() -> list[bytes]:
    """The three PEM blocks of the Turin chain (VCEK, ASK, ARK), without any text."""
    _, pem = files(TURIN)
    return [c.public_bytes(Encoding.PEM) for c in load_certificates(pem)]


def test_the_turin_chain_file_with_its_comment_line_verifies() -> None:
    raw, pem = files(TURIN)
    assert pem.startswith(b"# SEV-VCEK\n")  # as published: text before the first boundary
    check_published(verify_snp(raw, pem, now=NOW), MANIFEST[TURIN])


@pytest.mark.parametrize(
    "layout",
    [
        "{0}{1}{2}",
        "# SEV-VCEK\n{0}# SEV-ASK\n{1}# SEV-ARK\n{2}",
        "Subject: VCEK\r\nIssuer: SEV-Turin\r\n{0}\r\n\r\n{1}trailing notes\n{2}-- end of file --",
        "\n\n   \n{0}\n{1}\n{2}\n\n",
        "{0}# ----- not a boundary -----\n{1}{2}",
    ],
)
def test_explanatory_text_around_blocks_is_ignored(layout: str) -> None:
    raw, _ = files(TURIN)
    vcek, ask, ark = (b.decode() for b in blocks())
    text = layout.format(vcek, ask, ark).encode()
    assert len(load_certificates(text)) == 3
    assert verify_snp(raw, text, now=NOW).generation == "turin"


def test_der_still_loads_and_the_milan_vectors_are_unchanged() -> None:
    der = (VECTORS / "trustee/deps_verifier_test_data_snp_test-vcek.der").read_bytes()
    assert len(load_certificates(der)) == 1


def _refused(text: bytes, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        load_certificates(text)


def test_non_certificates_inside_certificate_blocks_are_refused() -> None:
    vcek = blocks()[0]
    body = vcek.split(b"\n")[1:-2]
    _refused(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a certificate")
    _refused(b"# text\n-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n", "not a")
    _refused(vcek.replace(body[3], b"!" + body[3][1:]), "not base64")
    flipped = bytearray(vcek)
    flipped[200] = ord("A") if flipped[200] != ord("A") else ord("B")
    with pytest.raises(AttestationError):  # the DER no longer parses, or its signature fails
        verify_snp(files(TURIN)[0], bytes(flipped), now=NOW)
    half = b"\n".join([b"-----BEGIN CERTIFICATE-----", *body[: len(body) // 2]])
    _refused(half + b"\n-----END CERTIFICATE-----\n", "not a certificate")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "neither DER nor a PEM block"),
        (b"# only a comment\n", "neither DER nor a PEM block"),
        (b"not a certificate", "neither DER nor a PEM block"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a CERTIFICATE"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----\n", "ends as 'X509 CRL'"),
    ],
)
def test_malformed_pem_is_refused(text: bytes, message: str) -> None:
    _refused(text, message)


def test_a_block_without_its_end_is_refused_not_skipped() -> None:
    vcek, ask, _ = blocks()
    _refused(vcek + ask[: len(ask) // 2], "without its END boundary")
    _refused(vcek.replace(b"-----END CERTIFICATE-----", b""), "without its END boundary")
