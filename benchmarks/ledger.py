"""Ledger throughput: signed appends, receipt verification, full audit verify.

Targets: >= 2,000 appends/s (single writer, batched commits) on SQLite and
PostgreSQL; >= 5,000 receipt verifications/s; a 100k-entry ``audit verify``
in <= 10 s. Each figure is printed beside the plain alternative measured in
the same run: raw INSERTs of the same bytes in the same batches, and bare
Ed25519 verification of the same signatures.

    .venv/bin/python benchmarks/ledger.py [--entries 100000] [--batch 100]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]
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
        # 1. appends: pre-signed statements (signing is the clients' work), batched commits
        tokens = sign_many(bank, new_room_id(), args.appends)  # same sizes, for raw INSERTs
        results = {}
        for kind in ("sqlite", "postgres"):
            if kind == "sqlite":
                store: LedgerStore = SQLiteStore(work / f"{kind}.sqlite3")
                raw = raw_sqlite_inserts(work / "raw.sqlite3", tokens, args.batch)
            else:
                schema = f"bench_{secrets.token_hex(4)}"
                store = PostgresStore(args.postgres, schema=schema)
                raw = raw_postgres_inserts(args.postgres, tokens, args.batch)
            ledger = Ledger(store, Party.create("ledger"))
            room = new_room(ledger, bank, merchant)
            signed = sign_many(bank, room, args.appends)
            start = time.perf_counter()
            for i in range(0, len(signed), args.batch):
                ledger.submit(room, signed[i : i + args.batch])
            rate = len(signed) / (time.perf_counter() - start)
            results[kind] = (rate, raw)
            store.close()
            if kind == "postgres":
                import psycopg  # noqa: PLC0415

                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        for kind, (rate, raw) in results.items():
            print(
                f"appends/s {kind:9} {rate:9,.0f}   raw INSERT of the same bytes {raw:9,.0f}"
                f"   ratio {raw / rate:5.1f}x slower   (target >= 2,000/s)"
            )

        # 2. a ledger of --entries entries, then receipts and the full audit
        ledger = Ledger(
            SQLiteStore(work / "big.sqlite3"),
            Party.create("ledger"),
            policy=TreeHeadPolicy(max_entries=1000),
        )
        room = new_room(ledger, bank, merchant)
        remaining = args.entries - ledger.size(room)
        for i in track(range(0, remaining, 1000), description=f"building {args.entries:,} entries"):
            ledger.submit(
                room, [propose(bank, room, ACTION) for _ in range(min(1000, remaining - i))]
            )
        service = ledger.service.identity
        receipts = [
            json.loads(json.dumps(ledger.receipt(room, s).to_json()))
            for s in range(0, ledger.size(room), max(1, ledger.size(room) // args.receipts))
        ]
        rates = []
        for _ in range(3):
            seconds = timed(lambda: [verify_receipt(r, service) for r in receipts])
            rates.append(len(receipts) / seconds)
        head = ledger.tree_head(room)
        parsed = jws.parse(head.token, typ="cleanroom-tree-head+jws")
        raw_seconds = timed(
            lambda: [jws.verify_parsed(parsed, service.signing_key) for _ in receipts]
        )
        raw_rate = len(receipts) / raw_seconds
        print(
            f"receipt verifications/s {median(rates):9,.0f}   bare Ed25519 verify {raw_rate:9,.0f}"
            f"   ratio {raw_rate / median(rates):4.2f}x   (target >= 5,000/s)"
        )

        document = json.loads(json.dumps(ledger.export(room)))
        entries = len(document["entries"])
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
        verify_times = [
            timed(lambda: subprocess.run(command, check=True, capture_output=True))
            for _ in range(3)
        ]
        in_process = median([timed(lambda: verify_export(document, service)) for _ in range(3)])
        keys = {
            bank.fingerprint: bank.identity.signing_key,
            merchant.fingerprint: merchant.identity.signing_key,
        }
        statements = [
            jws.parse(e["statement"], typ="cleanroom-statement+jws") for e in document["entries"]
        ]
        bare = timed(lambda: [jws.verify_parsed(p, keys[p.kid]) for p in statements])
        print(
            f"audit verify of {entries:,} entries {median(verify_times):6.2f} s   "
            f"bare Ed25519 verify of the same signatures, one core {bare:6.2f} s   "
            f"ratio {median(verify_times) / bare:4.2f}x   (target <= 10 s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
