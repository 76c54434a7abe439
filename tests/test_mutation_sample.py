"""The seeded mutation sample (``make mutation-sample``) as a test, for CI: a
fixed sample of the security core's mutants must all be killed, so a change
that leaves a check untested fails here instead of lowering the score
quietly. It takes minutes, so it runs only with CLEANROOM_MUTATION_SAMPLE=1;
CLEANROOM_MUTATION_SAMPLE_SIZE and CLEANROOM_MUTATION_SEED change the sample.
See docs/testing.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIZE = os.environ.get("CLEANROOM_MUTATION_SAMPLE_SIZE", "40")
SEED = os.environ.get("CLEANROOM_MUTATION_SEED", "20261126")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CLEANROOM_MUTATION_SAMPLE") != "1",
        reason="the mutation sample takes minutes: set CLEANROOM_MUTATION_SAMPLE=1 to run it",
    ),
]


def test_a_seeded_sample_of_mutants_is_killed_in_every_module() -> None:
    command = [sys.executable, "-m", "tests.mutation.runner", "--sample", SIZE, "--seed", SEED]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    sys.stdout.write(result.stdout[-4000:])  # the score table, shown with -s
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
