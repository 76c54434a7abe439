"""The job runner: one enclave process per job, watched from the service.

When a ``job.request`` is recorded, the runner gives the job a one-time
launch token (kept by the key broker, passed on the enclave's standard input)
and starts ``python -m cleanroom.enclave``. At most ``parallelism`` enclaves
run at once; the rest queue. An enclave that crashes or outlives its time
limit is killed, and the service records ``job.fail`` unless the enclave
recorded its own outcome. At start-up, jobs left unfinished by a previous run
of the service are failed the same way.

A failure's reason is always one of the fixed categories of
:mod:`cleanroom.governance.outcomes`, never text copied from the enclave: its
standard error is read only for its last line, ``job failed: <category>``,
and only a known category is taken from it (else ``enclave crashed``). The
operator's job log (``<log_dir>/<job>.log``) keeps the enclave's standard
output (one JSON line of timings), the exit code and that category; the rest
of standard error is dropped unread.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.broker.desk import KeyDesk
from cleanroom.children import child_environment
from cleanroom.errors import CleanroomError
from cleanroom.governance.outcomes import FAILURE_CATEGORIES, FailureCategory
from cleanroom.governance.statements import sign_statement
from cleanroom.ledger.log import Ledger

log = logging.getLogger("cleanroom.jobs")
_PHASE = re.compile(r"^[a-z][a-z_]{0,46}_ms$")


@dataclass(frozen=True)
class RunnerSettings:
    url: str
    platform: str = "insecure-virtual"
    parallelism: int = 2
    time_limit_s: float = 600.0
    memory_limit: str = "4GB"
    release_wait_s: float = 120.0
    threads: int | None = None  # DuckDB threads per enclave (None: the machine's cores)
    max_queued_per_room: int = 8
    log_dir: Path | None = None


class JobRunner:
    """Runs jobs fairly across rooms: each room has its own queue (at most
    ``max_queued_per_room`` jobs wait; more fail at once with ``service busy``),
    and a free worker takes the next job of the room with the fewest running,
    so one room's burst cannot starve the others."""

    def __init__(self, ledger: Ledger, broker: KeyDesk, settings: RunnerSettings) -> None:
        self.ledger = ledger
        self.broker = broker
        self.settings = settings
        self._queues: dict[str, deque[str]] = {}
        self._running: dict[str, int] = {}
        self._turn = 0
        self._closed = False
        self._ready = threading.Condition()
        self._workers = [
            threading.Thread(target=self._work, name=f"cleanroom-job-{n}", daemon=True)
            for n in range(settings.parallelism)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, room: str, job: str) -> None:
        with self._ready:
            queue = self._queues.setdefault(room, deque())
            full = len(queue) >= self.settings.max_queued_per_room
            if not full:
                queue.append(job)
                self._ready.notify()
        if full:
            self._fail(room, job, "service busy")

    def position(self, room: str, job: str) -> int | None:
        """The job's place in its room's queue (1: next), or None if not waiting."""
        with self._ready:
            queue = self._queues.get(room, deque())
            return queue.index(job) + 1 if job in queue else None

    def load(self) -> tuple[int, int]:
        """Jobs waiting in every room's queue, and jobs this service is running."""
        with self._ready:
            return sum(len(q) for q in self._queues.values()), sum(self._running.values())

    def _next(self) -> tuple[str, str] | None:
        with self._ready:
            while not self._closed:
                waiting = sorted(r for r, q in self._queues.items() if q)
                if waiting:
                    # the room with the fewest running jobs; ties taken in turn
                    self._turn += 1
                    rotated = (
                        waiting[self._turn % len(waiting) :] + waiting[: self._turn % len(waiting)]
                    )
                    room = min(rotated, key=lambda r: self._running.get(r, 0))
                    job = self._queues[room].popleft()
                    self._running[room] = self._running.get(room, 0) + 1
                    return room, job
                self._ready.wait()
            return None

    def _work(self) -> None:
        while (picked := self._next()) is not None:
            room, job = picked
            try:
                self._run(room, job)
            except Exception:  # a worker must outlive any one job
                log.exception("job %s could not be run", job[:12])
            finally:
                with self._ready:
                    self._running[room] -= 1

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._queues.clear()
            self._ready.notify_all()

    def fail_unfinished(self) -> None:
        for room in self.ledger.healthy_rooms():
            for job in list(self.ledger.state(room).jobs.values()):
                if job.status in ("requested", "running"):
                    self._fail(room, job.id, "service restarted")

    def _command(self, room: str, job: str) -> list[str]:
        s = self.settings
        return [
            *(sys.executable, "-m", "cleanroom.enclave"),
            *("--service", s.url, "--room", room, "--job", job, "--platform", s.platform),
            *("--time-limit", str(s.time_limit_s), "--memory-limit", s.memory_limit),
            *("--release-wait", str(s.release_wait_s)),
            *(("--threads", str(s.threads)) if s.threads else ()),
        ]

    def _run(self, room: str, job: str) -> None:
        token = self.broker.launch(room, job)
        reason: FailureCategory | None = None
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self._command(room, job),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_environment(),
            )
            try:
                out, err = process.communicate(
                    token + "\n",
                    timeout=self.settings.time_limit_s + self.settings.release_wait_s + 120,
                )
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                reason = "time limit"
            if process.returncode != 0 and reason is None:
                reason = reported_category(err) or "enclave crashed"
            self._log(job, out, process.returncode, reason)
        except OSError:
            reason = "enclave crashed"  # could not be started
            log.warning("the enclave of job %s could not be started", job[:12])
        finally:
            self.broker.forget(room, job)
        if reason is not None:
            self._fail(room, job, reason)

    def _log(self, job: str, out: str, code: int, reason: FailureCategory | None) -> None:
        if self.settings.log_dir is None:
            return
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        ended = f"exit code {code}" + (f", job failed: {reason}" if reason else "")
        lines = [json.dumps(timings), ended] if (timings := reported_timings(out)) else [ended]
        (self.settings.log_dir / f"{job}.log").write_text("\n".join(lines) + "\n")

    def _fail(self, room: str, job: str, reason: FailureCategory) -> None:
        """Record ``job.fail`` unless the job already has its outcome."""
        state = self.ledger.state(room)
        if state.jobs[job].status not in ("requested", "running"):
            return
        body = {"job": job, "reason": reason}
        try:
            statement = sign_statement(
                self.ledger.service, room, "job.fail", body, now=self.ledger.clock
            )
            self.ledger.submit(room, [statement])
        except CleanroomError as exc:
            log.warning("could not record the failure of job %s: %s", job[:12], exc)


def reported_category(stderr: str) -> FailureCategory | None:
    """The category an enclave printed as its last line, if it is a known one."""
    lines = stderr.strip().splitlines()
    last = lines[-1].strip() if lines else ""
    prefix = "job failed: "
    if last.startswith(prefix):
        wanted = last.removeprefix(prefix)
        for category in FAILURE_CATEGORIES:
            if category == wanted:
                return category
    return None


def reported_timings(stdout: str) -> dict[str, Any] | None:
    """The enclave's timings line (``{"duration_ms": int, "phases": {name: int}}``),
    rebuilt from its numbers only; anything else on standard output is dropped."""
    try:
        line = json.loads(stdout.strip().splitlines()[-1])
        duration, phases = line["duration_ms"], line["phases"]
        if not isinstance(duration, int) or not isinstance(phases, dict):
            return None
        kept = {k: v for k, v in phases.items() if _PHASE.match(k) and isinstance(v, int)}
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None
    return {"duration_ms": duration, "phases": kept}
