"""Party identities: keystores with private keys, and shareable public identities."""

from cleanroom.identities.identity import PublicIdentity, format_fingerprint
from cleanroom.identities.keystore import KdfParams, Party

__all__ = ["KdfParams", "Party", "PublicIdentity", "format_fingerprint"]
