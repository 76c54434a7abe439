"""Hostile traffic against a real ``cleanroom serve``, beside honest members' work.

Shared by ``benchmarks/service.py`` and ``tests/attacks/test_hostile_mix.py``
(which imports it as ``benchmarks._hostile``), so it imports nothing but
cleanroom and the standard library.

Honest members (:func:`honest_rooms`, :func:`run_honest`) work in several rooms
through the SDK: signed proposals, ballots and reads, every operation timed.
The attacker (:class:`Attacker`) is another process, as it would be: a party
with a room of its own (and a dataset in it), which runs the attacks it is told
to, all at once, until told to stop, and reports how the service answered
every attempt (:data:`EXPECTED` lists the answers the service should give):

- ``oversized``: unauthenticated POSTs announcing 256 MiB, then sending 1 MiB
  (413 from the announced length, before the body is read);
- ``oversized-chunked``: unauthenticated chunked POSTs, then 1 MiB of chunks
  (401 from the headers, before the body is read);
- ``slow-body``: bodies at one byte a second, one kind to ``POST /v1/rooms``
  (which must read its body before it can authenticate: the signature
  headers are there but sign something else), one member-signed to the
  attacker's own room (408 after ``body_timeout_s``);
- ``slow-headers``: request heads at one byte a second (408 after
  ``header_timeout_s``);
- ``expensive``: proposals of an analysis whose SQL is the longest OR chain
  the policy check parses (16 KiB, about 1,400 terms), in the attacker's own
  room (409: the policy check refuses it);
- ``room-spam``: room creations past ``rooms_per_creator_per_hour`` (429).

The first six are refused at the edge (:data:`EDGE`: by a length, a timeout or
the rate limit, before any room's rules run); ``expensive`` reaches the policy
check of the attacker's own room (:data:`ALL` is every attack).

Each attack runs at a fixed pace (:data:`PACE_S`; the slow ones keep
:data:`SLOW_CONNECTIONS` connections open each): the mix measures what each
kind of request costs the service, not a volumetric flood, which needs a
connection-rate limit in front of any server.

    python benchmarks/_hostile.py URL ROOM   # then "start KIND,...", "stop", "quit" on stdin
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

MiB = 1 << 20
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 2.0
ROOMS_PER_HOUR = 5
# the service the mix runs against: short timeouts and a low room rate, so that every
# attack meets its limit within a few seconds
SERVICE_ENV = {
    "CLEANROOM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "CLEANROOM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "CLEANROOM_ROOMS_PER_CREATOR_PER_HOUR": str(ROOMS_PER_HOUR),
}
OR_TERMS = 4_000
SLOW_BYTE_S = 1.0  # the slow attacks send one byte a second
SLOW_CONNECTIONS = 8  # open at once, per slow attack
PACE_S = {"oversized": 0.05, "oversized-chunked": 0.05, "expensive": 0.5, "room-spam": 0.1}
TRANSPORT = ("oversized", "oversized-chunked", "slow-body", "slow-body-signed", "slow-headers")
EDGE = (*TRANSPORT, "room-spam")  # refused by lengths, timeouts and the rate limit
ALL = (*EDGE, "expensive")  # and proposals that reach the room's policy check
EXPECTED: dict[str, set[str]] = {
    "oversized": {"413"},
    "oversized-chunked": {"401"},
    # a 408 the service sent may be lost when the attacker's next byte meets the closed
    # socket (the reset discards it): "closed" is the same refusal, seen from outside;
    # "open at stop" is a connection still within its bound (HOLD_BOUND_S) when the
    # attack stopped
    "slow-body": {"408", "closed", "open at stop"},
    "slow-body-signed": {"408", "closed", "open at stop"},
    "slow-headers": {"408", "closed", "open at stop"},
    "expensive": {"409", "429"},  # refused by the check, then by the per-party bound
    "room-spam": {"201", "429"},
}
# how long a slow attack's connection may stay open before the service ends it
HOLD_BOUND_S = {
    "slow-body": BODY_TIMEOUT_S + 1.5,
    "slow-body-signed": BODY_TIMEOUT_S + 1.5,
    "slow-headers": HEADER_TIMEOUT_S + 1.5,
}


# -- the service process --------------------------------------------------------------


def service_pid(data_dir: Path) -> int:
    """The ``cleanroom serve`` process serving ``data_dir``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(data_dir).encode() in argv:
            return int(entry.name)
    raise LookupError(f"no service process for {data_dir}")


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time ``pid`` has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssPeak:
    """Samples a process's RSS every 50 ms while in use; ``peak`` is the largest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


# -- honest members -------------------------------------------------------------------


@dataclass
class HonestRun:
    """Every honest operation's latency (seconds) and every error, over ``seconds``."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def merged(cls, runs: list[HonestRun]) -> HonestRun:
        return cls(
            sum(r.seconds for r in runs),
            [x for r in runs for x in r.latencies],
            [e for r in runs for e in r.errors],
        )

    @property
    def ops_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    def line(self) -> str:
        return (
            f"{self.ops_per_s:6.1f} ops/s, p50 {1000 * self.percentile(0.5):6.1f} ms, "
            f"p99 {1000 * self.p99:6.1f} ms ({len(self.latencies)} ops, "
            f"{len(self.errors)} errors)"
        )


def honest_rooms(url: str, rooms: int = 3) -> list[tuple[Any, Any]]:
    """``rooms`` rooms of two members each, both active: (proposer, voter) views.
    The caller closes the clients (``room.client.close()``)."""
    from cleanroom import Party  # noqa: PLC0415 - the attacker process needs it only later
    from cleanroom.client import Client  # noqa: PLC0415

    pairs = []
    for i in range(rooms):
        a, b = Party.create(f"bank{i}"), Party.create(f"merchant{i}")
        roles = ["data_provider", "analyst"]
        created = Client(url, a).create_room(
            f"honest{i}", [(a.identity_document(), roles), (b.identity_document(), roles)]
        )
        voter = Client(url, b).room(created.id)
        voter.accept()
        pairs.append((created, voter))
    return pairs


def run_honest(pairs: list[tuple[Any, Any]], seconds: float) -> HonestRun:
    """Each room's members work in turn for ``seconds``: one proposes, both
    approve (the proposal is accepted), each reads the room; every call timed."""
    run = HonestRun(seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def timed(call: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        result = call(*args)
        elapsed = time.perf_counter() - start
        with lock:
            run.latencies.append(elapsed)
        return result

    def work(pair: tuple[Any, Any]) -> None:
        proposer, voter = pair
        while time.monotonic() < deadline:
            try:
                action = {"type": "set_measurements", "measurements": []}
                proposal = timed(proposer.propose, action)
                timed(voter.approve, proposal)
                timed(proposer.approve, proposal)
                timed(voter.state)
                timed(proposer.state)
            except Exception as exc:  # noqa: BLE001 - every honest failure is reported
                with lock:
                    run.errors.append(repr(exc))

    with ThreadPoolExecutor(len(pairs)) as pool:
        list(pool.map(work, pairs))
    return run


# -- the attacker, driven from another process ----------------------------------------


class Attacker:
    """The attacker's process: ``start`` the named attacks, ``stop`` them and get
    how each attempt was answered (``{"outcomes": {kind: {answer: count}},
    "held_s": {kind: longest a slow connection stayed open}}``)."""

    def __init__(self, url: str, room: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__, url, room],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    @property
    def pid(self) -> int:
        return self._process.pid

    def _send(self, line: str) -> None:
        stdin = self._process.stdin
        if stdin is None:
            raise RuntimeError("the attacker process has no stdin")
        stdin.write(line + "\n")
        stdin.flush()

    def _expect(self, what: str) -> str:
        stdout = self._process.stdout
        line = stdout.readline().strip() if stdout is not None else ""
        if not line.startswith(what):
            raise RuntimeError(f"the attacker said {line!r} instead of {what!r}")
        return line[len(what) :].strip()

    def start(self, kinds: tuple[str, ...]) -> None:
        self._send(f"start {','.join(kinds)}")
        self._expect("started")

    def stop(self) -> dict[str, Any]:
        self._send("stop")
        report: dict[str, Any] = json.loads(self._expect("report"))
        return report

    def close(self) -> None:
        if self._process.poll() is None:
            self._send("quit")
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several attack reports as one: answers added up, the longest holds."""
    outcomes: dict[str, Counter[str]] = {}
    held: dict[str, float] = {}
    for report in reports:
        for kind, seen in report["outcomes"].items():
            outcomes.setdefault(kind, Counter()).update(seen)
        for kind, seconds in report["held_s"].items():
            held[kind] = max(held.get(kind, 0.0), seconds)
    return {"outcomes": {k: dict(v) for k, v in outcomes.items()}, "held_s": held}


def unexpected(report: dict[str, Any], kinds: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """The answers in ``report`` that :data:`EXPECTED` does not list, and every
    kind that made no attempt at all."""
    wrong: dict[str, dict[str, int]] = {}
    for kind in kinds:
        seen = report["outcomes"].get(kind, {})
        odd = {answer: n for answer, n in seen.items() if answer not in EXPECTED[kind]}
        if odd or not seen:
            wrong[kind] = odd or {"no attempt": 0}
    return wrong


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket) -> str:
    """The status of the answer on ``sock``, or ``closed``."""
    try:
        data = sock.recv(65536)
    except OSError:
        return "closed"
    if not data.startswith(b"HTTP/1.1 "):
        return "closed"
    return data.split(b" ", 2)[1].decode()


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[str, Counter[str]] = {}
        self.held: dict[str, float] = {}

    def add(self, kind: str, outcome: str, held_s: float | None = None) -> None:
        with self.lock:
            self.outcomes.setdefault(kind, Counter())[outcome] += 1
            if held_s is not None:
                self.held[kind] = max(self.held.get(kind, 0.0), held_s)

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {
                "outcomes": {k: dict(v) for k, v in self.outcomes.items()},
                "held_s": dict(self.held),
            }


class _Attacks:
    """The attacker's side: its party, its room with a dataset, its attacks."""

    def __init__(self, url: str, target: str) -> None:
        from cleanroom import Party  # noqa: PLC0415 - heavy, and only in this process
        from cleanroom.client import Client  # noqa: PLC0415
        from cleanroom.policy.grammar import MAX_SQL_CHARS  # noqa: PLC0415

        self.url = url
        self.target = target  # an honest room the attacker does not belong to
        self.party = Party.create("attacker")
        self.client = Client(url, self.party)
        roles = ["data_provider", "analyst", "result_recipient"]
        self.own = self.client.create_room("attacker", [(self.party.identity_document(), roles)])
        self.own.approve(
            self.own.propose({"type": "register_dataset", "manifest": self._manifest()})
        )
        # the longest OR chain the policy check still parses (longer text is refused
        # by its length, before any parsing): the most a proposal can cost
        terms = " OR ".join(f"v = {i}" for i in range(OR_TERMS))
        self.or_chain = f"SELECT id FROM t WHERE {terms}"
        while len(self.or_chain) > MAX_SQL_CHARS:
            self.or_chain = self.or_chain[: self.or_chain.rindex(" OR ")]
        self.tally = _Tally()
        self.local = threading.local()  # one HTTP client per attacking thread
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def _manifest(self) -> dict[str, Any]:
        import tempfile  # noqa: PLC0415

        import pyarrow as pa  # noqa: PLC0415

        from cleanroom import Schema, seal_dataset  # noqa: PLC0415

        schema = Schema.from_json(
            {
                "identity_column": "id",
                "columns": [
                    {"name": "id", "type": "string", "nullable": False},
                    {"name": "v", "type": "int32", "nullable": False},
                ],
            }
        )
        table = pa.table({"id": ["x"], "v": pa.array([1], pa.int32())})
        with tempfile.TemporaryDirectory() as tmp:
            sealed = seal_dataset(
                table, schema=schema, owner=self.party, output=Path(tmp) / "t", name="t"
            )
            return self.party.sign_document(
                sealed.manifest.payload(), typ="cleanroom-dataset-manifest+jws"
            )

    def _post_signed(self, path: str, body: dict[str, Any]) -> str:
        import httpx  # noqa: PLC0415

        from cleanroom.protocol.requests import sign_request  # noqa: PLC0415

        content = json.dumps(body).encode()
        request = httpx.Request(
            "POST",
            f"{self.url}{path}",
            content=content,
            headers={"Content-Type": "application/json"},
        )
        sign_request(request, content, self.party)
        if getattr(self.local, "http", None) is None:
            self.local.http = httpx.Client(timeout=30)
        return str(self.local.http.send(request).status_code)

    def _signature_headers(self, path: str) -> dict[str, str]:
        """Signature headers for a POST to ``path`` of a body that will never come."""
        import httpx  # noqa: PLC0415

        from cleanroom.protocol.requests import sign_request  # noqa: PLC0415

        request = httpx.Request("POST", f"{self.url}{path}")
        sign_request(request, None, self.party, body_sha256="00" * 32)
        return {
            k: v
            for k, v in request.headers.items()
            if k.lower().startswith(("signature", "content-d"))
        }

    # each attack: one attempt, recorded in the tally

    def oversized(self) -> None:
        with _connect(self.url) as sock:
            path = f"/v1/rooms/{self.target}/statements"
            sock.sendall(_head("POST", path, {"Content-Length": str(256 * MiB)}))
            self.tally.add("oversized", _answer(sock))
            _push(sock, b"[" * MiB)

    def oversized_chunked(self) -> None:
        with _connect(self.url) as sock:
            path = f"/v1/rooms/{self.target}/statements"
            sock.sendall(_head("POST", path, {"Transfer-Encoding": "chunked"}))
            self.tally.add("oversized-chunked", _answer(sock))
            _push(sock, b"%x\r\n%s\r\n" % (MiB, b"[" * MiB))

    def expensive(self) -> None:
        from cleanroom.governance import propose  # noqa: PLC0415

        action = {
            "type": "add_analysis",
            "name": "everything",
            "language": "sql",
            "text": self.or_chain,
            "inputs": ["t"],
            "recipients": [self.party.fingerprint],
        }
        token = propose(self.party, self.own.id, action)
        self.tally.add(
            "expensive",
            self._post_signed(f"/v1/rooms/{self.own.id}/statements", {"statements": [token]}),
        )

    def room_spam(self) -> None:
        from cleanroom.governance import new_room_id, room_create  # noqa: PLC0415

        member = (self.party.identity_document(), ["analyst"])
        token = room_create(self.party, new_room_id(), name="spam", members=[member])
        self.tally.add("room-spam", self._post_signed("/v1/rooms", {"statement": token}))

    def slow(self, kind: str) -> None:
        """One connection that sends its request one byte a second, until the
        service ends it (or the attack stops)."""
        if kind == "slow-headers":  # the blank line that ends the head never comes
            head = b""
            data = _head("POST", "/v1/rooms", {"Content-Length": "2", "X-Slow": "a" * 64})[:-4]
        else:
            path = "/v1/rooms" if kind == "slow-body" else f"/v1/rooms/{self.own.id}/statements"
            head = _head("POST", path, {**self._signature_headers(path), "Content-Length": "1000"})
            data = b"[" * 1000
        with _connect(self.url) as sock:
            sock.sendall(head)
            sock.settimeout(SLOW_BYTE_S)
            started = time.monotonic()
            for byte in data:
                if self.stopping.is_set():
                    self.tally.add(kind, "open at stop", time.monotonic() - started)
                    return
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    answer = None
                except OSError:
                    answer = b""
                if answer is not None:
                    outcome = answer.split(b" ", 2)[1].decode() if answer else "closed"
                    self.tally.add(kind, outcome, time.monotonic() - started)
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    self.tally.add(kind, "closed", time.monotonic() - started)
                    return
            self.tally.add(kind, "sent in full", time.monotonic() - started)

    def start(self, kinds: list[str]) -> None:
        self.stopping.clear()
        for kind in kinds:
            if kind.startswith("slow"):
                for _ in range(SLOW_CONNECTIONS):
                    self._loop(kind, functools.partial(self.slow, kind), 0.0)
            else:
                attempt = getattr(self, kind.replace("-", "_"))
                self._loop(kind, attempt, PACE_S[kind])

    def _loop(self, kind: str, attempt: Callable[[], None], pace_s: float) -> None:
        def run() -> None:
            while not self.stopping.is_set():
                try:
                    attempt()
                except OSError as exc:
                    self.tally.add(kind, f"error {type(exc).__name__}")
                self.stopping.wait(pace_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.threads.clear()
        report = self.tally.report()
        self.tally = _Tally()
        return report


def _push(sock: socket.socket, chunk: bytes) -> None:
    """Send ``chunk`` if the service still reads; it should have stopped."""
    with contextlib.suppress(OSError):
        sock.sendall(chunk)


def _serve_commands(url: str, room: str, commands: IO[str], out: IO[str]) -> None:
    attacks = _Attacks(url, room)
    print("ready", file=out, flush=True)
    for line in commands:
        command, _, argument = line.strip().partition(" ")
        if command == "start":
            attacks.start(argument.split(","))
            print("started", file=out, flush=True)
        elif command == "stop":
            print(f"report {json.dumps(attacks.stop())}", file=out, flush=True)
        else:
            break
    attacks.client.close()


if __name__ == "__main__":
    _serve_commands(sys.argv[1], sys.argv[2], sys.stdin, sys.stdout)
