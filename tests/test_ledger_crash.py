"""Crash safety: a real writer process is killed (SIGKILL) at random points
while appending; after every kill, each acknowledged entry is present and the
whole ledger verifies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cleanroom.ledger import open_ledger, verify_export

ITERATIONS = 10


def run_and_kill(data: Path, rng: random.Random) -> int:
    """Start the writer, kill it after a random delay; the last size it acknowledged."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.crash_writer", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "COVERAGE_PROCESS_START": ""},
    ) as process:
        return _kill_at_random(process, rng)


def _kill_at_random(process: subprocess.Popen[str], rng: random.Random) -> int:
    acked = [0]

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("ACK "):
                acked[0] = int(line.split()[1])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while acked[0] == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the writer is appending
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.wait()
    reader.join(5)
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert acked[0] > 0, f"the writer never appended: {stderr}"
    return acked[0]


def test_kill_during_appends_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    data = tmp_path / "data"
    for _ in range(ITERATIONS):
        acknowledged = run_and_kill(data, rng)
        ledger = open_ledger(data)
        (room,) = ledger.rooms()
        assert ledger.size(room) >= acknowledged
        verified = verify_export(ledger.export(room), ledger.service.identity, workers=1)
        assert len(verified.entries) == ledger.size(room)
        ledger.store.close()
