"""The static check of a Python analysis (pure): an approved code bundle run in the
enclave's confined child (ADR 0022, ADR 0023).

A Python analysis's text is the whole bundle as one JSON object in its RFC 8785
canonical form, so the digest the owners approve covers every byte of code::

    {"entry":"main.py",
     "files":{"main.py":"import sys ...","features.py":"..."},
     "output":[{"name":"segment","type":"string"},{"name":"n","type":"int64"}]}

The entry runs as ``__main__`` with ``argv = [entry, INPUTS, OUTPUT]``: ``INPUTS``
holds one plaintext Parquet file per input, ``<name>.parquet``; the job writes
exactly one file, ``OUTPUT/result.parquet``, whose columns must be the declared
``output``, in order and type. It imports only what the enclave runtime ships
(nothing is installed at run time, and the sandbox has no network).

Refused, each with its reason:

- a text that is not the canonical JSON of a well-formed bundle; a file name
  that is not a relative path of Python identifiers ending in ``.py``; an entry
  that is not one of the files;
- a model among the inputs (a model is read only by a scoring analysis);
- an input whose owner did not approve this exact bundle, or whose rule is an
  aggregation or list rule (opaque code can compute anything from the rows it
  reads: only the owner's approval of the exact code allows it), or whose
  custom rule has a threshold above one (the runtime cannot count the people
  behind the rows of an opaque computation, so it refuses rather than pretend);
- output columns repeated (without regard to case), of an unknown type, or
  named like a column an input's rule never lets out. (By name only: code can
  compute anything from what it reads, so the owners' approval of the exact
  code is the guard; the check keeps an approved bundle from *declaring* it.)

Whether the files are valid Python is not part of the check: every verifier of
the ledger runs the check, on its own Python version, and grammars differ
between versions. :func:`check_syntax` tells a proposer early, on its machine;
in the enclave a file that does not parse fails the job like any other crash.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, StrictStr

from cleanroom.errors import PolicyError
from cleanroom.policy.canonical import CanonicalText, fail_closed, parse_canonical
from cleanroom.policy.rules import AggregationRule, Column, CustomRule, ListRule
from cleanroom.wire import WireModel

if TYPE_CHECKING:
    from cleanroom.policy.check import Source

LANGUAGE = "python"
RESULT_FILE = "result.parquet"
MAX_FILES = 64
OutputType = Literal["boolean", "int32", "int64", "float64", "string", "date", "timestamp"]
FileName = Annotated[
    StrictStr,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}(/[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}\.py$"),
]


class OutputColumn(WireModel):
    name: Column
    type: OutputType


class Bundle(CanonicalText):
    entry: FileName
    files: dict[FileName, StrictStr] = Field(min_length=1, max_length=MAX_FILES)
    output: list[OutputColumn] = Field(min_length=1, max_length=1024)


@dataclass(frozen=True)
class PythonPlan:
    """A checked Python analysis: what the enclave runs and what it must produce."""

    bundle: Bundle

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(c.name, c.type) for c in self.bundle.output]


def parse_bundle(text: str) -> Bundle:
    """The bundle of a Python analysis; refuses any text but its canonical form."""
    return parse_canonical(Bundle, text, what="Python analysis")


def check_syntax(bundle: Bundle) -> None:
    """Refuse a bundle whose files do not parse with this Python (the proposer's
    early warning; never part of the ledger's check, see the module's docstring)."""
    for name, code in sorted(bundle.files.items()):
        try:
            ast.parse(code, filename=name)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            raise PolicyError(f"{name} is not valid Python (line {line})") from exc


def check_python(text: str, sources: dict[str, Source]) -> PythonPlan:
    """Check a Python analysis against its inputs; any failure is a refusal."""
    with fail_closed():
        return _check(text, sources)


def _check(text: str, sources: dict[str, Source]) -> PythonPlan:
    bundle = parse_bundle(text)
    if bundle.entry not in bundle.files:
        raise PolicyError(f"the entry {bundle.entry!r} is not one of the bundle's files")
    if not sources:
        raise PolicyError("a Python analysis reads at least one input")
    never: set[str] = set()
    for source in sources.values():
        never |= check_approved_input(source)
    seen: set[str] = set()
    for column in bundle.output:
        if column.name.lower() in seen:
            raise PolicyError(f"output column {column.name!r} is declared twice")
        seen.add(column.name.lower())
        if column.name.lower() in never:
            raise PolicyError(f"output column {column.name!r} is a column an input never lets out")
    return PythonPlan(bundle)


def check_approved_input(source: Source, what: str = "a Python analysis") -> set[str]:
    """The input admits code its owner approved (``what`` reads every row: a Python
    or training analysis); returns its never-output columns, lower-cased."""
    if source.model is not None:
        raise PolicyError(f"{source.name!r} is a model: only a scoring analysis reads a model")
    rule = source.rule
    if isinstance(rule, (AggregationRule, ListRule)):
        raise PolicyError(
            f"the {rule.type} rule of {source.name!r} admits SQL it can check, not {what}: "
            "only a custom rule approving this exact analysis allows it"
        )
    if rule is not None and not isinstance(rule, CustomRule):  # a rule type added later
        raise PolicyError(f"the rule of {source.name!r} is not one {what} understands")
    if not source.owner_approved:
        raise PolicyError(f"the owner of {source.name!r} has not approved this analysis")
    if rule is None:
        return set()
    if rule.min_distinct is not None and rule.min_distinct > 1:
        raise PolicyError(
            f"the custom rule of {source.name!r} has a threshold of {rule.min_distinct}: the "
            f"enclave cannot count the people behind the rows {what} reads"
        )
    return {c.lower() for c in rule.disallowed_columns}
