"""The service over loopback HTTP: upload throughput and governance operations.

Targets: a 1 GiB ciphertext upload through the service (signed request,
streamed, hashed, checked against the signed manifest, fsynced, published
atomically) costs <= 1.5x a plain streaming upload of the same bytes to a
bare uvicorn/Starlette endpoint that writes and fsyncs them; >= 300 governance
operations/s (signed statements, verified and durably appended, receipts
returned and verified by the client) with 20 concurrent clients, zero errors.

The hostile mix (``benchmarks/_hostile.py``): honest members in three rooms
(signed proposals, ballots and reads) alone, then beside an attacker's edge
attacks (oversized and slow bodies, slow request heads, room creation past the
rate limit), beside its expensive proposals (a 4,000-term OR chain for the
policy check) alone, and beside everything at once; honest throughput and p99
side by side, with the ratios, and the service's CPU time and memory. Target
(tests/attacks/test_hostile_mix.py): honest p99 beside the attacker <= 2x the
quiet p99 + 50 ms, zero honest errors.

    .venv/bin/python benchmarks/service.py [--gib 1] [--clients 20] [--ops 2000]
    .venv/bin/python benchmarks/service.py --hostile [--phase-s 10] [--rounds 2]   # only the mix
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median, timed
from _hostile import (
    ALL,
    EDGE,
    SERVICE_ENV,
    Attacker,
    HonestRun,
    RssPeak,
    cpu_seconds,
    honest_rooms,
    merge_reports,
    rss_mib,
    run_honest,
    service_pid,
)
from cleanroom import Party, Schema
from cleanroom.client import Client
from cleanroom.datasets.manifest import Manifest, key_id_of
from cleanroom.service.local import free_port, local_service

PLAIN_SERVER = """
import os, sys
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import uvicorn

async def put(request):
    path = os.path.join(sys.argv[2], "upload.bin")
    with open(path, "wb") as fh:
        async for chunk in request.stream():
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return JSONResponse({"ok": True}, status_code=201)

uvicorn.run(Starlette(routes=[Route("/put", put, methods=["PUT"])]), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning")
"""


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
        except httpx.HTTPError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"{url} did not come up")


def make_blob(path: Path, size: int) -> str:
    block = os.urandom(8 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            fh.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def signed_manifest(owner: Party, digest: str, size: int) -> dict[str, object]:
    """A real, owner-signed manifest for the benchmark's ciphertext bytes."""
    manifest = Manifest(
        name="bench",
        owner_name=owner.name,
        owner_fingerprint=owner.fingerprint,
        schema=Schema.from_json(
            {
                "identity_column": "id",
                "columns": [{"name": "id", "type": "string", "nullable": False}],
            }
        ),
        rows=1,
        sha256=digest,
        size=size,
        key_id=key_id_of(os.urandom(32)),
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return owner.sign_document(manifest.payload(), typ="cleanroom-dataset-manifest+jws")


def chunks(path: Path) -> object:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


def bench_upload(work: Path, gib: float, repeat: int) -> None:
    size = int(gib * (1 << 30))
    blob = work / "blob.bin"
    digest = make_blob(blob, size)
    plain_port, plain_dir = free_port(), work / "plain"
    plain_dir.mkdir()
    script = work / "plain_server.py"
    script.write_text(PLAIN_SERVER)
    plain = subprocess.Popen([sys.executable, str(script), str(plain_port), str(plain_dir)])
    data = work / "service"
    try:
        wait_up(f"http://127.0.0.1:{plain_port}/")
        with local_service(data) as url:
            owner = Party.create("owner")
            with Client(url, owner, timeout=600) as client:
                room = client.create_room("bench", [(owner.identity_document(), ["data_provider"])])
                room.propose(
                    {"type": "register_dataset", "manifest": signed_manifest(owner, digest, size)}
                )
                plain_times, service_times = [], []
                with httpx.Client(timeout=600) as http:
                    for _ in range(repeat):
                        plain_times.append(
                            timed(
                                lambda: http.put(
                                    f"http://127.0.0.1:{plain_port}/put",
                                    content=chunks(blob),
                                    headers={"Content-Length": str(size)},
                                ).raise_for_status()
                            )
                        )
                        target = data / "blobs" / digest
                        target.unlink(missing_ok=True)  # upload it again each time
                        service_times.append(timed(lambda: room.upload(blob)))
            p, s = median(plain_times), median(service_times)
            mib = size / 2**20
            print(
                f"upload {size / 2**30:.2f} GiB   plain streaming PUT {p:6.2f} s "
                f"({mib / p:6.0f} MiB/s)   through the service {s:6.2f} s ({mib / s:6.0f} MiB/s)"
                f"   ratio {s / p:4.2f}x   (target <= 1.5x)"
            )
    finally:
        plain.terminate()
        plain.wait()


def bench_governance(work: Path, clients: int, ops: int) -> None:
    with local_service(work / "gov") as url:
        parties = [Party.create(f"member{i}") for i in range(clients)]
        members = [(p.identity_document(), ["data_provider", "analyst"]) for p in parties]
        handles = [Client(url, p) for p in parties]
        room = handles[0].create_room("bench", members)
        rooms = [h.room(room.id) for h in handles]
        for r in rooms[1:]:
            r.accept()
        errors: list[BaseException] = []
        lock = threading.Lock()
        per_client = ops // clients

        def work_of(index: int) -> None:
            for _ in range(per_client):
                try:
                    rooms[index].propose({"type": "set_measurements", "measurements": []})
                except Exception as exc:  # noqa: BLE001 - counted and reported below
                    with lock:
                        errors.append(exc)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(work_of, range(clients)))
        seconds = time.perf_counter() - start
        done = per_client * clients
        verified = rooms[0].audit.verify()
        for h in handles:
            h.close()
        print(
            f"governance ops/s with {clients} concurrent clients {done / seconds:7.0f} "
            f"({done} signed proposals, {len(errors)} errors, ledger of "
            f"{len(verified.entries)} entries verified afterwards)   (target >= 300/s, 0 errors)"
        )
        if errors:
            print(f"first error: {errors[0]!r}")


HOSTILE_PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("honest members alone", ()),
    ("beside the edge attacks", EDGE),
    ("beside expensive proposals only", ("expensive",)),
    ("beside every attack at once", ALL),
]


def bench_hostile(work: Path, phase_s: float, rounds: int, rooms: int) -> None:
    data = work / "hostile"
    runs: dict[str, list[HonestRun]] = {name: [] for name, _ in HOSTILE_PHASES}
    cpu = dict.fromkeys(runs, 0.0)  # the service's CPU seconds in each phase
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    with local_service(data, env=SERVICE_ENV) as url:
        pairs = honest_rooms(url, rooms)
        try:
            with Attacker(url, pairs[0][0].id) as attacker:
                run_honest(pairs, 2.0)  # warm-up
                pid = service_pid(data)
                before = rss_mib(pid)
                with RssPeak(pid) as memory:
                    for _ in range(rounds):
                        for name, kinds in HOSTILE_PHASES:
                            used = cpu_seconds(pid)
                            if kinds:
                                attacker.start(kinds)
                            runs[name].append(run_honest(pairs, phase_s))
                            if kinds:
                                reports[name].append(attacker.stop())
                            cpu[name] += cpu_seconds(pid) - used
        finally:
            for pair in pairs:
                for room in pair:
                    room.client.close()
    print(
        f"hostile mix: {rooms} rooms x 2 honest members (each cycle: a proposal, two "
        f"ballots, two reads), {rounds} rounds of {phase_s:g} s per phase, phases alternating"
    )
    merged = {name: HonestRun.merged(parts) for name, parts in runs.items()}
    quiet = merged[HOSTILE_PHASES[0][0]]
    bound = 2 * quiet.p99 + 0.050
    for name, run in merged.items():
        ratios = ""
        if run is not quiet:
            ratios = (
                f"   throughput {run.ops_per_s / quiet.ops_per_s:4.2f}x, "
                f"p99 {run.p99 / quiet.p99:5.2f}x "
                f"(bound {1000 * bound:.0f} ms {'met' if run.p99 <= bound else 'MISSED'})"
            )
        busy = f", service CPU {100 * cpu[name] / run.seconds:3.0f}% of a core"
        held = merge_reports(reports[name])["held_s"]
        if held:
            ratios += f", slow connections held <= {max(held.values()):.2f} s"
        print(f"  {name:33s} {run.line()}{busy}{ratios}")
        for error in run.errors[:3]:
            print(f"    error: {error}")
    attacks = merge_reports([r for parts in reports.values() for r in parts])
    for kind, seen in attacks["outcomes"].items():
        hold = attacks["held_s"].get(kind)
        longest = f", longest hold {hold:.2f} s" if hold is not None else ""
        print(f"  attacker {kind:18s} answers {dict(sorted(seen.items()))}{longest}")
    print(
        f"  service RSS {before:.0f} MiB before the attacks, peak {memory.peak:.0f} MiB "
        f"during them (+{memory.peak - before:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--hostile", action="store_true", help="run only the hostile mix")
    parser.add_argument("--phase-s", type=float, default=10.0, help="hostile mix: per phase")
    parser.add_argument("--rounds", type=int, default=2, help="hostile mix: rounds of phases")
    parser.add_argument("--rooms", type=int, default=3, help="hostile mix: honest rooms")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="cleanroom-service-bench-"))
    try:
        if not args.hostile:
            bench_upload(work, args.gib, args.repeat)
            bench_governance(work, args.clients, args.ops)
        bench_hostile(work, args.phase_s, args.rounds, args.rooms)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
