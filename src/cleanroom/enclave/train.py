"""The training job kind: a classifier fitted inside the enclave (ADR 0023).

The runtime has verified the ledger, checked the analysis again
(:func:`cleanroom.policy.train.check_train`) and opened each input with its
released key; ``text`` is the checked spec. This kind:

1. runs the spec's training SQL, as the room's check returned it
   (:func:`cleanroom.policy.train.to_run`), through the SQL kind's sandboxed engine
   (the same key checks, time and memory limits, no files or network); the
   training set may take a quarter of the room's memory;
2. reads the examples (:func:`cleanroom.models.train.examples`) and writes them
   as two ``.npy`` arrays into the job's private directory;
3. fits, converts to ONNX and evaluates (:func:`cleanroom.models.train.train_arrays`)
   in a fresh, isolated interpreter, ``python -I -m cleanroom.enclave.train``, with
   the room's threads (BLAS and OpenMP included), the room's memory as its address
   space, no core dump and no standard streams,
   killed when what is left of the room's time limit runs out: no library call
   (a logistic regression's solver, an ONNX conversion of many trees) can run
   past it;
4. returns one row: the model's name, its ONNX bytes if the spec delivers them,
   and the evaluation, within the room's byte limit.

A failure is a category decided here, never a library's text (which may quote a
value): bad training data or a model that does not convert is a conversion
error, running out of time a time limit, a training set over its share of
memory a memory limit, a child that dies without an answer an internal error.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from cleanroom.enclave.sandbox import child_environment
from cleanroom.enclave.score import UNLIMITED_ROWS
from cleanroom.enclave.sql import Input, JobResult, Limits, QueryError, memory_mb, run_sql
from cleanroom.errors import ConversionError, ModelRefusedError, ValidationError
from cleanroom.governance.outcomes import FailureCategory
from cleanroom.policy.train import parse_spec

TRAINING_SET_SHARE = 4  # the training set may take 1/4 of the room's memory
# the child's address space: the room's memory, but never less than an interpreter
# with scikit-learn, LightGBM and onnxruntime loaded needs to start (their thread pools
# reserve address space they never touch)
CHILD_MEMORY_FLOOR = 2 << 30
FAILURE_FILE = "failure"
# what the child may report: a category, never a message
_CHILD_CATEGORIES: tuple[FailureCategory, ...] = ("conversion error", "memory limit")


def run_train(text: str, inputs: list[Input], limits: Limits, work: Path) -> JobResult:
    """Train the spec's model on its training set; returns the one-row result."""
    import numpy as np  # noqa: PLC0415 - with the ML stack, only in a training job

    from cleanroom.models.train import Metrics, Trained, examples, result_table  # noqa: PLC0415

    started = time.perf_counter()
    spec = parse_spec(text)
    budget = memory_mb(limits.memory) * 1_000_000 // TRAINING_SET_SHARE
    reading = replace(limits, max_result_rows=UNLIMITED_ROWS, max_result_bytes=budget)  # (1)
    try:
        table = run_sql(spec.training, inputs, reading, work).table
    except QueryError as exc:
        if exc.category != "result too large":
            raise
        raise QueryError("the training set is over its memory", category="memory limit") from exc
    try:
        x, y = examples(table, spec)  # (2)
    except ValidationError as exc:
        raise QueryError(
            f"the examples cannot be read: {exc}", category="conversion error"
        ) from exc
    del table
    child = Path(tempfile.mkdtemp(prefix="training-", dir=work))  # 0o700, the job's own
    np.save(child / "x.npy", x, allow_pickle=False)
    np.save(child / "y.npy", y, allow_pickle=False)
    del x, y
    read = time.perf_counter()
    left = max(0.0, limits.time_s - (read - started))
    threads = limits.threads or os.cpu_count() or 1
    room_memory = memory_mb(limits.memory) * 1_000_000
    _run_child(child, text, threads, left, max(CHILD_MEMORY_FLOOR, room_memory))  # (3)
    if (child / "model.onnx").stat().st_size > limits.max_result_bytes:  # before it is read
        raise QueryError("the trained model is over the room's limits", category="result too large")
    answer = json.loads((child / "metrics.json").read_text(encoding="utf-8"))
    model_bytes = (child / "model.onnx").read_bytes()
    trained = Trained(model_bytes, Metrics(**answer["metrics"]), answer["phases"])
    result = result_table(spec, trained)
    if result.nbytes > limits.max_result_bytes:  # (4)
        raise QueryError("the trained model is over the room's limits", category="result too large")
    return JobResult(result, {"read_ms": round((read - started) * 1000), **trained.phases})


def _run_child(directory: Path, text: str, threads: int, seconds: float, memory: int) -> None:
    """Train in a fresh, isolated interpreter (``python -I -m cleanroom.enclave.train
    DIR``: no user site, no ``PYTHONPATH``, working directory and home in the job's
    own directory, no standard streams, no core dump, ``memory`` bytes of address
    space); kill it when ``seconds`` run out, or when anything here fails."""
    (directory / "spec.json").write_text(text, encoding="utf-8")
    environment = child_environment(directory)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        environment[variable] = str(threads)  # LightGBM's OpenMP, every BLAS of scikit-learn

    def limit() -> None:  # in the child, before Python starts
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core would hold the examples
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    process = subprocess.Popen(  # noqa: S603 - this interpreter, this module, our directory
        [sys.executable, "-I", "-m", "cleanroom.enclave.train", str(directory), str(threads)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=directory,
        env=environment,
        preexec_fn=limit,  # noqa: PLW1509 - setrlimit only, no lock taken
    )
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise QueryError("training ran over its time limit", category="time limit") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    failure = directory / FAILURE_FILE
    if failure.exists():
        category = failure.read_text(encoding="utf-8")
        if category not in _CHILD_CATEGORIES:  # the child's own words are never trusted
            category = "internal error"
        raise QueryError("the model cannot be trained", category=category)  # type: ignore[arg-type]
    if process.returncode != 0 or not (directory / "metrics.json").exists():
        raise QueryError("the training process died", category="internal error")


def _child(root: Path, threads: int) -> None:  # pragma: no cover - runs in the child
    """The child: fit, convert, evaluate; writes the model and metrics, or a category."""
    import numpy as np  # noqa: PLC0415

    category: FailureCategory | None = None
    try:
        from cleanroom.models.train import train_arrays  # noqa: PLC0415 - inside: a category

        x = np.load(root / "x.npy", allow_pickle=False)
        y = np.load(root / "y.npy", allow_pickle=False)
        spec = parse_spec((root / "spec.json").read_text(encoding="utf-8"))
        trained = train_arrays(x, y, spec, threads=threads)
    except MemoryError:
        category = "memory limit"
    except (ValidationError, ConversionError, ModelRefusedError, ValueError, ArithmeticError):
        category = "conversion error"  # the data cannot train: what a library said stays here
    except Exception:  # noqa: BLE001 - any other failure is a category too
        category = "internal error"
    if category is not None:
        (root / FAILURE_FILE).write_text(category, encoding="utf-8")
        return
    (root / "model.onnx").write_bytes(trained.onnx)
    answer = {"metrics": asdict(trained.metrics), "phases": trained.phases}
    (root / "metrics.json").write_text(json.dumps(answer), encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - the child's entry
    _child(Path(sys.argv[1]), int(sys.argv[2]))
