"""``python -m cleanroom.enclave``: run one job (started by the service's job runner).

The launch token arrives on standard input, never on the command line. The
process prints one JSON line with the job's exact duration and phases on
success (for the operator's job log). On failure it prints only
``job failed: <category>`` on standard error, one of the fixed categories of
:mod:`cleanroom.governance.outcomes`, and exits 1: never the exception's text
or a traceback, which may quote the data.
"""

from __future__ import annotations

import argparse
import json
import sys

from cleanroom.attestation import VirtualPlatform
from cleanroom.attestation.evidence import Attester
from cleanroom.attestation.tsm import TsmProvider
from cleanroom.enclave.failures import category_of
from cleanroom.enclave.runtime import run_job
from cleanroom.enclave.sql import Limits
from cleanroom.errors import MissingExtraError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleanroom.enclave", description=__doc__)
    parser.add_argument("--service", required=True, help="the service URL")
    parser.add_argument("--room", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument(
        "--platform",
        choices=["insecure-virtual", "configfs-tsm"],
        default="insecure-virtual",
        help="how to attest: the insecure virtual platform, or Linux configfs-tsm",
    )
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per query")
    parser.add_argument("--memory-limit", default="4GB", help="DuckDB memory limit")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--release-wait",
        type=float,
        default=120.0,
        help="seconds to wait for the data owners' key agents to release the inputs",
    )
    args = parser.parse_args(argv)
    token = sys.stdin.readline().strip()
    attester: Attester = VirtualPlatform() if args.platform == "insecure-virtual" else TsmProvider()
    limits = Limits(
        time_s=args.time_limit,
        memory=args.memory_limit,
        threads=args.threads,
        release_wait_s=args.release_wait,
    )
    try:
        run = run_job(
            args.service, args.room, args.job, launch_token=token, attester=attester, limits=limits
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes its category, text withheld
        if isinstance(exc, MissingExtraError):  # fixed text naming the extra: no data in it
            sys.stderr.write(f"{exc}\n")
        sys.stderr.write(f"job failed: {category_of(exc)}\n")  # the last line, read by the service
        return 1
    sys.stdout.write(json.dumps(run.timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
