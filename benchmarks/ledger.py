"""Ledger throughput: signed appends, receipt verification, full audit verify.

Targets: >= 2,000 appends/s (single writer, batched commits) on SQLite and
PostgreSQL; >= 5,000 receipt verifications/s; a 100k-entry ``cleanroom audit
verify`` in <= 10 s. Each figure is printed beside the plain alternative
measured in the same run: raw INSERTs of the same bytes in the same batches,
and bare Ed25519 verification of the same signatures.

    .venv/bin/python benchmarks/ledger.py [--entries 100000] [--appends 20000]
        [--batch 100] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rich.progress import track

from _common import machine, median, timed
from cleanroom import Party
from cleanroom.crypto import jws
from cleanroom.governance import (
    member_accept,
    new_room_id,
    propose,
    room_create,
    statement_digest,
)
from cleanroom.ledger import (
    Ledger,
    PostgresStore,
    SQLiteStore,
    TreeHeadPolicy,
    verify_export,
    verify_receipt,
)
from cleanroom.ledger.store import LedgerStore

ACTION = {"type": "set_measurements", "measurements": [{"platform": "sev-snp", "value": "ab" * 48}]}


def sign_many(party: Party, room: str, count: int) -> list[str]:
    return [propose(party, room, ACTION) for _ in track(range(count), description="signing")]


def new_room(ledger: Ledger, bank: Party, merchant: Party) -> str:
    room = new_room_id()
    token = room_create(
        bank,
        room,
        name="bench",
        members=[
            (bank.identity_document(), ["data_provider", "analyst"]),
            (merchant.identity_document(), ["data_provider"]),
        ],
    )
    ledger.create_room(token)
    ledger.submit(room, [member_accept(merchant, room, statement_digest(token))])
    return room


def raw_sqlite_inserts(path: Path, tokens: list[str], batch: int) -> float:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, data BLOB)")

    def run() -> None:
        for i in range(0, len(tokens), batch):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO t VALUES (?, ?)",
                [(i + j, t.encode()) for j, t in enumerate(tokens[i : i + batch])],
            )
            db.execute("COMMIT")

    seconds = timed(run)
    db.close()
    return len(tokens) / seconds


def raw_postgres_inserts(url: str, tokens: list[str], batch: int) -> float:
    import psycopg  # noqa: PLC0415

    table = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (seq BIGINT PRIMARY KEY, data BYTEA)")

        def run() -> None:
            for i in range(0, len(tokens), batch):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {table} VALUES (%s, %s)",
                        [(i + j, t.encode()) for j, t in enumerate(tokens[i : i + batch])],
                    )

        seconds = timed(run)
        conn.execute(f"DROP TABLE {table}")
    return len(tokens) / seconds


def ledger_appends(
    store: LedgerStore, count: int, batch: int, bank: Party, merchant: Party
) -> float:
    """Appends/s of pre-signed statements (signing is the clients' work)."""
    ledger = Ledger(store, Party.create("ledger"))
    room = new_room(ledger, bank, merchant)
    signed = sign_many(bank, room, count)
    start = time.perf_counter()
    for i in range(0, len(signed), batch):
        ledger.submit(room, signed[i : i + batch])
    return len(signed) / (time.perf_counter() - start)


def bench_appends(args: argparse.Namespace, work: Path, bank: Party, merchant: Party) -> None:
    tokens = sign_many(bank, new_room_id(), args.appends)  # the same sizes, for raw INSERTs
    sqlite_rate = ledger_appends(
        SQLiteStore(work / "s.sqlite3"), args.appends, args.batch, bank, merchant
    )
    sqlite_raw = raw_sqlite_inserts(work / "raw.sqlite3", tokens, args.batch)
    schema = f"bench_{secrets.token_hex(4)}"
    postgres_rate = ledger_appends(
        PostgresStore(args.postgres, schema=schema), args.appends, args.batch, bank, merchant
    )
    postgres_raw = raw_postgres_inserts(args.postgres, tokens, args.batch)
    import psycopg  # noqa: PLC0415

    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    for kind, rate, raw in (
        ("sqlite", sqlite_rate, sqlite_raw),
        ("postgres", postgres_rate, postgres_raw),
    ):
        print(
            f"appends/s {kind:9} {rate:9,.0f}   raw INSERT of the same bytes {raw:9,.0f}"
            f"   ratio {raw / rate:5.1f}x slower   (target >= 2,000/s)"
        )


def build_ledger(work: Path, entries: int, bank: Party, merchant: Party) -> tuple[Ledger, str]:
    ledger = Ledger(
        SQLiteStore(work / "big.sqlite3"),
        Party.create("ledger"),
        policy=TreeHeadPolicy(max_entries=1000),
    )
    room = new_room(ledger, bank, merchant)
    remaining = entries - ledger.size(room)
    for i in track(range(0, remaining, 1000), description=f"building {entries:,} entries"):
        ledger.submit(room, [propose(bank, room, ACTION) for _ in range(min(1000, remaining - i))])
    return ledger, room


def bench_receipts(ledger: Ledger, room: str, count: int) -> None:
    service = ledger.service.identity
    step = max(1, ledger.size(room) // count)
    receipts = [
        json.loads(json.dumps(ledger.receipt(room, s).to_json()))
        for s in range(0, ledger.size(room), step)
    ]
    rate = median(
        [
            len(receipts) / timed(lambda: [verify_receipt(r, service) for r in receipts])
            for _ in range(3)
        ]
    )
    parsed = jws.parse(ledger.tree_head(room).token, typ="cleanroom-tree-head+jws")
    raw = len(receipts) / timed(
        lambda: [jws.verify_parsed(parsed, service.signing_key) for _ in receipts]
    )
    print(
        f"receipt verifications/s {rate:9,.0f}   bare Ed25519 verify {raw:9,.0f}"
        f"   ratio {raw / rate:4.2f}x   (target >= 5,000/s)"
    )


def bench_audit(ledger: Ledger, room: str, work: Path, bank: Party, merchant: Party) -> None:
    document = json.loads(json.dumps(ledger.export(room)))
    export_file, key_file = work / "export.json", work / "service.json"
    export_file.write_text(json.dumps(document))
    key_file.write_text(json.dumps(ledger.service.identity_document()))
    command = [
        sys.executable,
        "-m",
        "cleanroom",
        "audit",
        "verify",
        str(export_file),
        "--service-key",
        str(key_file),
    ]
    cli = median(
        [timed(lambda: subprocess.run(command, check=True, capture_output=True)) for _ in range(3)]
    )
    in_process = median(
        [timed(lambda: verify_export(document, ledger.service.identity)) for _ in range(3)]
    )
    keys = {
        bank.fingerprint: bank.identity.signing_key,
        merchant.fingerprint: merchant.identity.signing_key,
    }
    statements = [
        jws.parse(e["statement"], typ="cleanroom-statement+jws") for e in document["entries"]
    ]
    bare = timed(lambda: [jws.verify_parsed(p, keys[p.kid]) for p in statements])
    print(
        f"`cleanroom audit verify` of {len(statements):,} entries {cli:6.2f} s "
        f"(verify_export alone {in_process:5.2f} s)   bare Ed25519 verify of the same "
        f"signatures, one core {bare:6.2f} s   ratio {cli / bare:4.2f}x   (target <= 10 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--receipts", type=int, default=5_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="cleanroom-ledger-bench-"))
    bank, merchant = Party.create("bank"), Party.create("merchant")
    try:
        bench_appends(args, work, bank, merchant)
        ledger, room = build_ledger(work, args.entries, bank, merchant)
        bench_receipts(ledger, room, args.receipts)
        bench_audit(ledger, room, work, bank, merchant)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
