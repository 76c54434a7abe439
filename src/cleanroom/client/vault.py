"""A data owner's key vault: the data keys it releases itself (owner-held release).

Each key is HPKE-sealed to the owner's own encryption key and bound to its
room, dataset and manifest, so a vault file is as safe at rest as the
keystore (with a passphrase, it needs the passphrase) and cannot be swapped
for another dataset's. ``cleanroom.agent`` opens keys from here to release
them to attested enclaves.
"""

from __future__ import annotations

from pathlib import Path

from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.crypto.hpke import SealContext, seal
from cleanroom.errors import StorageError
from cleanroom.fs import write_private_file
from cleanroom.identities.keystore import Party

VAULT_PURPOSE = "cleanroom owner-held data key"
VAULT_DIR = "data-keys"


class KeyVault:
    """An owner's data keys, each sealed to the owner's own encryption key."""

    def __init__(self, party: Party, directory: Path) -> None:
        self.party = party
        self.directory = Path(directory)

    def _path(self, room: str, manifest: str) -> Path:
        return self.directory / f"{room}-{manifest}.key"

    @staticmethod
    def _context(room: str, dataset: str, manifest: str) -> SealContext:
        return SealContext(VAULT_PURPOSE, {"room": room, "dataset": dataset, "manifest": manifest})

    def keep(self, room: str, dataset: str, manifest: str, key: bytes) -> None:
        sealed = seal(
            key, self.party.identity.encryption_key, self._context(room, dataset, manifest)
        )
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the key vault {self.directory}") from exc
        write_private_file(self._path(room, manifest), b64url_encode(sealed).encode() + b"\n")

    def open(self, room: str, dataset: str, manifest: str) -> bytes:
        path = self._path(room, manifest)
        try:
            text = path.read_text().strip()
        except FileNotFoundError as exc:
            raise StorageError(f"the key vault holds no key for {dataset!r} ({path})") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        sealed = b64url_decode(text, what=f"data key {path}")
        return self.party.open_sealed(sealed, self._context(room, dataset, manifest))
