"""What the public ledger may say about a job's outcome.

Every member and the operator read a room's ledger, and an analyst chooses
the query an enclave runs. Whatever the enclave publishes about a run is a
channel from the data to all of them, so it is kept narrow by construction:

* **A failure is one of a fixed set of categories** (:data:`FAILURE_CATEGORIES`),
  never an engine's error text, which can quote values (``Type INT128 with
  value 987654 can't be cast``). The enclave maps its exception to a category
  by its type (:func:`cleanroom.enclave.failures.category_of`); the service's
  job runner uses the same set. A ``job.fail`` body whose reason is anything
  else is refused when parsed, so free text cannot reach the ledger.
* **Every data-dependent time or size on ``job.complete`` is a bucket**:
  rounded up to ``smallest * 2**k`` (:func:`bucket`). Durations and phases in
  steps from :data:`TIME_BUCKET_MS`, result rows from :data:`ROWS_BUCKET`,
  ciphertext bytes from :data:`BYTES_BUCKET`. A bucket is never below the true
  value (so a size bound stays a bound) and the set of values is fixed, so an
  exact timing (a DP job's ``query_ms``) or a row count of one person no
  longer shows. The statement model refuses values that are not buckets.

A category or a bucket still carries a few bits per job (whether it failed,
and how); the room's approval of the exact analysis text is what bounds how
often an analyst can ask. Invariant: this module is pure and imports nothing
of the engines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

FailureCategory = Literal[
    # the analysis, run over the data (reported by the enclave)
    "query refused",  # the policy check or the engine refused the approved text
    "conversion error",  # a value could not be cast, parsed or computed
    "time limit",
    "memory limit",
    "result too large",  # over the row or byte limit
    "integrity error",  # an input, a released key or the ledger did not verify
    "internal error",  # anything else
    # around the run (no data involved)
    "attestation failed",
    "key release denied",
    "key release timed out",  # an owner's key agent did not answer in time
    "enclave crashed",  # the process exited without recording an outcome
    "service restarted",
    "service busy",  # the room already had as many jobs waiting as the service queues
]
FAILURE_CATEGORIES: tuple[FailureCategory, ...] = get_args(FailureCategory)

TIME_BUCKET_MS = 100
ROWS_BUCKET = 16
BYTES_BUCKET = 4 << 10


def bucket(value: int, smallest: int) -> int:
    """The smallest ``smallest * 2**k`` (k >= 0) that is at least ``value``."""
    if smallest < 1:
        raise ValueError("the smallest bucket must be positive")
    if value < 0:
        raise ValueError("only counts, sizes and durations are bucketed")
    steps = max(1, -(-value // smallest))  # ceil(value / smallest), at least one bucket
    return smallest << (steps - 1).bit_length()


def is_bucket(value: int, smallest: int) -> bool:
    return value >= smallest and value % smallest == 0 and (value // smallest).bit_count() == 1


def time_bucket(ms: int) -> int:
    return bucket(ms, TIME_BUCKET_MS)


def rows_bucket(rows: int) -> int:
    return bucket(rows, ROWS_BUCKET)


def bytes_bucket(size: int) -> int:
    return bucket(size, BYTES_BUCKET)


def require_bucket(smallest: int) -> Callable[[int], int]:
    """A pydantic after-validator: the value must be a bucket of ``smallest``."""

    def check(value: int) -> int:
        if not is_bucket(value, smallest):
            raise ValueError(f"must be {smallest} times a power of two (a published bucket)")
        return value

    return check
