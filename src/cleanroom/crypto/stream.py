"""Streaming AEAD envelope: AES-256-GCM over fixed-size chunks.

This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizar, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015) in the
layout Tink's AES-GCM-HKDF streaming AEAD uses, with cleanroom's own header.

Layout::

    header  = magic "CRSA" | version u8 | chunk_size u32 | key_id_len u8 | key_id
              | salt (32) | nonce_prefix (7)
    body    = chunk_0 | chunk_1 | ... | chunk_n        (each: ciphertext | tag(16))

Per stream, a fresh subkey = HKDF-SHA256(key, salt, info = "cleanroom/stream/v1" |
key_id). Chunk ``i`` is sealed with nonce = nonce_prefix | u32(i) | u8(last) and
with the whole header as associated data. Hence:

* reordering or duplicating chunks changes ``i``: the tag fails;
* truncation at a chunk boundary leaves a final chunk sealed with last=0: fails;
  appending after the last chunk makes it non-final: fails;
* splicing chunks between streams fails, since each stream has its own salt and
  so its own subkey;
* editing the header (key id, chunk size, salt) fails every chunk.

Memory is bounded by two chunks whatever the stream size. Decryption writes a
chunk only after its tag verified, but a later chunk can still fail: callers
that need all-or-nothing use :func:`decrypt_file`, which publishes its output
atomically, or discard ``dst`` on error. Every failure is an
:class:`IntegrityError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cleanroom.errors import IntegrityError
from cleanroom.fs import atomic_path

MAGIC = b"CRSA"
VERSION = 1
TAG_LEN = 16
SALT_LEN = 32
PREFIX_LEN = 7
KEY_LEN = 32
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 26
MAX_KEY_ID_LEN = 64
_FIXED = struct.Struct(">4sBIB")
_MAX_CHUNKS = 1 << 32
_HKDF_INFO = b"cleanroom/stream/v1\x00"

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class StreamHeader:
    chunk_size: int
    key_id: bytes
    salt: bytes
    nonce_prefix: bytes

    def to_bytes(self) -> bytes:
        fixed = _FIXED.pack(MAGIC, VERSION, self.chunk_size, len(self.key_id))
        return fixed + self.key_id + self.salt + self.nonce_prefix


def _check_params(key: bytes, key_id: bytes, chunk_size: int) -> None:
    if len(key) != KEY_LEN:
        raise ValueError("stream key must be 32 bytes")
    if not 0 < len(key_id) <= MAX_KEY_ID_LEN:
        raise ValueError(f"key id must be 1..{MAX_KEY_ID_LEN} bytes")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")


def _subkey(key: bytes, header: StreamHeader) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_LEN, salt=header.salt, info=_HKDF_INFO + header.key_id
    )
    return hkdf.derive(key)


def _nonce(prefix: bytes, index: int, *, last: bool) -> bytes:
    if index >= _MAX_CHUNKS:
        raise IntegrityError("stream has too many chunks")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _read_full(src: BinaryIO, buf: bytearray | memoryview) -> int:
    """Fill ``buf`` unless EOF comes first; return the number of bytes read."""
    view = memoryview(buf)
    total = 0
    while total < len(view):
        n = src.readinto(view[total:])  # type: ignore[attr-defined]
        if not n:
            break
        total += n
    return total


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    *,
    key_id: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Callable[[int], bytes] = os.urandom,
    progress: ProgressFn | None = None,
) -> int:
    """Encrypt all of ``src`` into ``dst``; returns the plaintext length."""
    _check_params(key, key_id, chunk_size)
    header = StreamHeader(chunk_size, key_id, rng(SALT_LEN), rng(PREFIX_LEN))
    header_bytes = header.to_bytes()
    aes = algorithms.AES(_subkey(key, header))
    dst.write(header_bytes)

    current, ahead = bytearray(chunk_size), bytearray(chunk_size)
    out = bytearray(chunk_size + 15)  # update_into needs block_size - 1 spare bytes
    n = _read_full(src, current)
    index, total = 0, 0
    while True:
        m = _read_full(src, ahead) if n == chunk_size else 0
        last = m == 0
        enc = Cipher(aes, modes.GCM(_nonce(header.nonce_prefix, index, last=last))).encryptor()
        enc.authenticate_additional_data(header_bytes)
        written = enc.update_into(memoryview(current)[:n], out)
        enc.finalize()
        dst.write(memoryview(out)[:written])
        dst.write(enc.tag)
        total += n
        if progress is not None:
            progress(n)
        if last:
            return total
        current, ahead, n = ahead, current, m
        index += 1


def read_header(src: BinaryIO) -> StreamHeader:
    """Parse and bounds-check an envelope header; raises :class:`IntegrityError`."""
    fixed = bytearray(_FIXED.size)
    if _read_full(src, fixed) != _FIXED.size:
        raise IntegrityError("not a cleanroom encrypted stream (truncated header)")
    magic, version, chunk_size, key_id_len = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise IntegrityError("not a cleanroom encrypted stream (bad magic)")
    if version != VERSION:
        raise IntegrityError(f"unsupported encrypted stream version {version}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError("encrypted stream header has an invalid chunk size")
    if not 0 < key_id_len <= MAX_KEY_ID_LEN:
        raise IntegrityError("encrypted stream header has an invalid key id")
    rest_len = key_id_len + SALT_LEN + PREFIX_LEN
    rest = bytearray(rest_len)
    if _read_full(src, rest) != rest_len:
        raise IntegrityError("not a cleanroom encrypted stream (truncated header)")
    return StreamHeader(
        chunk_size=chunk_size,
        key_id=bytes(rest[:key_id_len]),
        salt=bytes(rest[key_id_len : key_id_len + SALT_LEN]),
        nonce_prefix=bytes(rest[key_id_len + SALT_LEN :]),
    )


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    *,
    key_id: bytes | None = None,
    progress: ProgressFn | None = None,
) -> int:
    """Decrypt an envelope from ``src`` into ``dst``; returns the plaintext length.

    ``key_id``, when given, must match the header's. Raises
    :class:`IntegrityError` on any tampering; see the module notes on partial
    output.
    """
    if len(key) != KEY_LEN:
        raise ValueError("stream key must be 32 bytes")
    header = read_header(src)
    if key_id is not None and header.key_id != key_id:
        raise IntegrityError("decryption failed: stream was encrypted under another key id")
    header_bytes = header.to_bytes()
    aes = algorithms.AES(_subkey(key, header))
    segment = header.chunk_size + TAG_LEN

    current, ahead = bytearray(segment), bytearray(segment)
    out = bytearray(segment + 15)
    n = _read_full(src, current)
    index, total = 0, 0
    while True:
        if n < TAG_LEN:
            raise IntegrityError("decryption failed")
        m = _read_full(src, ahead) if n == segment else 0
        last = m == 0
        body = n - TAG_LEN
        nonce = _nonce(header.nonce_prefix, index, last=last)
        tag = bytes(current[body:n])
        dec = Cipher(aes, modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(header_bytes)
        written = dec.update_into(memoryview(current)[:body], out)
        try:
            dec.finalize()
        except InvalidTag:
            raise IntegrityError("decryption failed") from None
        dst.write(memoryview(out)[:written])
        total += written
        if progress is not None:
            progress(n)
        if last:
            return total
        current, ahead, n = ahead, current, m
        index += 1


def encrypt_file(
    src: Path,
    dst: Path,
    key: bytes,
    *,
    key_id: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressFn | None = None,
) -> int:
    """Encrypt ``src`` to ``dst``; ``dst`` appears complete or not at all."""
    with src.open("rb") as fin, atomic_path(dst) as tmp, tmp.open("wb") as fout:
        return encrypt_stream(
            fin, fout, key, key_id=key_id, chunk_size=chunk_size, progress=progress
        )


def decrypt_file(
    src: Path,
    dst: Path,
    key: bytes,
    *,
    key_id: bytes | None = None,
    progress: ProgressFn | None = None,
) -> int:
    """Decrypt ``src`` to ``dst``; on any failure ``dst`` is never created."""
    with src.open("rb") as fin, atomic_path(dst) as tmp, tmp.open("wb") as fout:
        return decrypt_stream(fin, fout, key, key_id=key_id, progress=progress)
