"""The streaming envelope against its documented layout, written out again here
from the module notes with ``cryptography``'s AES-GCM and HKDF (so a change to
the header, the key derivation or the nonce that both directions share still
fails), and every header bound at its edge (the mutants in tests/mutation that
the round-trip and tamper tests could not see)."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cleanroom.crypto.stream import (
    _nonce,
    decrypt_stream,
    encrypt_stream,
    read_header,
)
from cleanroom.errors import IntegrityError

KEY = bytes(range(32))
KEY_ID = b"dataset-key-7"
CHUNK = 1 << 12
SALT = bytes(range(100, 132))
PREFIX = bytes(range(200, 207))


def fixed_rng() -> Callable[[int], bytes]:
    """The salt, then the nonce prefix, as encrypt_stream draws them."""
    draws = iter([SALT, PREFIX])

    def rng(n: int) -> bytes:
        value = next(draws)
        assert len(value) == n
        return value

    return rng


def documented(data: bytes, chunk: int) -> bytes:
    """The envelope as the module notes define it, written independently."""
    header = (b"CRSA" + bytes([1]) + struct.pack(">I", chunk) + bytes([len(KEY_ID)]) + KEY_ID) + (
        SALT + PREFIX
    )
    info = b"cleanroom/stream/v1\x00" + KEY_ID
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(KEY)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    out = [header]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        nonce = PREFIX + struct.pack(">I", i) + (b"\x01" if last else b"\x00")
        out.append(AESGCM(subkey).encrypt(nonce, piece, header))
    return b"".join(out)


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK])
def test_the_envelope_is_the_documented_layout(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    out = io.BytesIO()
    written = encrypt_stream(
        io.BytesIO(data), out, KEY, key_id=KEY_ID, chunk_size=CHUNK, rng=fixed_rng()
    )
    assert written == size
    assert out.getvalue() == documented(data, CHUNK)
    plain = io.BytesIO()
    assert decrypt_stream(io.BytesIO(documented(data, CHUNK)), plain, KEY) == size
    assert plain.getvalue() == data


def test_the_default_chunk_is_one_mebibyte() -> None:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(b"x"), out, KEY, key_id=KEY_ID)
    out.seek(0)
    assert read_header(out).chunk_size == 1 << 20


def test_progress_counts_plaintext_in_and_ciphertext_out() -> None:
    data = bytes(2 * CHUNK + 5)
    seen: list[int] = []
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(data), out, KEY, key_id=KEY_ID, chunk_size=CHUNK, progress=seen.append
    )
    assert seen == [CHUNK, CHUNK, 5]
    read: list[int] = []
    decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), KEY, progress=read.append)
    assert read == [CHUNK + 16, CHUNK + 16, 5 + 16]


@pytest.mark.parametrize("chunk", [(1 << 12) - 1, (1 << 26) + 1])
def test_a_chunk_size_outside_the_bounds_is_refused_when_encrypting(chunk: int) -> None:
    with pytest.raises(ValueError, match=r"chunk size must be in \[4096, 67108864\]"):
        encrypt_stream(io.BytesIO(b""), io.BytesIO(), KEY, key_id=KEY_ID, chunk_size=chunk)


def test_the_smallest_chunk_size_is_accepted() -> None:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(b"x"), out, KEY, key_id=KEY_ID, chunk_size=1 << 12)
    assert decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), KEY) == 1


def header(*, chunk: int = CHUNK, key_id_len: int = len(KEY_ID), rest: int | None = None) -> bytes:
    fixed = b"CRSA" + bytes([1]) + struct.pack(">I", chunk) + bytes([key_id_len])
    body = (KEY_ID + bytes(64))[:key_id_len] + SALT + PREFIX
    return fixed + body[: len(body) if rest is None else rest]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (header()[:9], r"not a cleanroom encrypted stream \(truncated header\)"),
        (header(rest=10), r"not a cleanroom encrypted stream \(truncated header\)"),
        (header(chunk=0), "encrypted stream header has an invalid chunk size"),
        (header(chunk=(1 << 12) - 1), "encrypted stream header has an invalid chunk size"),
        (header(chunk=(1 << 26) + 1), "encrypted stream header has an invalid chunk size"),
        (header(key_id_len=0), "encrypted stream header has an invalid key id"),
        (header(key_id_len=65), "encrypted stream header has an invalid key id"),
    ],
)
def test_a_header_out_of_bounds_is_refused_by_its_check(raw: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=f"^{message}$"):
        read_header(io.BytesIO(raw))


@pytest.mark.parametrize(("chunk", "key_id_len"), [(1 << 12, 1), (1 << 26, 64)])
def test_a_header_at_its_bounds_is_read(chunk: int, key_id_len: int) -> None:
    parsed = read_header(io.BytesIO(header(chunk=chunk, key_id_len=key_id_len)))
    assert (parsed.chunk_size, len(parsed.key_id), parsed.salt) == (chunk, key_id_len, SALT)


def test_a_stream_of_more_than_two_to_the_32_chunks_is_refused() -> None:
    assert _nonce(PREFIX, (1 << 32) - 1, last=True) == PREFIX + b"\xff\xff\xff\xff\x01"
    with pytest.raises(IntegrityError, match="stream has too many chunks"):
        _nonce(PREFIX, 1 << 32, last=False)


def test_a_header_without_any_chunk_fails_opaquely() -> None:
    sealed = io.BytesIO()
    encrypt_stream(io.BytesIO(b"data"), sealed, KEY, key_id=KEY_ID, chunk_size=CHUNK)
    only_header = sealed.getvalue()[: len(header())]
    with pytest.raises(IntegrityError, match=r"^decryption failed$"):
        decrypt_stream(io.BytesIO(only_header), io.BytesIO(), KEY)


def test_a_decryption_key_of_the_wrong_length_is_a_programmer_error() -> None:
    with pytest.raises(ValueError, match="stream key must be 32 bytes"):
        decrypt_stream(io.BytesIO(header()), io.BytesIO(), bytes(31))
