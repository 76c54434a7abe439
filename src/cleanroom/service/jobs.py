"""The job runner: one enclave process per job, watched from the service.

When a ``job.request`` is recorded, the runner gives the job a one-time
launch token (kept by the key broker, passed on the enclave's standard input)
and starts ``python -m cleanroom.enclave``. At most ``parallelism`` enclaves
run at once; the rest queue. An enclave that crashes or outlives its time
limit is killed, and the service records ``job.fail`` with the reason unless
the enclave recorded its own outcome. At start-up, jobs left unfinished by a
previous run of the service are failed the same way.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cleanroom.broker import KeyBroker
from cleanroom.errors import CleanroomError
from cleanroom.governance.statements import sign_statement
from cleanroom.ledger.log import Ledger

log = logging.getLogger("cleanroom.jobs")


@dataclass(frozen=True)
class RunnerSettings:
    url: str
    platform: str = "insecure-virtual"
    parallelism: int = 2
    time_limit_s: float = 600.0
    memory_limit: str = "4GB"
    log_dir: Path | None = None


class JobRunner:
    def __init__(self, ledger: Ledger, broker: KeyBroker, settings: RunnerSettings) -> None:
        self.ledger = ledger
        self.broker = broker
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.parallelism, thread_name_prefix="cleanroom-job")

    def submit(self, room: str, job: str) -> None:
        self._pool.submit(self._run, room, job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def fail_unfinished(self) -> None:
        for room in self.ledger.rooms():
            for job in list(self.ledger.state(room).jobs.values()):
                if job.status in ("requested", "running"):
                    self._fail(room, job.id, "the service restarted before the job finished")

    def _command(self, room: str, job: str) -> list[str]:
        s = self.settings
        return [
            *(sys.executable, "-m", "cleanroom.enclave"),
            *("--service", s.url, "--room", room, "--job", job, "--platform", s.platform),
            *("--time-limit", str(s.time_limit_s), "--memory-limit", s.memory_limit),
        ]

    def _run(self, room: str, job: str) -> None:
        token = self.broker.launch(room, job)
        reason = ""
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self._command(room, job),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                out, err = process.communicate(
                    token + "\n", timeout=self.settings.time_limit_s + 120
                )
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                reason = "the enclave ran over its time limit and was stopped"
            if process.returncode != 0 and not reason:
                lines = [line for line in err.strip().splitlines() if line.strip()]
                reason = f"the enclave exited with code {process.returncode}" + (
                    f": {lines[-1]}" if lines else ""
                )
            self._log(job, out, err)
        except OSError as exc:
            reason = f"the enclave could not be started: {exc}"
        finally:
            self.broker.forget(room, job)
        if reason:
            self._fail(room, job, reason)

    def _log(self, job: str, out: str, err: str) -> None:
        if self.settings.log_dir is None:
            return
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        (self.settings.log_dir / f"{job}.log").write_text(out + err)

    def _fail(self, room: str, job: str, reason: str) -> None:
        """Record ``job.fail`` unless the job already has its outcome."""
        state = self.ledger.state(room)
        if state.jobs[job].status not in ("requested", "running"):
            return
        body = {"job": job, "reason": reason[:2000]}
        try:
            statement = sign_statement(
                self.ledger.service, room, "job.fail", body, now=self.ledger.clock
            )
            self.ledger.submit(room, [statement])
        except CleanroomError as exc:
            log.warning("could not record the failure of job %s: %s", job[:12], exc)
