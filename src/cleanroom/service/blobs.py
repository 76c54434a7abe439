"""Content-addressed ciphertext storage behind one small interface.

A blob is named by the SHA-256 of its bytes. ``put`` streams into a hidden
temporary file while hashing, refuses more bytes than announced, and publishes
with one rename only if size and digest match: an interrupted or mismatching
upload leaves nothing behind. The local store is the embedded default; an
S3-compatible store implements the same methods.

Blobs are shared by every room of the service (one copy of identical bytes),
but each room holds only the blobs uploaded *in it*: ``claim`` records which of
a room's members streamed the whole blob there (its bytes hashed again, even
when the blob was stored already), and a room serves a dataset version's bytes
only when that version's own owner uploaded them (``uploaders``). Knowing a
digest (read on a ledger) is never enough to read its bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

from cleanroom.errors import IntegrityError, NotFoundError, StorageError

_DIGEST = re.compile(r"[0-9a-f]{64}")
_ROOM = re.compile(r"[0-9a-f]{32}")
ROOMS_DIR = "rooms"  # claims: rooms/<room>/<digest>, empty files
CHUNK = 1 << 20


def check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise NotFoundError("a blob is named by 64 lower-case hex digits")
    return digest


class BlobStore(Protocol):
    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes]) -> None: ...

    def exists(self, digest: str) -> bool: ...

    def read(self, digest: str) -> Iterator[bytes]: ...

    def size(self, digest: str) -> int: ...

    def claim(self, room: str, digest: str, uploader: str) -> None: ...

    def uploaders(self, room: str, digest: str) -> frozenset[str]: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create blob directory {root}: {exc.strerror}") from exc

    def _path(self, digest: str) -> Path:
        return self.root / check_digest(digest)

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: str) -> int:
        path = self._path(digest)
        if not path.is_file():
            raise NotFoundError(f"no blob {digest[:12]}...")
        return path.stat().st_size

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes]) -> None:
        target = self._path(digest)
        tmp = self.root / f".upload-{secrets.token_hex(8)}"
        hasher, received = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > size:
                        raise IntegrityError(
                            f"the upload is longer than the {size} bytes announced"
                        )
                    hasher.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if received != size:
                raise IntegrityError(f"the upload ended after {received} of {size} bytes")
            if hasher.hexdigest() != digest:
                raise IntegrityError("the uploaded bytes do not match the manifest's SHA-256")
            tmp.replace(target)
        except OSError as exc:
            raise StorageError(f"cannot store the upload: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _claim_path(self, room: str, digest: str) -> Path:
        if not _ROOM.fullmatch(room):
            raise NotFoundError("a room is named by 32 lower-case hex digits")
        return self.root / ROOMS_DIR / room / check_digest(digest)

    def claim(self, room: str, digest: str, uploader: str) -> None:
        """Record that ``uploader`` (a fingerprint) uploaded the whole blob in ``room``."""
        if not self.exists(digest) or not _DIGEST.fullmatch(uploader):
            raise NotFoundError(f"no blob {digest[:12]}...")
        if uploader in self.uploaders(room, digest):
            return
        path = self._claim_path(room, digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with path.open("a", encoding="ascii") as fh:
                fh.write(uploader + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StorageError(f"cannot record the upload: {exc.strerror}") from exc

    def uploaders(self, room: str, digest: str) -> frozenset[str]:
        """Who uploaded the blob in ``room`` (empty: nobody, it is not the room's)."""
        path = self._claim_path(room, digest)
        if not self.exists(digest) or not path.is_file():
            return frozenset()
        try:
            lines = path.read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot read the uploads of {digest[:12]}...") from exc
        return frozenset(line for line in lines if _DIGEST.fullmatch(line))

    def read(self, digest: str) -> Iterator[bytes]:
        path = self._path(digest)
        if not path.is_file():
            raise NotFoundError(f"no blob {digest[:12]}...")
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
