"""The SQL job kind: an approved DuckDB query over decrypted inputs, sandboxed.

The connection is in memory; each input is a view over its encrypted Parquet
file, read with its released key; then the sandbox closes: external access
off (only the input files stay readable), spill files encrypted in a private
directory, memory and thread limits, configuration locked so the query cannot
undo any of it, no extension installs or loads. The query must be exactly one
SELECT (or WITH ... SELECT); it is interrupted at the time limit and its
result refused beyond the row and byte limits.

Every :class:`QueryError` carries its failure category, decided by the
exception's type (:mod:`cleanroom.enclave.failures`); its message may quote
the engine (and so the data) and never leaves the enclave.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from cleanroom.datasets.parquet import add_key, connect, sql_string
from cleanroom.enclave.failures import JobFailedError, engine_category
from cleanroom.errors import OperationalError
from cleanroom.policy.check import ENGINE_SETTINGS

if TYPE_CHECKING:
    from cleanroom.models.manifest import ModelManifest


class QueryError(JobFailedError):
    """The approved query cannot run: refused, failed or over a limit.

    ``category`` is what may be published; the message is for inside the enclave."""


@dataclass(frozen=True)
class Limits:
    time_s: float = 600.0
    memory: str = "4GB"
    threads: int | None = None
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 1 << 30
    max_temp: str = "20GB"
    release_wait_s: float = 120.0  # for every owner's key agent to release its input


@dataclass(frozen=True)
class Input:
    name: str
    path: Path
    key: bytes
    model: ModelManifest | None = None  # a model asset's verified manifest
    rows: int | None = None  # the row count its owner signed (None: not checked by the kind)


_QUERY_START = re.compile(
    r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/|\()*(SELECT|WITH|FROM|VALUES)\b", re.IGNORECASE | re.DOTALL
)


def memory_mb(text: str) -> int:
    """A DuckDB memory size (``"4GB"``, ``"512MiB"``) in MB of 1,000,000 bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT])(i?)B\s*", text)
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    number, unit, binary = match.groups()
    size = float(number) * (1024 if binary else 1000) ** ("KMGT".index(unit) + 1)
    return max(1, int(size // 1_000_000))


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_single_select(con: duckdb.DuckDBPyConnection, text: str) -> None:
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise QueryError(f"the analysis is not valid SQL: {exc}", category="query refused") from exc
    # DuckDB rewrites some PRAGMAs and SHOWs into SELECTs: check the written keyword too
    if (
        len(statements) != 1
        or statements[0].type != duckdb.StatementType.SELECT
        or not _QUERY_START.match(text)
    ):
        raise QueryError(
            "an SQL analysis must be exactly one SELECT statement", category="query refused"
        )


@dataclass(frozen=True)
class JobResult:
    """What a job kind produces: the rows to seal, how long its phases took, and for
    a kind that runs code in the confined child, the confinement that held."""

    table: pa.Table
    phases: dict[str, int]
    confinement: dict[str, object] | None = None


def run_sql(text: str, inputs: list[Input], limits: Limits, work: Path) -> JobResult:
    """Run ``text`` over ``inputs`` inside the sandbox; returns the result rows."""
    started = time.perf_counter()
    spill = work / "spill"
    spill.mkdir(mode=0o700, exist_ok=True)
    con = connect(threads=limits.threads, temp_directory=spill)
    try:
        check_single_select(con, text)
        for item in inputs:
            name = add_key(con, item.key)
            _execute(
                con,
                f"CREATE VIEW {quote_identifier(item.name)} AS SELECT * FROM read_parquet("  # noqa: S608
                f"'{sql_string(str(item.path))}', encryption_config={{footer_key: '{name}'}})",
                f"input {item.name!r} cannot be opened with its key",
            )
        paths = ", ".join(f"'{sql_string(str(item.path))}'" for item in inputs)
        con.execute(f"SET allowed_paths = [{paths}]")
        con.execute("SET temp_file_encryption = true")
        con.execute(f"SET memory_limit = '{sql_string(limits.memory)}'")
        con.execute(f"SET max_temp_directory_size = '{sql_string(limits.max_temp)}'")
        con.execute("SET enable_external_access = false")
        for setting in ENGINE_SETTINGS:  # what the checked SQL needs to fail on no value
            con.execute(setting)
        con.execute("SET lock_configuration = true")
        prepared = time.perf_counter()
        table = _fetch(con, text, limits)
        done = time.perf_counter()
        return JobResult(
            table,
            {
                "prepare_ms": round((prepared - started) * 1000),
                "query_ms": round((done - prepared) * 1000),
            },
        )
    finally:
        con.close()


def _execute(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> None:
    """Open an input: any failure means its ciphertext or key is not what was released."""
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        raise QueryError(f"{what}: {exc}", category="integrity error") from exc


def _fetch(con: duckdb.DuckDBPyConnection, text: str, limits: Limits) -> pa.Table:
    timer = threading.Timer(limits.time_s, con.interrupt)
    timer.start()
    try:
        reader = con.execute(text).to_arrow_reader(65_536)
        batches: list[pa.RecordBatch] = []
        rows = size = 0
        for batch in reader:
            rows += batch.num_rows
            size += batch.nbytes
            if rows > limits.max_result_rows:
                raise QueryError(
                    f"the result has more than {limits.max_result_rows} rows",
                    category="result too large",
                )
            if size > limits.max_result_bytes:
                raise QueryError(
                    f"the result is larger than {limits.max_result_bytes} bytes",
                    category="result too large",
                )
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException as exc:
        raise QueryError(
            f"the query ran over its time limit ({limits.time_s:g} s)", category="time limit"
        ) from exc
    except duckdb.OutOfMemoryException as exc:
        raise QueryError(
            f"the query ran over its memory limit ({limits.memory}): {exc}",
            category="memory limit",
        ) from exc
    except duckdb.Error as exc:
        raise QueryError(f"the query failed: {exc}", category=engine_category(exc)) from exc
    except pa.ArrowException as exc:
        raise OperationalError(f"reading the result failed: {exc}") from exc
    finally:
        timer.cancel()
