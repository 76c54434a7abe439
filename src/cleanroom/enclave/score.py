"""The scoring job kind: a protected model scores protected records (ADR 0023).

The runtime has already verified the ledger, checked the analysis again
(:func:`cleanroom.policy.score.check_score`), and opened each input with its
released key; ``text`` is the checked spec. This kind:

1. reads both inputs through the SQL kind's sandboxed engine (the same key
   checks, time and memory limits): the model's ONNX bytes, and the records'
   id column and the model's feature columns only;
2. loads the model from those bytes (:func:`cleanroom.models.onnx.load`: the
   digest and signature must equal the signed manifest; nothing touches a file);
3. scores the features (:func:`cleanroom.models.score.score`); no other column
   reaches the model, and the id column never does;
4. keeps the rows whose ``keep`` output equals its value, if the spec says so;
5. returns the id column and the declared outputs only, within the room's row
   and byte limits.

A failure is a category decided here, never the library's text (which may
quote a value): a model that does not load or does not match its manifest is
an integrity error, a feature value the model cannot take a conversion error.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.enclave.sql import Input, JobResult, Limits, QueryError, quote_identifier, run_sql
from cleanroom.errors import IntegrityError, ModelRefusedError, ValidationError
from cleanroom.policy.score import parse_spec

UNLIMITED_ROWS = 1 << 62


def run_score(text: str, inputs: list[Input], limits: Limits, work: Path) -> JobResult:
    """Score the records with the model; returns the id and declared output columns."""
    from cleanroom.models.onnx import DEFAULT_THREADS, load  # noqa: PLC0415 - onnxruntime
    from cleanroom.models.score import score  # noqa: PLC0415

    started = time.perf_counter()
    spec = parse_spec(text)
    by_name = {item.name: item for item in inputs}
    model_input = by_name[spec.model]
    manifest = model_input.model
    if manifest is None:  # the runtime passes the verified manifest of every model input
        raise QueryError(f"{spec.model!r} carries no model manifest", category="integrity error")
    if manifest.digest() != spec.model_digest:  # the released version is the pinned one
        raise QueryError("the released model is not the pinned one", category="integrity error")
    # (1) the inputs are read within the room's limits, but the records are not a result
    reading = replace(limits, max_result_rows=UNLIMITED_ROWS, max_result_bytes=UNLIMITED_ROWS)
    columns = ", ".join(quote_identifier(c) for c in (spec.id, *manifest.features))
    model_rows = run_sql(
        f"SELECT onnx FROM {quote_identifier(spec.model)}",  # noqa: S608 - checked names
        inputs,
        reading,
        work,
    )
    left = max(0.0, limits.time_s - (time.perf_counter() - started))  # one budget for all
    records = run_sql(
        f"SELECT {columns} FROM {quote_identifier(spec.records)}",  # noqa: S608 - checked names
        inputs,
        replace(reading, time_s=left),
        work,
    ).table
    if model_rows.table.num_rows != 1:
        raise QueryError("a model asset holds exactly one model", category="integrity error")
    expected = by_name[spec.records].rows
    if expected is None or records.num_rows != expected:  # the count the caps were charged
        raise QueryError(
            "the records hold another number of rows than their owner signed",
            category="integrity error",
        )
    read = time.perf_counter()
    try:
        model_bytes = model_rows.table.column("onnx")[0].as_py()
        session = load(model_bytes, manifest, threads=limits.threads or DEFAULT_THREADS)  # (2)
    except (IntegrityError, ModelRefusedError) as exc:
        raise QueryError(f"the model does not load: {exc}", category="integrity error") from exc
    loaded = time.perf_counter()
    wanted = list(dict.fromkeys([*spec.outputs, *([spec.keep.output] if spec.keep else [])]))
    deadline = time.monotonic() + max(0.0, limits.time_s - (time.perf_counter() - started))
    try:
        scored = score(
            records.select(list(manifest.features)), session, outputs=wanted, deadline=deadline
        )  # (3)
    except TimeoutError as exc:
        raise QueryError("scoring ran over its time limit", category="time limit") from exc
    except ValidationError as exc:
        raise QueryError(f"a feature cannot be scored: {exc}", category="conversion error") from exc
    except ModelRefusedError as exc:
        raise QueryError(f"the model cannot score: {exc}", category="integrity error") from exc
    result = pa.table(
        [records.column(spec.id), *(scored.column(name) for name in spec.outputs)],
        names=[spec.id, *spec.outputs],
    )
    if spec.keep is not None:  # (4)
        kept = scored.column(spec.keep.output)
        value = spec.keep.equals
        target = bool(value) if pa.types.is_boolean(kept.type) else int(value)
        mask = pc.equal(kept, pa.scalar(target, type=kept.type))
        result = result.filter(pc.fill_null(mask, fill_value=False))
    if result.num_rows > limits.max_result_rows or result.nbytes > limits.max_result_bytes:  # (5)
        raise QueryError("the scored result is over the room's limits", category="result too large")
    done = time.perf_counter()
    return JobResult(
        result,
        {
            "read_ms": round((read - started) * 1000),
            "load_ms": round((loaded - read) * 1000),
            "score_ms": round((done - loaded) * 1000),
        },
    )
