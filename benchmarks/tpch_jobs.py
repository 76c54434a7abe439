"""TPC-H SF1: the 22 queries as clean room jobs vs plain DuckDB, in the same run.

Each query is an approved analysis; each run is a real job: a `cleanroom serve`
process starts an enclave process, which attests (insecure virtual platform),
obtains the keys from the owner's key agent (``--release owner``, the default,
an agent on this machine) or the key broker (``--release broker``), verifies
the ledger, downloads the encrypted inputs, runs the query over encrypted
Parquet in its sandbox, seals the result to the recipient and records it.
The plain side runs the same SQL in a fresh DuckDB connection over plaintext
Parquet files with the same threads. Runs alternate (plain, job, plain,
job...) and medians are compared.

Targets: query execution inside the enclave (its ``query_ms`` phase: the
approved SQL executed and its result fetched, over encrypted Parquet) <= 1.15x
plain (the same, over plaintext Parquet) in total over the 22 queries; fixed
per-job overhead (attestation + key release, result sealing and upload)
<= 300 ms. Every other phase is printed too: process start, sandbox set-up
(``prepare_ms``: connection, extension, keys, views, limits), ledger
verification, input download, and the wall time from request to result.
The ledger shows only coarse buckets of these timings; the exact ones are read
from the operator's job log (``DATA_DIR/jobs/<job>.log``), as an operator may.

    .venv/bin/python benchmarks/tpch_jobs.py [--sf 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_tpch
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median
from cleanroom import Party, Schema
from cleanroom.agent import KeyAgent
from cleanroom.attestation import measure
from cleanroom.client import Client, Room
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.service.local import local_service

TABLES = ["lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region"]


def tpch(con: duckdb.DuckDBPyConnection) -> None:
    root = Path(duckdb_extension_tpch.__file__).parent / "extensions"
    wanted = root / f"v{duckdb.__version__}" / "tpch.duckdb_extension"
    con.execute(f"LOAD '{wanted if wanted.exists() else next(root.rglob('*.duckdb_extension'))}'")


def generate(sf: float, work: Path) -> dict[int, str]:
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    tpch(con)
    con.execute(f"CALL dbgen(sf={sf})")
    for table in TABLES:
        # the same layout as sealed datasets (zstd, 122,880-row groups): only encryption differs
        con.execute(
            f"COPY {table} TO '{work / table}.parquet' "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
        )
    queries = dict(con.execute("SELECT query_nr, query FROM tpch_queries()").fetchall())
    con.close()
    return queries


def schema_of(path: Path) -> Schema:
    columns = []
    for field in pq.read_schema(path):
        name = str(field.type)
        kind = {
            "int32": "int32",
            "int64": "int64",
            "string": "string",
            "date32[day]": "date",
            "double": "float64",
            "large_string": "string",
        }.get(name)
        if kind is None and name.startswith("decimal128"):
            kind = "decimal" + name[len("decimal128") :].replace(" ", "")
        if kind is None:
            raise SystemExit(f"{path.name}: no schema type for {name}")
        columns.append({"name": field.name, "type": kind, "nullable": False})
    return Schema.from_json({"identity_column": columns[0]["name"], "columns": columns})


PLAIN = """
import sys, time, duckdb, pyarrow
work, tables, sql = sys.argv[1], sys.argv[2].split(","), sys.stdin.read()
con = duckdb.connect()
for t in tables:
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{work}/{t}.parquet')")
con.execute("SELECT 1").to_arrow_table()  # lazy imports happen here, as in the warm enclave
start = time.perf_counter()
con.execute(sql).to_arrow_table()
print((time.perf_counter() - start) * 1000)
"""


def plain_run(work: Path, sql: str) -> float:
    """Plain DuckDB in a fresh process, as each job's enclave is: views over the
    plaintext Parquet and a warm-up (not timed, as the enclave's start-up and
    ``prepare_ms`` are not), then the query and its fetch (timed)."""
    result = subprocess.run(
        [sys.executable, "-c", PLAIN, str(work), ",".join(TABLES)],
        input=sql,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout)


def approve_open(room: Room) -> None:
    for proposal in room.proposals():
        if proposal["status"] == "open":
            room.approve(proposal["id"])


def start_agent(url: str, party: Party, room_id: str, state: Path) -> threading.Event:
    """The owner's key agent on the same machine, with its own connection."""
    client = Client(url, party, state_dir=state / "agent")
    agent = KeyAgent(client.room(room_id), KeyVault(party, state / VAULT_DIR))
    stop = threading.Event()
    threading.Thread(target=agent.serve, kwargs={"poll_s": 0.02, "stop": stop}, daemon=True).start()
    return stop


def setup_room(url: str, work: Path, queries: dict[int, str], *, release: str = "owner") -> Room:
    party = Party.create("warehouse")
    client = Client(url, party, state_dir=work / "state")
    room = client.create_room(
        "tpch", [(party.identity_document(), ["data_provider", "analyst", "result_recipient"])]
    )
    for table in TABLES:
        path = work / f"{table}.parquet"
        room.publish_dataset(
            path,
            schema=schema_of(path),
            name=table,
            release_to=["insecure-virtual"],
            release="owner" if release == "owner" else "broker",
        )
    room.propose(
        {
            "type": "set_measurements",
            "measurements": [{"platform": "insecure-virtual", "value": measure()}],
            "allow_insecure_virtual": True,
        }
    )
    approve_open(room)
    for number, sql in queries.items():
        inputs = [t for t in TABLES if re.search(rf"\b{t}\b", sql)]
        room.propose(
            {
                "type": "add_analysis",
                "name": f"q{number:02d}",
                "language": "sql",
                "text": sql,
                "inputs": inputs,
                "recipients": [party.fingerprint],
            }
        )
    approve_open(room)
    if release == "owner":
        start_agent(url, party, room.id, work / "state")
    return room


def job_run(room: Room, number: int, data: Path) -> dict[str, Any]:
    start = time.perf_counter()
    job = room.run_job(f"q{number:02d}")
    view = room.wait_job(job, timeout=900, poll=0.05)
    if view["status"] != "succeeded":
        raise SystemExit(f"q{number:02d} failed: {view['reason']}")
    wall_ms = (time.perf_counter() - start) * 1000
    return {**exact_timings(data, job), "wall_ms": wall_ms}


def exact_timings(data: Path, job: str) -> dict[str, Any]:
    """The enclave's exact timings from the job log the runner writes once the
    enclave process exits (the ledger's ``job.complete`` has buckets only)."""
    log = data / "jobs" / f"{job}.log"
    deadline = time.monotonic() + 30
    while True:
        try:
            timings: dict[str, Any] = json.loads(log.read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            if time.monotonic() > deadline:
                raise SystemExit(f"no timings in {log}") from None
            time.sleep(0.05)
        else:
            return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--release", choices=["owner", "broker"], default="owner", help="who releases the keys"
    )
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d} {machine()}; duckdb {duckdb.__version__}")
    with tempfile.TemporaryDirectory(prefix="cleanroom-tpch-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        queries = generate(args.sf, work)
        elapsed = time.perf_counter() - started
        print(f"TPC-H SF{args.sf:g} generated and written as Parquet in {elapsed:.1f} s")
        with local_service(work / "data", env={"CLEANROOM_JOB_PARALLELISM": "1"}) as url:
            started = time.perf_counter()
            room = setup_room(url, work, queries, release=args.release)
            print(
                f"8 tables sealed, uploaded, keys deposited, 22 analyses approved in "
                f"{time.perf_counter() - started:.1f} s"
            )
            rows = []
            for number in sorted(queries):
                plain, runs = [], []
                for _ in range(args.repeat):
                    plain.append(plain_run(work, queries[number]))
                    runs.append(job_run(room, number, work / "data"))
                rows.append((number, plain, runs))
                run_ms = median([r["phases"]["query_ms"] for r in runs])
                print(
                    f"q{number:02d}: plain {median(plain):8.1f} ms   enclave query {run_ms:8.1f} ms"
                    f"   ratio {run_ms / median(plain):5.2f}x"
                )
    report(rows)


def report(rows: list[tuple[int, list[float], list[dict[str, Any]]]]) -> None:
    plain_total = sum(median(p) for _, p, _ in rows)
    run_total = sum(median([r["phases"]["query_ms"] for r in runs]) for _, _, runs in rows)
    every = [r for _, _, runs in rows for r in runs]

    def phase(name: str) -> float:
        return median([r["phases"][name] for r in every])

    fixed = median(
        [
            r["phases"]["attest_and_release_ms"] + r["phases"]["seal_ms"] + r["phases"]["upload_ms"]
            for r in every
        ]
    )
    print()
    print(
        f"total query execution: plain {plain_total:.0f} ms, enclave {run_total:.0f} ms, "
        f"ratio {run_total / plain_total:.3f}x (target <= 1.15x)"
    )
    print(
        f"fixed per-job overhead (attest + key release + seal + upload), median: {fixed:.0f} ms "
        f"(target <= 300 ms)"
    )
    print(
        f"  attest+release {phase('attest_and_release_ms'):.0f} ms, "
        f"seal {phase('seal_ms'):.0f} ms, "
        f"upload {phase('upload_ms'):.0f} ms"
    )
    print(
        f"other per-job costs, median: process start {phase('start_ms'):.0f} ms, "
        f"sandbox set-up {phase('prepare_ms'):.0f} ms, "
        f"ledger verify {phase('ledger_verify_ms'):.0f} ms, "
        f"input download+key open {phase('inputs_ms'):.0f} ms, "
        f"request to result (wall) {median([r['wall_ms'] for r in every]):.0f} ms"
    )


if __name__ == "__main__":
    main()
