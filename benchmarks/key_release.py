"""Per-job key-release overhead: owner-held release vs the attested key broker.

The same room shape (two data owners, two small datasets, one approved
analysis) twice on one `cleanroom serve`: once with both owners' keys kept at
home and released by their key agents (each an agent on this machine, with
its own connection, polling every 20 ms), once with both keys deposited with
the broker. Jobs alternate between the two rooms; the exact
``attest_and_release_ms`` phase (challenge, evidence, key request, and waiting
until every input is released) is read from the operator's job log, and the
wall time from request to result is measured by the analyst. Medians.

Target: owner-held release <= 1.2x the broker's fixed overhead.

    .venv/bin/python benchmarks/key_release.py [--jobs 15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median
from cleanroom import Party, Schema
from cleanroom.attestation import measure
from cleanroom.client import Client, Room
from cleanroom.service.local import local_service
from tpch_jobs import approve_open, exact_timings, start_agent

SCHEMA = Schema.from_json(
    {
        "identity_column": "customer",
        "columns": [
            {"name": "customer", "type": "string", "nullable": False},
            {"name": "amount", "type": "int64"},
        ],
    }
)
SQL = "SELECT COUNT(*) AS n FROM transactions t JOIN customers c ON t.customer = c.customer"


STOP: list[threading.Event] = []


def setup(url: str, work: Path, release: str) -> Room:
    parties = {n: Party.create(n) for n in ("bank", "merchant")}
    clients = {n: Client(url, p, state_dir=work / release / n) for n, p in parties.items()}
    roles = {
        "bank": ["data_provider", "analyst", "result_recipient"],
        "merchant": ["data_provider"],
    }
    created = clients["bank"].create_room(
        f"release-{release}", [(p.identity_document(), roles[n]) for n, p in parties.items()]
    )
    rooms = {n: c.room(created.id) for n, c in clients.items()}
    rooms["merchant"].accept()
    # the contract first: a broker deposit needs the attested broker approved
    rooms["bank"].propose(
        {
            "type": "set_measurements",
            "measurements": [{"platform": "insecure-virtual", "value": measure()}],
            "allow_insecure_virtual": True,
        }
    )
    for room in rooms.values():
        approve_open(room)
    table = pa.table({"customer": [f"c{i}" for i in range(1000)], "amount": list(range(1000))})
    for owner, name in (("bank", "transactions"), ("merchant", "customers")):
        rooms[owner].publish_dataset(
            table,
            schema=SCHEMA,
            name=name,
            release_to=["insecure-virtual"],
            release="owner" if release == "owner" else "broker",
        )
        for room in rooms.values():
            approve_open(room)
    rooms["bank"].propose(
        {
            "type": "add_analysis",
            "name": "count",
            "language": "sql",
            "text": SQL,
            "inputs": ["transactions", "customers"],
            "recipients": [parties["bank"].fingerprint],
        }
    )
    for room in rooms.values():
        approve_open(room)
    if release == "owner":
        for name, party in parties.items():
            STOP.append(start_agent(url, party, created.id, work / release / name))
    return rooms["bank"]


def run(room: Room, data: Path) -> tuple[float, float]:
    start = time.perf_counter()
    job = room.run_job("count")
    view = room.wait_job(job, timeout=120, poll=0.02)
    wall = (time.perf_counter() - start) * 1000
    if view["status"] != "succeeded":
        raise SystemExit(f"job failed: {view['reason']}")
    return exact_timings(data, job)["phases"]["attest_and_release_ms"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=15)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d} {machine()}")
    with tempfile.TemporaryDirectory(prefix="cleanroom-release-") as tmp:
        work = Path(tmp)
        data = work / "data"
        with local_service(data, env={"CLEANROOM_JOB_PARALLELISM": "1"}) as url:
            rooms = {mode: setup(url, work, mode) for mode in ("broker", "owner")}
            for room in rooms.values():  # warm-up, not timed
                run(room, data)
            timings: dict[str, list[tuple[float, float]]] = {"broker": [], "owner": []}
            for _ in range(args.jobs):
                for mode, room in rooms.items():
                    timings[mode].append(run(room, data))
            for stop in STOP:
                stop.set()
    release = {m: median([r for r, _ in t]) for m, t in timings.items()}
    wall = {m: median([w for _, w in t]) for m, t in timings.items()}
    print(f"{'':24s} {'attest+release':>15s} {'request to result':>18s}")
    for mode in ("broker", "owner"):
        print(f"{mode:24s} {release[mode]:12.0f} ms {wall[mode]:15.0f} ms")
    print(
        f"owner-held / broker: {release['owner'] / release['broker']:.2f}x attest+release, "
        f"{wall['owner'] / wall['broker']:.2f}x request to result "
        f"({args.jobs} jobs each, medians; target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
