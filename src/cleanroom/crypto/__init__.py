"""The cryptographic core: canonical JSON, signatures, sealing, streaming encryption.

Safe recipes live here under short names. Every verification or decryption
failure raises :class:`cleanroom.errors.IntegrityError` and returns nothing.

* :func:`canonical_json` - RFC 8785 bytes of a JSON value.
* :func:`sign_document` / :func:`verify_document` - readable JSON documents
  with a detached JWS (EdDSA) over their canonical form.
* :func:`seal` / :func:`open_sealed` - HPKE (RFC 9180) for data keys, bound to
  a :class:`SealContext`.
* :func:`encrypt_file` / :func:`decrypt_file` (and the ``_stream`` forms) -
  chunked AES-256-GCM for arbitrarily large files in bounded memory.
"""

from cleanroom.crypto.canonical import canonical_digest, canonical_json
from cleanroom.crypto.documents import sign_document, verify_document
from cleanroom.crypto.hpke import SealContext, open_sealed, seal
from cleanroom.crypto.stream import decrypt_file, decrypt_stream, encrypt_file, encrypt_stream

__all__ = [
    "SealContext",
    "canonical_digest",
    "canonical_json",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "open_sealed",
    "seal",
    "sign_document",
    "verify_document",
]
