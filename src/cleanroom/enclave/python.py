"""The Python job kind: an approved bundle in the confined child (ADR 0022, 0023).

The runtime has verified the ledger, checked the analysis again
(:func:`cleanroom.policy.python.check_python`) and opened each input with its
released key; ``text`` is the checked bundle. This kind:

1. writes the bundle's files into a private directory, and each input, decrypted,
   as ``<name>.parquet`` into another (inside the enclave: the child never sees a
   key, the runtime's identity or any other file);
2. runs the entry in :func:`cleanroom.enclave.sandbox.run_confined`: rlimits, a
   dropped uid, no_new_privs, Landlock and seccomp, no network, the room's time and
   memory limits; no run at all where the machine cannot confine it;
3. validates the output before anything is sealed: exactly one file,
   ``result.parquet``, within the byte limit; its columns exactly the declared
   ones, in order, each cast safely to its declared type; within the row limit.

Nothing the job prints or raises leaves: a failure is one of the sandbox's fixed
categories, or ``query refused`` for an output that is not what was declared.
The confinement achieved goes into the job record.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cleanroom.datasets.parquet import read_encrypted
from cleanroom.datasets.schema import arrow_type
from cleanroom.enclave.sandbox import PUBLISHED, Confinement, run_confined
from cleanroom.enclave.sandbox import Limits as SandboxLimits
from cleanroom.enclave.sql import Input, JobResult, Limits, QueryError, memory_mb
from cleanroom.errors import IntegrityError
from cleanroom.policy.python import RESULT_FILE, Bundle, parse_bundle


def run_python(text: str, inputs: list[Input], limits: Limits, work: Path) -> JobResult:
    """Run the approved bundle confined; returns its validated output table."""
    started = time.perf_counter()
    bundle = parse_bundle(text)
    # the runtime's private directory: searchable (never listable) by the sandbox user,
    # which must reach the job's own directories inside it when it runs as root
    work.chmod(0o711)
    code, data, output = (work / name for name in ("bundle", "inputs", "output"))
    for directory in (code, data, output):
        directory.mkdir(mode=0o700)
    _write_bundle(bundle, code)  # (1)
    for item in inputs:
        try:
            table = read_encrypted(item.path, item.key)
        except IntegrityError as exc:
            raise QueryError(f"input {item.name!r}: {exc}", category="integrity error") from exc
        pq.write_table(table, data / f"{item.name}.parquet")
    prepared = time.perf_counter()
    result = run_confined(  # (2)
        code,
        bundle.entry,
        data,
        output,
        SandboxLimits(
            cpu_seconds=max(1, int(limits.time_s)),
            memory_bytes=memory_mb(limits.memory) * 1_000_000,
            output_bytes=max(1, min(limits.max_result_bytes, 1 << 40)),
            wall_seconds=limits.time_s,
        ),
    )
    ran = time.perf_counter()
    if result.failure is not None:
        raise QueryError(f"the job failed: {result.failure}", category=PUBLISHED[result.failure])
    table = _validated(bundle, output, limits)  # (3)
    return JobResult(
        table,
        {
            "prepare_ms": round((prepared - started) * 1000),
            "sandbox_ms": round((ran - prepared) * 1000),
            "validate_ms": round((time.perf_counter() - ran) * 1000),
        },
        confinement=_record(result.confinement),
    )


def _write_bundle(bundle: Bundle, root: Path) -> None:
    for name, source in bundle.files.items():
        path = root / name  # names are relative paths of identifiers (the check's pattern)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


def _validated(bundle: Bundle, output: Path, limits: Limits) -> pa.Table:
    entries = sorted(p.name for p in output.iterdir())
    if entries != [RESULT_FILE]:
        raise QueryError(
            f"the job must write exactly {RESULT_FILE} and nothing else", category="query refused"
        )
    path = output / RESULT_FILE
    if not path.is_file() or path.is_symlink():
        raise QueryError(f"{RESULT_FILE} is not a plain file", category="query refused")
    if path.stat().st_size > limits.max_result_bytes:
        raise QueryError("the output is over the byte limit", category="result too large")
    try:
        metadata = pq.read_metadata(path)
        if metadata.num_rows > limits.max_result_rows:
            raise QueryError("the output is over the row limit", category="result too large")
        # decompressed, before it is decompressed: a small file of repeated values can
        # expand to gigabytes in the runtime's memory
        expanded = sum(
            metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)
        )
        if expanded > limits.max_result_bytes:
            raise QueryError("the output is over the byte limit", category="result too large")
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise QueryError(f"{RESULT_FILE} is not Parquet: {exc}", category="query refused") from exc
    declared = [c.name for c in bundle.output]
    if table.column_names != declared:
        raise QueryError(
            "the output's columns are not the declared ones, in order", category="query refused"
        )
    target = pa.schema([(c.name, arrow_type(c.type)) for c in bundle.output])
    try:
        cast = table.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        # the engine's text may quote a value: only the category leaves the enclave
        raise QueryError(f"the output's types differ: {exc}", category="query refused") from exc
    if cast.nbytes > limits.max_result_bytes:
        raise QueryError("the output is over the byte limit", category="result too large")
    if cast.num_rows > limits.max_result_rows:
        raise QueryError("the output is over the row limit", category="result too large")
    return cast.replace_schema_metadata(None)


def _record(confinement: Confinement) -> dict[str, object]:
    """What the job record says held: fixed fields, no free text."""
    return {
        "landlock_abi": confinement.landlock_abi,
        "seccomp": confinement.seccomp,
        "uid_dropped": confinement.uid_dropped,
        "no_new_privs": confinement.no_new_privs,
        "rlimits": confinement.rlimits,
        "dac_read_bypass": confinement.dac_read_bypass,
    }
