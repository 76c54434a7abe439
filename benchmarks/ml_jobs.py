"""Model jobs: scoring with a loaded ONNX model, and Python jobs in the sandbox.

Scoring (target <= 1.15x on execution): ``--rows`` seeded synthetic records
(8 numeric columns, 6 float and 2 integer, in a pyarrow Table) are scored with
a LightGBM classifier (``--trees`` trees, trained on ``--train-rows`` seeded
synthetic rows), converted with ``cleanroom.models.convert.to_onnx``, described,
put in a manifest signed by a vendor and verified, loaded with
``cleanroom.models.onnx.load(threads=T)`` and run through
``cleanroom.models.score.score(table, session, outputs=("label",))``. The plain
side is onnxruntime on the same plaintext: an ``InferenceSession`` built from the
same bytes (default options, the same intra-op thread count) and
``session.run(["label"], {"features": matrix})``. The plain side's time includes
building the float32 matrix from the same table with numpy (as scoring builds
it from the table); the plain run alone is reported too. The fixed overhead of
loading (the checks on the model bytes plus the session: ``load()``) is
reported against plain ``InferenceSession(...)`` creation, separately. Both
sides run in this process, alternating, and their labels are compared.

Scoring as a job (the same target on execution): the enclave's scoring kind,
``cleanroom.enclave.score.run_score``, over the same records sealed as a dataset
(with an id column) and the model sealed as a model asset: it reads both through
the sandboxed engine with their keys, loads and checks the model, scores and
returns the id and label columns. The plain side reads the same records from a
plaintext Parquet file with pyarrow, builds the matrix, creates an
``InferenceSession`` and runs it. The kind's own ``score_ms`` phase is held to
the target against the plain matrix + run; the whole kind against the whole
plain pipeline is printed as the fixed overhead of decryption and checks.

Sandbox (target <= 1.1x plus a fixed start-up, reported): a pandas job (read a
Parquet input of ``--rows`` rows, group by a key and sum, write the result as
Parquet) run confined with ``cleanroom.enclave.sandbox.run_confined`` versus the
same script unconfined (``python -I job.py INPUTS OUTPUT``, same working
directory and the same environment the sandbox gives its child, thread
variables included), each as a child process, alternating. A trivial job
(``pass``) is timed both ways for the start-up; the ratio of the job's own work,
(confined - confined start-up) / (unconfined - unconfined start-up), is the
one held to the target; the raw ratio is printed too. Both scripts end with
``os._exit`` as the sandbox's child does, so neither pays for pandas' and
pyarrow's interpreter teardown. The confined time includes ``run_confined``'s own work
(handing the directories over to the sandbox user, watching the output).
Skipped, with a message, on a machine that cannot confine a job.

Training as a job (target <= 1.15x): the enclave's training kind,
``cleanroom.enclave.train.run_train``, over ``--fit-rows`` seeded labelled rows
sealed as a dataset: it runs the training SQL through the sandboxed engine,
fits a LightGBM classifier (``--trees`` trees, 31 leaves) on the rows not held
out, converts it to ONNX and evaluates it. The plain side reads the same rows
from plaintext Parquet with pyarrow and fits the same classifier (the same
parameters, seed, threads and rows) with LightGBM. The kind's ``fit_ms`` phase
is held to the target against the plain fit; the whole kind against plain read
+ fit is printed, with the ONNX conversion and evaluation reported as fixed cost.

    .venv/bin/python benchmarks/ml_jobs.py [--rows 1000000] [--repeat 5] [--threads 1]
        [--fit-rows 200000] [--only scoring|training|sandbox]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median
from cleanroom import Party
from cleanroom.enclave.sandbox import Limits, child_environment, probe_confinement, run_confined
from cleanroom.models.manifest import ModelManifest

FEATURES = ("age", "balance", "tenure", "income", "spend", "utilisation", "products", "calls")
KEYS = 1_000  # distinct group keys in the sandbox job's input
LIMITS = Limits(
    cpu_seconds=600, memory_bytes=8 << 30, output_bytes=256 << 20, open_files=64, wall_seconds=900
)
JOB = """\
import os
import sys
from pathlib import Path

import pandas as pd

inputs, output = Path(sys.argv[1]), Path(sys.argv[2])
frame = pd.read_parquet(inputs / "data.parquet")
totals = frame.groupby("key", as_index=False).sum()
totals.to_parquet(output / "totals.parquet", index=False)
os._exit(0)  # as the sandbox's child ends: no interpreter teardown on either side
"""
TRIVIAL = "import os\nos._exit(0)\n"


def _need(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"{why} needs {module}, which is not installed (the [ml] / [server] extras)")


def features(rows: int, seed: int) -> pa.Table:
    """``rows`` seeded records: six float columns and two integer ones."""
    rng = np.random.default_rng(seed)
    columns = {
        "age": rng.normal(45, 12, rows),
        "balance": rng.lognormal(8, 1, rows),
        "tenure": rng.uniform(0, 30, rows),
        "income": rng.lognormal(10, 0.5, rows),
        "spend": rng.gamma(2, 500, rows),
        "utilisation": rng.beta(2, 5, rows),
        "products": rng.integers(1, 6, rows),
        "calls": rng.poisson(2, rows),
    }
    return pa.table({name: columns[name] for name in FEATURES})


def matrix(table: pa.Table) -> np.ndarray:
    """The float32 matrix of the feature columns, as a plain numpy user builds it."""
    return np.column_stack([table.column(n).to_numpy() for n in FEATURES]).astype(np.float32)


def labels(x: np.ndarray, seed: int) -> np.ndarray:
    """A seeded binary label that depends on most features, with noise."""
    rows = len(x)
    rng = np.random.default_rng(seed + 1)
    logit = (
        0.04 * (x[:, 0] - 45)
        - 0.3 * np.log(x[:, 1])
        + 0.1 * x[:, 2]
        + 3 * x[:, 5]
        - 0.5 * x[:, 6]
        + 0.4 * x[:, 7]
        + rng.normal(0, 1, rows)
    )
    return (logit > np.median(logit)).astype(np.int64)


def train(rows: int, trees: int, seed: int) -> Any:
    lightgbm = _need("lightgbm", "scoring")
    x = matrix(features(rows, seed))
    y = labels(x, seed)
    model = lightgbm.LGBMClassifier(
        n_estimators=trees, num_leaves=31, random_state=seed, n_jobs=1, verbose=-1
    )
    return model.fit(x, y)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def rotate(i: int, sides: list[Any]) -> list[Any]:
    """The sides in turn ``i``'s order, so no side always runs first."""
    return sides[i % len(sides) :] + sides[: i % len(sides)]


# -- scoring ---------------------------------------------------------------------------


def scoring(args: argparse.Namespace) -> dict[str, Any]:
    ort = _need("onnxruntime", "scoring")
    _need("onnxmltools", "converting the model")
    from cleanroom.models.convert import to_onnx  # noqa: PLC0415 - needs the [ml] extra
    from cleanroom.models.onnx import describe, load  # noqa: PLC0415 - needs onnx
    from cleanroom.models.score import score  # noqa: PLC0415

    model_bytes = to_onnx(train(args.train_rows, args.trees, args.seed), features=FEATURES)
    vendor = Party.create("vendor")
    manifest = ModelManifest(
        name="churn",
        version="1.0.0",
        vendor_name=vendor.name,
        vendor_fingerprint=vendor.identity.fingerprint,
        features=FEATURES,
        model=describe(model_bytes),
        created_at=f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
    )
    verified = ModelManifest.verify(manifest.sign(vendor), vendor.identity)
    table = features(args.rows, args.seed + 2)

    def plain_session() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    loads: dict[str, list[float]] = {"load": [], "plain": []}
    for i in range(args.repeat):
        for side, fn in rotate(
            i,
            [
                ("load", lambda: load(model_bytes, verified, threads=args.threads)),
                ("plain", plain_session),
            ],
        ):
            loads[side].append(timed(fn)[0])
    session, plain = load(model_bytes, verified, threads=args.threads), plain_session()

    def plain_score() -> tuple[float, Any]:
        """The plain side: its run's time alone, and the labels."""
        rows = matrix(table)
        run_start = time.perf_counter()
        (label,) = plain.run(["label"], {"features": rows})
        return (time.perf_counter() - run_start) * 1000, label

    # warm-up, and the same labels both ways
    ours = score(table, session, outputs=("label",)).column("label").to_numpy()
    if not np.array_equal(ours, plain_score()[1]):
        raise SystemExit("scoring and plain onnxruntime disagree on the labels")
    runs: dict[str, list[float]] = {"score": [], "plain": [], "plain run": []}
    for i in range(args.repeat):
        for side in rotate(i, ["score", "plain"]):
            if side == "score":
                runs["score"].append(timed(lambda: score(table, session, outputs=("label",)))[0])
            else:
                total, (run, _) = timed(plain_score)
                runs["plain"].append(total)
                runs["plain run"].append(run)
    return {
        "model_bytes": len(model_bytes),
        "score_ms": median(runs["score"]),
        "plain_ms": median(runs["plain"]),
        "plain_run_ms": median(runs["plain run"]),
        "load_ms": median(loads["load"]),
        "plain_session_ms": median(loads["plain"]),
    }


def print_scoring(rows: int, r: dict[str, Any]) -> None:
    s, p, run = r["score_ms"], r["plain_ms"], r["plain_run_ms"]
    rate = rows / (s / 1000)
    title = f"scoring {rows:,} rows"
    print(f"{title:36s} {'median':>10s} {'ratio':>7s}")
    print(f"{'plain: matrix + session.run':36s} {p:8.1f}ms {1:6.2f}x")
    print(f"{'plain: session.run alone':36s} {run:8.1f}ms {run / p:6.2f}x")
    print(
        f"{'cleanroom score()':36s} {s:8.1f}ms {s / p:6.2f}x "
        f"(target <= 1.15x; {s / run:.2f}x the run alone; {rate:,.0f} rows/s)"
    )
    lo, pl = r["load_ms"], r["plain_session_ms"]
    print(
        f"fixed overhead: load() {lo:.1f} ms (checks + session) vs plain InferenceSession "
        f"{pl:.1f} ms: +{lo - pl:.1f} ms per model ({r['model_bytes']:,} bytes)"
    )


# -- scoring as a job --------------------------------------------------------------------


def scoring_kind(args: argparse.Namespace) -> dict[str, Any]:
    ort = _need("onnxruntime", "scoring")
    from cleanroom.datasets.schema import Schema  # noqa: PLC0415
    from cleanroom.datasets.seal import seal_dataset, seal_model, unseal_key  # noqa: PLC0415
    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Input  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits as JobLimits  # noqa: PLC0415
    from cleanroom.models.convert import to_onnx  # noqa: PLC0415
    from cleanroom.models.onnx import describe  # noqa: PLC0415
    from cleanroom.policy.score import ScoreSpec  # noqa: PLC0415

    model_bytes = to_onnx(train(args.train_rows, args.trees, args.seed), features=FEATURES)
    vendor, owner = Party.create("vendor"), Party.create("owner")
    manifest = ModelManifest(
        name="churn",
        version="1.0.0",
        vendor_name=vendor.name,
        vendor_fingerprint=vendor.identity.fingerprint,
        features=FEATURES,
        model=describe(model_bytes),
        created_at=f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
    )
    table = features(args.rows, args.seed + 2)
    table = table.add_column(0, "id", pa.array(np.arange(args.rows), pa.int64()))
    schema = Schema.from_json(
        {
            "identity_column": "id",
            "columns": [
                {"name": "id", "type": "int64", "nullable": False},
                *(
                    {"name": n, "type": "int64" if n in ("products", "calls") else "float64"}
                    for n in FEATURES
                ),
            ],
        }
    )
    spec = ScoreSpec(
        model="churn", model_digest=manifest.digest(), records="records", id="id", outputs=["label"]
    ).text()
    limits = JobLimits(threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-") as tmp:
        work = Path(tmp)
        model = seal_model(model_bytes, manifest, owner=vendor, output=work / "m", name="churn")
        records = seal_dataset(table, schema=schema, owner=owner, output=work / "r", name="records")
        plaintext = work / "records.parquet"
        pq.write_table(table, plaintext)
        inputs = [
            Input(
                "churn",
                work / "m" / "data.parquet",
                unseal_key(work / "m", model.manifest, vendor),
                manifest,
            ),
            Input(
                "records",
                work / "r" / "data.parquet",
                unseal_key(work / "r", records.manifest, owner),
                rows=args.rows,
            ),
        ]

        def plain() -> tuple[float, Any]:
            """The plain pipeline; returns the time of its matrix + run, and the labels."""
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            read = pq.read_table(plaintext, columns=["id", *FEATURES])
            session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
            start = time.perf_counter()
            (label,) = session.run(["label"], {"features": matrix(read)})
            return (time.perf_counter() - start) * 1000, label

        ours = run_score(spec, inputs, limits, work)
        if not np.array_equal(ours.table.column("label").to_numpy(), plain()[1]):
            raise SystemExit("the scoring kind and plain onnxruntime disagree on the labels")
        runs: dict[str, list[float]] = {"kind": [], "kind score": [], "plain": [], "plain run": []}
        for i in range(args.repeat):
            for side in rotate(i, ["kind", "plain"]):
                if side == "kind":
                    total, result = timed(lambda: run_score(spec, inputs, limits, work))
                    runs["kind"].append(total)
                    runs["kind score"].append(result.phases["score_ms"])
                else:
                    total, (run, _) = timed(plain)
                    runs["plain"].append(total)
                    runs["plain run"].append(run)
    return {name.replace(" ", "_") + "_ms": median(v) for name, v in runs.items()}


def print_scoring_kind(rows: int, r: dict[str, Any]) -> None:
    title = f"scoring {rows:,} sealed rows as a job"
    print(f"{title:36s} {'median':>10s} {'ratio':>7s}")
    print(f"{'plain: matrix + session.run':36s} {r['plain_run_ms']:8.1f}ms {1:6.2f}x")
    print(
        f"{'scoring kind: score phase':36s} {r['kind_score_ms']:8.1f}ms "
        f"{r['kind_score_ms'] / r['plain_run_ms']:6.2f}x (target <= 1.15x on execution)"
    )
    print(f"{'plain: read + session + run':36s} {r['plain_ms']:8.1f}ms {1:6.2f}x")
    print(
        f"{'scoring kind: whole':36s} {r['kind_ms']:8.1f}ms {r['kind_ms'] / r['plain_ms']:6.2f}x "
        f"(fixed overhead: +{r['kind_ms'] - r['plain_ms']:.0f} ms for decryption and checks)"
    )


# -- sandbox ---------------------------------------------------------------------------


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def _confined(job: Path, entry: str) -> float:
    output = _fresh(job / "output")
    ms, result = timed(lambda: run_confined(job / "bundle", entry, job / "inputs", output, LIMITS))
    if not result.ok:
        raise SystemExit(f"the confined {entry} failed: {result.failure}")
    return ms


def _unconfined(job: Path, entry: str) -> float:
    output = _fresh(job / "output")
    command = [sys.executable, "-I", str(job / "bundle" / entry), str(job / "inputs"), str(output)]
    ms, done = timed(
        lambda: subprocess.run(command, cwd=output, env=child_environment(output), check=False)
    )
    if done.returncode != 0:
        raise SystemExit(f"the unconfined {entry} failed with status {done.returncode}")
    return ms


def sandbox(args: argparse.Namespace) -> dict[str, Any]:
    _need("pandas", "the sandbox job")
    # not under a 0700 temporary base: the sandbox user must reach the job directories
    root = Path(tempfile.mkdtemp(prefix="cleanroom-bench-"))
    try:
        root.chmod(0o711)
        job = root / "job"
        for name in ("bundle", "inputs", "output"):
            (job / name).mkdir(parents=True)
        (job / "bundle" / "job.py").write_text(JOB)
        (job / "bundle" / "trivial.py").write_text(TRIVIAL)
        rng = np.random.default_rng(args.seed + 3)
        data = pa.table(
            {
                "key": rng.integers(0, KEYS, args.rows),
                "amount": rng.gamma(2, 50, args.rows),
                "count": rng.integers(0, 100, args.rows),
            }
        )
        pq.write_table(data, job / "inputs" / "data.parquet")
        sides = {
            "confined job": lambda: _confined(job, "job.py"),
            "unconfined job": lambda: _unconfined(job, "job.py"),
            "confined start-up": lambda: _confined(job, "trivial.py"),
            "unconfined start-up": lambda: _unconfined(job, "trivial.py"),
        }
        # warm-up (page cache, first imports), and the same totals both ways
        totals = []
        for name, fn in sides.items():
            fn()
            if name.endswith("job"):
                totals.append(pq.read_table(job / "output" / "totals.parquet").sort_by("key"))
        if not totals[0].equals(totals[1]):
            raise SystemExit("the confined and unconfined jobs wrote different totals")
        runs: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.repeat):
            for name in rotate(i, list(sides)):
                runs[name].append(sides[name]())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {name.replace(" ", "_").replace("-", "") + "_ms": median(v) for name, v in runs.items()}


def print_sandbox(rows: int, r: dict[str, Any]) -> None:
    cj, uj = r["confined_job_ms"], r["unconfined_job_ms"]
    cs, us = r["confined_startup_ms"], r["unconfined_startup_ms"]
    title = f"pandas job, {rows:,} rows"
    print(f"{title:36s} {'unconfined':>11s} {'confined':>10s} {'ratio':>7s}")
    print(f"{'trivial job (start-up)':36s} {us:9.1f}ms {cs:8.1f}ms {cs / us:6.2f}x")
    print(f"{'group-by job (raw)':36s} {uj:9.1f}ms {cj:8.1f}ms {cj / uj:6.2f}x")
    print(
        f"{'group-by job less start-up':36s} {uj - us:9.1f}ms {cj - cs:8.1f}ms "
        f"{(cj - cs) / (uj - us):6.2f}x (target <= 1.1x)"
    )
    print(f"fixed sandbox start-up: +{cs - us:.1f} ms per job")


# -- training ---------------------------------------------------------------------------


def training_kind(args: argparse.Namespace) -> dict[str, Any]:
    lightgbm = _need("lightgbm", "training")
    from cleanroom.datasets.schema import Schema  # noqa: PLC0415
    from cleanroom.datasets.seal import seal_dataset, unseal_key  # noqa: PLC0415
    from cleanroom.enclave.sql import Input  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits as JobLimits  # noqa: PLC0415
    from cleanroom.enclave.train import run_train  # noqa: PLC0415
    from cleanroom.models.train import split  # noqa: PLC0415
    from cleanroom.policy.train import training_spec  # noqa: PLC0415

    rows = args.fit_rows
    table = features(rows, args.seed + 3)
    table = table.append_column("label", pa.array(labels(matrix(table), args.seed)))
    table = table.add_column(0, "id", pa.array(np.arange(rows), pa.int64()))
    schema = Schema.from_json(
        {
            "identity_column": "id",
            "columns": [
                {"name": "id", "type": "int64", "nullable": False},
                *(
                    {"name": n, "type": "int64" if n in ("products", "calls") else "float64"}
                    for n in FEATURES
                ),
                {"name": "label", "type": "int64", "nullable": False},
            ],
        }
    )
    columns = ", ".join([*FEATURES, "label"])
    spec = training_spec(
        training_sql=f"SELECT {columns} FROM records",
        label="label",
        features=FEATURES,
        model="churn",
        params={"n_estimators": args.trees, "num_leaves": 31},
        seed=args.seed,
    )
    limits = JobLimits(threads=args.threads)
    fit_rows, _ = split(rows, spec.holdout, spec.seed)
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-") as tmp:
        work = Path(tmp)
        owner = Party.create("owner")
        sealed = seal_dataset(table, schema=schema, owner=owner, output=work / "r", name="records")
        inputs = [
            Input(
                "records",
                work / "r" / "data.parquet",
                unseal_key(work / "r", sealed.manifest, owner),
                rows=rows,
            )
        ]
        plaintext = work / "records.parquet"
        pq.write_table(table, plaintext)

        def plain() -> tuple[float, Any]:
            """Read the plaintext, fit the same model on the same rows; returns the fit's time."""
            read = pq.read_table(plaintext)
            x = matrix(read)[fit_rows]
            y = read.column("label").to_numpy()[fit_rows]
            model = lightgbm.LGBMClassifier(
                n_estimators=args.trees,
                num_leaves=31,
                random_state=args.seed,
                n_jobs=args.threads,
                deterministic=True,
                force_row_wise=True,
                verbose=-1,
            )
            start = time.perf_counter()
            model.fit(x, y)
            return (time.perf_counter() - start) * 1000, model

        runs: dict[str, list[float]] = {
            "kind": [],
            "kind fit": [],
            "kind fixed": [],
            "plain": [],
            "plain fit": [],
        }
        for i in range(args.repeat):
            for side in rotate(i, ["kind", "plain"]):
                if side == "kind":
                    total, result = timed(lambda: run_train(spec.text(), inputs, limits, work))
                    runs["kind"].append(total)
                    runs["kind fit"].append(result.phases["fit_ms"])
                    runs["kind fixed"].append(
                        result.phases["convert_ms"] + result.phases["evaluate_ms"]
                    )
                else:
                    total, (fit, _) = timed(plain)
                    runs["plain"].append(total)
                    runs["plain fit"].append(fit)
    return {name.replace(" ", "_") + "_ms": median(v) for name, v in runs.items()}


def print_training_kind(rows: int, r: dict[str, Any]) -> None:
    title = f"training on {rows:,} sealed rows as a job"
    print(f"{title:36s} {'median':>10s} {'ratio':>7s}")
    print(f"{'plain: LightGBM fit':36s} {r['plain_fit_ms']:8.1f}ms {1:6.2f}x")
    print(
        f"{'train kind: fit phase':36s} {r['kind_fit_ms']:8.1f}ms "
        f"{r['kind_fit_ms'] / r['plain_fit_ms']:6.2f}x (target <= 1.15x)"
    )
    print(f"{'plain: read + fit':36s} {r['plain_ms']:8.1f}ms {1:6.2f}x")
    print(
        f"{'train kind: whole':36s} {r['kind_ms']:8.1f}ms {r['kind_ms'] / r['plain_ms']:6.2f}x "
        f"(of which ONNX conversion + evaluation {r['kind_fixed_ms']:.0f} ms, reported)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fit-rows", type=int, default=200_000, help="rows of the training job")
    parser.add_argument(
        "--only", choices=["scoring", "training", "sandbox"], help="run one section only"
    )
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d} {machine()}")
    print(f"rows: {args.rows:,}; repeats: {args.repeat}; onnxruntime threads: {args.threads}")
    results: dict[str, Any] = {"rows": args.rows, "repeat": args.repeat, "threads": args.threads}

    if args.only in (None, "scoring"):
        results["scoring"] = scoring(args)
        print_scoring(args.rows, results["scoring"])
        print()
        results["scoring_kind"] = scoring_kind(args)
        print_scoring_kind(args.rows, results["scoring_kind"])
        print()
    if args.only in (None, "training"):
        results["training_kind"] = training_kind(args)
        print_training_kind(args.fit_rows, results["training_kind"])
        print()
    if args.only not in (None, "sandbox"):
        results["sandbox"] = None
    elif probe_confinement().enforced:
        results["sandbox"] = sandbox(args)
        print_sandbox(args.rows, results["sandbox"])
    else:
        results["sandbox"] = None
        print("sandbox: this machine has neither Landlock nor seccomp, so no job can run here")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
