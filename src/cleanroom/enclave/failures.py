"""Which failure category an exception inside the enclave becomes.

The categories themselves are fixed in :mod:`cleanroom.governance.outcomes`.
:func:`category_of` decides by the exception's type only, never by its text:
an engine's message may quote the data (``Could not convert string 'yacht'``),
and the only thing that leaves the enclave about a failure is the category,
on the ledger (``job.fail``) and on the process's standard error. The rich
message stays on the exception, for tests and a debugger inside the enclave.
"""

from __future__ import annotations

import duckdb

from cleanroom.errors import (
    AttestationError,
    GovernanceError,
    IntegrityError,
    InvalidInputError,
    PolicyError,
)
from cleanroom.governance.outcomes import FailureCategory


class JobFailedError(InvalidInputError):
    """An error raised inside a job kind that knows its category already."""

    def __init__(self, message: str, *, category: FailureCategory) -> None:
        super().__init__(message)
        self.category: FailureCategory = category


# checked in order: a subclass before its parents
_ENGINE: tuple[tuple[type[duckdb.Error], FailureCategory], ...] = (
    (duckdb.InterruptException, "time limit"),
    (duckdb.OutOfMemoryException, "memory limit"),
    # casts, parsing, overflows, error(): the message quotes the value
    (duckdb.DataError, "conversion error"),  # Conversion, OutOfRange, TypeMismatch
    (duckdb.InvalidInputException, "conversion error"),
    # the text itself does not bind or parse: the same for any data
    (duckdb.ParserException, "query refused"),
    (duckdb.SyntaxException, "query refused"),
    (duckdb.BinderException, "query refused"),
    (duckdb.CatalogException, "query refused"),
    (duckdb.PermissionException, "query refused"),  # the sandbox refused a file or setting
)


def engine_category(exc: duckdb.Error) -> FailureCategory:
    """The category of a DuckDB error, by its type."""
    for kind, category in _ENGINE:
        if isinstance(exc, kind):
            return category
    return "internal error"


def category_of(exc: BaseException) -> FailureCategory:
    """The one thing that may be published about ``exc``: its category."""
    if isinstance(exc, JobFailedError):
        return exc.category
    if isinstance(exc, duckdb.Error):
        return engine_category(exc)
    if isinstance(exc, PolicyError):
        return "query refused"
    if isinstance(exc, IntegrityError | GovernanceError):  # the ledger did not verify
        return "integrity error"
    if isinstance(exc, AttestationError):
        return "attestation failed"
    return "internal error"
