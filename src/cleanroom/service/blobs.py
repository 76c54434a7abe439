"""Content-addressed ciphertext storage behind one small interface.

A blob is named by the SHA-256 of its bytes. ``put`` streams into a hidden
temporary file while hashing, refuses more bytes than announced, and publishes
with one rename only if size and digest match: an interrupted or mismatching
upload leaves nothing behind. The local store is the embedded default; an
S3-compatible store implements the same three methods.
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

    def read(self, digest: str) -> Iterator[bytes]:
        path = self._path(digest)
        if not path.is_file():
            raise NotFoundError(f"no blob {digest[:12]}...")
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
