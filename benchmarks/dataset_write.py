"""Encrypted dataset write vs plain Parquet write of the same rows.

Target: sealing (validation + encrypted Parquet + digest + signed manifest)
costs at most 1.3x a plain DuckDB Parquet write of the same Arrow table with
the same compression and row-group size. Runs alternate, medians compared.

    .venv/bin/python benchmarks/dataset_write.py [--rows 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

import duckdb
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median, timed
from cleanroom import Party, Schema, seal_dataset
from cleanroom.datasets.parquet import connect, write_encrypted

SCHEMA = Schema.from_json(
    {
        "identity_column": "card_id",
        "columns": [
            {"name": "card_id", "type": "string", "nullable": False},
            {"name": "merchant_id", "type": "int32", "nullable": False, "min": 0},
            {"name": "amount", "type": "decimal(12,2)", "nullable": False, "min": 0},
            {
                "name": "category",
                "type": "string",
                "allowed": ["grocery", "travel", "fuel", "electronics", "dining"],
            },
            {"name": "ts", "type": "timestamp", "nullable": False},
        ],
    }
)


def make_rows(rows: int) -> pa.Table:
    sql = f"""
        SELECT 'card-' || lpad(CAST(hash(i) % 2000000 AS VARCHAR), 7, '0') AS card_id,
               CAST(hash(i + 1) % 5000 AS INTEGER) AS merchant_id,
               CAST((hash(i + 2) % 100000) / 100.0 AS DECIMAL(12,2)) AS amount,
               ['grocery', 'travel', 'fuel', 'electronics', 'dining'][1 + (i % 5)] AS category,
               TIMESTAMP '2026-01-01' + to_seconds(CAST(hash(i + 3) % 7776000 AS BIGINT)) AS ts
        FROM range({rows}) t(i)
    """
    return duckdb.connect().execute(sql).arrow().read_all().cast(SCHEMA.arrow_schema())


def plain_write(table: pa.Table, path: Path) -> None:
    con = duckdb.connect()
    con.register("src", table)
    con.execute(
        f"COPY (SELECT * FROM src) TO '{path}' (FORMAT parquet, COMPRESSION zstd, "
        "ROW_GROUP_SIZE 122880)"
    )
    con.close()


def encrypted_copy(table: pa.Table, path: Path) -> None:
    con = connect()
    write_encrypted(
        con, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()), path, bytes(32)
    )
    con.close()


def seal_one(table: pa.Table, owner: Party, target: Path) -> None:
    seal_dataset(table, schema=SCHEMA, owner=owner, output=target, name="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print(f"rows: {args.rows:,}; repeats: {args.repeat} (alternating); medians")
    table = make_rows(args.rows)
    owner = Party.create("bench")
    work = Path(tempfile.mkdtemp(prefix="cleanroom-bench-"))
    plain, raw, sealed = [], [], []
    try:
        for i in range(args.repeat):
            plain.append(timed(lambda: plain_write(table, work / "plain.parquet")))
            raw.append(timed(lambda: encrypted_copy(table, work / "enc.parquet")))
            target = work / f"sealed-{i}"
            sealed.append(timed(partial(seal_one, table, owner, target)))
            shutil.rmtree(target)
        plain_size = (work / "plain.parquet").stat().st_size
        enc_size = (work / "enc.parquet").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)

    p, r, s = median(plain), median(raw), median(sealed)
    print(f"plain Parquet write (DuckDB, zstd)        {p:7.3f} s   {plain_size / 2**20:8.1f} MiB")
    print(
        f"encrypted Parquet write (DuckDB PME)      {r:7.3f} s   {enc_size / 2**20:8.1f} MiB"
        f"   ratio {r / p:.2f}x"
    )
    print(
        f"seal_dataset (validate+encrypt+sign)      {s:7.3f} s"
        f"                ratio {s / p:.2f}x   (target <= 1.30x)"
    )


if __name__ == "__main__":
    main()
