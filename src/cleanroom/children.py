"""The environment the service hands the processes it starts (enclaves, the key
broker): an allow-list, so the service's own secrets (a database URL with its
password, the metrics token, whatever an operator's environment file holds)
never reach code that only needs to find Python."""

from __future__ import annotations

import os
from collections.abc import Mapping

PASSED = frozenset(
    {"PATH", "PYTHONPATH", "PYTHONHASHSEED", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "HOME", "TZ"}
)
# the test suite measures coverage in child processes through these (pytest-cov)
PASSED_PREFIXES = ("COV_CORE_", "COVERAGE_")


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default: this process's) a child may see."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name in PASSED or name.startswith(PASSED_PREFIXES)
    }
