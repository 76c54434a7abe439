"""Local file-system helpers: output that appears complete or not at all.

Invariant: a reader never sees a half-written file or directory produced by
cleanroom. Work happens in a hidden sibling (same file system, so the final
``rename`` is atomic); contents are fsynced before the rename and the parent
directory after it; on any exception the sibling is removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cleanroom.errors import StorageError


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StorageError(f"directory {path.parent} does not exist")
    tmp = _sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        _fsync_path(tmp)
        tmp.replace(path)
        _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes ``path`` atomically.

    ``path`` must not exist, or be an empty directory.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StorageError(f"output {path} already exists and is not an empty directory")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {parent}: {exc.strerror}") from exc
    tmp = _sibling(path)
    tmp.mkdir(mode=0o700)
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync_path(child)
        _fsync_path(tmp)
        try:
            tmp.rename(path)
        except OSError as exc:
            raise StorageError(f"cannot publish {path}: {exc.strerror}") from exc
        _fsync_path(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically to ``path``, with ``mode`` from the first byte."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600 (private keys)."""
    _write_new(path, data, 0o600)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` (mode 0644)."""
    _write_new(path, data, 0o644)
