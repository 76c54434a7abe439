"""The streaming AEAD envelope: round trips, bounded memory, and a tamper table
in which every case raises the one documented error."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom.crypto import decrypt_file, decrypt_stream, encrypt_file, encrypt_stream
from cleanroom.crypto.stream import MIN_CHUNK_SIZE, TAG_LEN, read_header
from cleanroom.errors import IntegrityError

KEY = bytes(range(32))
CHUNK = MIN_CHUNK_SIZE


def encrypt(data: bytes, *, key: bytes = KEY, key_id: bytes = b"k1", chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, key_id=key_id, chunk_size=chunk)
    return out.getvalue()


def decrypt(blob: bytes, *, key: bytes = KEY, key_id: bytes | None = None) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, key, key_id=key_id)
    return out.getvalue()


def header_len(blob: bytes) -> int:
    stream = io.BytesIO(blob)
    read_header(stream)
    return stream.tell()


def chunks(blob: bytes, chunk: int = CHUNK) -> tuple[bytes, list[bytes]]:
    n = header_len(blob)
    body = blob[n:]
    size = chunk + TAG_LEN
    return blob[:n], [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_at_chunk_boundaries(size: int) -> None:
    data = os.urandom(size)
    assert decrypt(encrypt(data)) == data


def test_reads_from_short_reading_streams() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = memoryview(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            n = min(len(buffer), 7, len(self.data))
            buffer[:n] = self.data[:n]
            self.data = self.data[n:]
            return n

    data = os.urandom(2 * CHUNK + 5)
    out = io.BytesIO()
    encrypt_stream(Trickle(data), out, KEY, key_id=b"k", chunk_size=CHUNK)  # type: ignore[arg-type]
    plain = io.BytesIO()
    decrypt_stream(Trickle(out.getvalue()), plain, KEY)  # type: ignore[arg-type]
    assert plain.getvalue() == data


DATA = os.urandom(3 * CHUNK + 100)
BLOB = encrypt(DATA)
OTHER = encrypt(os.urandom(3 * CHUNK + 100))


def _flip(offset: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        raw = bytearray(blob)
        raw[offset(blob)] ^= 0x80
        return bytes(raw)

    return mutate


def _with_chunks(edit: Callable[[list[bytes]], list[bytes]]) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        header, parts = chunks(blob)
        return header + b"".join(edit(parts))

    return mutate


def _splice(blob: bytes) -> bytes:
    header, parts = chunks(blob)
    _, others = chunks(OTHER)
    return header + parts[0] + others[1] + parts[2] + parts[3]


def _set_version(blob: bytes) -> bytes:
    return blob[:4] + b"\x02" + blob[5:]


def _set_chunk_size(blob: bytes) -> bytes:
    return blob[:5] + struct.pack(">I", CHUNK * 2) + blob[9:]


TAMPER = {
    "magic bit flip": _flip(lambda b: 0),
    "version changed": _set_version,
    "chunk size changed": _set_chunk_size,
    "key id bit flip": _flip(lambda b: 10),
    "salt bit flip": _flip(lambda b: 13),
    "nonce prefix bit flip": _flip(lambda b: header_len(b) - 1),
    "first chunk ciphertext bit flip": _flip(lambda b: header_len(b) + 5),
    "last chunk ciphertext bit flip": _flip(lambda b: len(b) - TAG_LEN - 1),
    "first chunk tag bit flip": _flip(lambda b: header_len(b) + CHUNK + 3),
    "last tag bit flip": _flip(lambda b: len(b) - 1),
    "truncated at a chunk boundary": _with_chunks(lambda p: p[:-1]),
    "truncated mid-chunk": lambda b: b[:-40],
    "truncated inside the last tag": lambda b: b[:-3],
    "truncated to the header": lambda b: b[: header_len(b)],
    "truncated inside the header": lambda b: b[:20],
    "empty input": lambda b: b"",
    "chunks reordered": _with_chunks(lambda p: [p[1], p[0], *p[2:]]),
    "chunk duplicated": _with_chunks(lambda p: [p[0], p[0], *p[1:]]),
    "chunk dropped from the middle": _with_chunks(lambda p: [p[0], *p[2:]]),
    "last chunk replaced by a full one": _with_chunks(lambda p: [*p[:-1], p[0]]),
    "data appended": lambda b: b + b"\x00" * 32,
    "chunk spliced from another stream": _splice,
    "header from another stream": lambda b: OTHER[: header_len(OTHER)] + b[header_len(b) :],
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_tampering_is_detected(name: str) -> None:
    with pytest.raises(IntegrityError):
        decrypt(TAMPER[name](BLOB))


def test_wrong_key_fails() -> None:
    with pytest.raises(IntegrityError, match="decryption failed"):
        decrypt(BLOB, key=os.urandom(32))


def test_wrong_key_id_fails() -> None:
    with pytest.raises(IntegrityError, match="another key id"):
        decrypt(BLOB, key_id=b"k2")


def test_same_key_different_streams_do_not_share_nonces() -> None:
    a, b = encrypt(b"x" * 100), encrypt(b"x" * 100)
    assert a != b
    assert chunks(a)[1][0] != chunks(b)[1][0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3 * CHUNK), st.sampled_from([CHUNK, 2 * CHUNK]))
def test_round_trip_property(data: bytes, chunk: int) -> None:
    assert decrypt(encrypt(data, chunk=chunk)) == data


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_rejected(position: int, bit: int) -> None:
    raw = bytearray(BLOB)
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        decrypt(bytes(raw))


def test_memory_is_bounded_by_the_chunk_size() -> None:
    chunk = 1 << 20
    total = 64 * chunk

    class Zeros(io.RawIOBase):
        remaining = total

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            n = min(len(buffer), self.remaining)
            buffer[:n] = bytes(n)
            self.remaining -= n
            return n

    class Sink(io.RawIOBase):
        written = 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            self.written += len(data)
            return len(data)

    sink = Sink()
    tracemalloc.start()
    encrypt_stream(Zeros(), sink, KEY, key_id=b"k", chunk_size=chunk)  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sink.written > total
    assert peak < 6 * chunk, f"peak {peak} bytes for a {total}-byte stream"


def test_file_recipes_publish_atomically(tmp_path: Path) -> None:
    plain, sealed, back = tmp_path / "p", tmp_path / "s", tmp_path / "b"
    plain.write_bytes(DATA)
    encrypt_file(plain, sealed, KEY, key_id=b"k", chunk_size=CHUNK)
    assert decrypt_file(sealed, back, KEY) == len(DATA)
    assert back.read_bytes() == DATA
    # a stream damaged in its last chunk: the first chunks decrypt, but no output appears
    sealed.write_bytes(TAMPER["last tag bit flip"](sealed.read_bytes()))
    target = tmp_path / "never"
    with pytest.raises(IntegrityError):
        decrypt_file(sealed, target, KEY)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "p", "s"]


@pytest.mark.parametrize(
    ("key", "key_id", "chunk"),
    [(b"short", b"k", CHUNK), (KEY, b"", CHUNK), (KEY, b"k" * 65, CHUNK), (KEY, b"k", 100)],
)
def test_programmer_errors_are_value_errors(key: bytes, key_id: bytes, chunk: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        encrypt(b"x", key=key, key_id=key_id, chunk=chunk)
