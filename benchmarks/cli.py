"""Start-up time of the ``cleanroom`` command, beside plain Python and pip.

Each command runs N times as a fresh process (the installed ``cleanroom``
entry point, so what a user types); the median wall time is printed with its
ratio to ``python -c pass``. The signed read is ``cleanroom room list``
against a real local service (``cleanroom serve`` in a temporary directory):
it loads a keystore, pins the service key, signs one request and parses the
answer.

    .venv/bin/python benchmarks/cli.py            # 15 runs of each
    .venv/bin/python benchmarks/cli.py --runs 31
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median
from cleanroom.service.local import local_service

BIN = Path(sys.executable).parent


def _time(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of the child: the second
    holds steady on a loaded machine, where wall time mostly measures waiting."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, check=False, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cleanroom = str(BIN / "cleanroom")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
        subprocess.run(
            [cleanroom, "party", "create", "bank", "--dir", "keys/bank", "--quiet"],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        with local_service(work / "service-data") as url:
            signed_env = env | {"CLEANROOM_SERVICE": url, "CLEANROOM_KEYSTORE": "keys/bank"}
            cases = [
                ("python -c pass", [sys.executable, "-c", "pass"], env),
                ("pip --version", [str(BIN / "pip"), "--version"], env),
                ("cleanroom --version", [cleanroom, "--version"], env),
                ("cleanroom --help", [cleanroom, "--help"], env),
                ("cleanroom party show", [cleanroom, "party", "show", "--dir", "keys/bank"], env),
                ("cleanroom room list (signed)", [cleanroom, "room", "list"], signed_env),
            ]
            # the service knows members' keys only: a room of one; it also pins the service key
            create = [cleanroom, "room", "create", "bench", "--roles", "data_provider", "-q"]
            _time(create, signed_env, work)
            wall: dict[str, list[float]] = {name: [] for name, _, _ in cases}
            cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
            for _ in range(args.runs):  # interleaved, so load on the machine hits all alike
                for name, command, case_env in cases:
                    seconds, used = _time(command, case_env, work)
                    wall[name].append(seconds)
                    cpu[name].append(used)
    base, base_cpu = median(wall["python -c pass"]), median(cpu["python -c pass"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cleanroom start-up, median of {args.runs} runs; {machine()}; load {load}")
    print(f"{'command':<30} {'wall':>8} {'x python':>9} {'cpu':>8} {'x python':>9}")
    for name, values in wall.items():
        w, c = median(values), median(cpu[name])
        ratios = f"{w / base:>8.1f}x {c * 1000:>6.0f}ms {c / base_cpu:>8.1f}x"
        print(f"{name:<30} {w * 1000:>6.0f}ms {ratios}")


if __name__ == "__main__":
    main()
