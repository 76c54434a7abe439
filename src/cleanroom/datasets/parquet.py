"""Encrypted Parquet through DuckDB: the only module that talks to DuckDB here.

DuckDB writes Parquet Modular Encryption (AES-GCM) only with its
OpenSSL-backed ``httpfs`` extension loaded. We load that extension from the
``duckdb-extension-httpfs`` package on disk, with auto-install and auto-load
switched off, so nothing is ever downloaded. Keys are registered per
connection under a random name and never written to disk.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_httpfs
import pyarrow as pa

from cleanroom.errors import IntegrityError, OperationalError

ENCRYPTION = "parquet-modular-encryption/AES_GCM_V1"


def _httpfs_extension() -> Path:
    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    wanted = root / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if wanted.is_file():
        return wanted
    found = sorted(root.glob("*/httpfs.duckdb_extension"))
    if not found:
        raise OperationalError(
            "DuckDB's httpfs extension is missing: reinstall duckdb-extension-httpfs "
            f"matching duckdb {duckdb.__version__}"
        )
    return found[-1]


def connect(*, threads: int | None = None, temp_directory: Path | None = None) -> Any:
    """A private in-memory DuckDB connection able to read and write encrypted Parquet."""
    config: dict[str, Any] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
    }
    if threads is not None:
        config["threads"] = threads
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute(f"LOAD '{sql_string(str(_httpfs_extension()))}'")
    except duckdb.Error as exc:
        con.close()
        raise OperationalError(f"cannot load DuckDB's httpfs extension: {exc}") from exc
    return con


def sql_string(text: str) -> str:
    """``text`` as the inside of an SQL string literal."""
    return text.replace("'", "''")


def add_key(con: Any, key: bytes) -> str:
    """Register ``key`` on ``con``; returns the name to use in ``encryption_config``."""
    if len(key) != 32:
        raise ValueError("data keys are 32 bytes")
    name = "k" + secrets.token_hex(8)
    encoded = base64.b64encode(key).decode("ascii")  # only [A-Za-z0-9+/=]: safe in a literal
    con.execute(f"PRAGMA add_parquet_key('{name}', '{encoded}')")
    return name


def write_encrypted(
    con: Any,
    reader: pa.RecordBatchReader,
    path: Path,
    key: bytes,
    *,
    row_group_size: int = 122_880,
) -> None:
    """Stream ``reader`` into an encrypted Parquet file at ``path``."""
    name = add_key(con, key)
    con.register("cleanroom_source", reader)
    try:
        con.execute(
            f"COPY (SELECT * FROM cleanroom_source) TO '{sql_string(str(path))}' "  # noqa: S608
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_size)}, "
            f"ENCRYPTION_CONFIG {{footer_key: '{name}'}})"
        )
    finally:
        con.unregister("cleanroom_source")


def read_encrypted(path: Path, key: bytes) -> pa.Table:
    """Read an encrypted Parquet file into Arrow; a wrong key is an :class:`IntegrityError`."""
    con = connect()
    try:
        name = add_key(con, key)
        try:
            return (
                con.execute(
                    f"SELECT * FROM read_parquet('{sql_string(str(path))}', "  # noqa: S608 - escaped path, generated key name
                    f"encryption_config={{footer_key: '{name}'}})"
                )
                .arrow()
                .read_all()
            )
        except (duckdb.Error, pa.ArrowInvalid) as exc:
            raise IntegrityError("decryption failed") from exc
    finally:
        con.close()
