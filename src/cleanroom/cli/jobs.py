"""Commands for analyses, enclave measurements and jobs.

    cleanroom analysis propose offers --sql offers.sql --input transactions \\
        --input customers --recipient bank
    cleanroom enclave measure
    cleanroom enclave approve --this-install --allow-insecure-virtual
    cleanroom job run offers --wait
    cleanroom job result 5d1c -o offers.csv
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cleanroom.cli.rooms import JSON, KEYSTORE, QUIET, ROOM, SERVICE, _room, proposed
from cleanroom.cli.ui import RichProgress, console, emit_id, emit_json, err_console, short, table

if TYPE_CHECKING:
    from cleanroom.client import Room

analysis_app = typer.Typer(help="Propose analyses (SQL run in an enclave).", no_args_is_help=True)
enclave_app = typer.Typer(
    help="Measure the enclave runtime and propose which measurements the room trusts.",
    no_args_is_help=True,
)
job_app = typer.Typer(help="Run approved analyses in an attested enclave.", no_args_is_help=True)
budget_app = typer.Typer(help="Privacy budgets of the room's datasets.", no_args_is_help=True)
JOB = typer.Argument(
    ..., metavar="JOB", help="A job id (a unique prefix of 4+ characters is enough)."
)

INSECURE_WARNING = (
    "[bold yellow]warning:[/] this job ran on the insecure virtual platform: "
    "no hardware protected the data while it ran (development only)"
)


def read_sql(path: Path) -> str:
    """The SQL text of ``--sql``, read before anything is signed."""
    from cleanroom.errors import InvalidInputError, StorageError  # noqa: PLC0415

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise StorageError(f"SQL file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"SQL file {path} is a directory, not a file") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"SQL file {path} is not UTF-8 text") from exc
    if not text.strip():
        raise InvalidInputError(f"SQL file {path} is empty")
    return text


SQL = typer.Option(..., "--sql", help="A file holding exactly one SELECT statement.")
INPUTS = typer.Option(..., "--input", "-i", help="A dataset the query reads, by name (repeat).")
RECIPIENTS = typer.Option(
    ..., "--recipient", help="Who receives the result: a member name or fingerprint (repeat)."
)
DP = typer.Option(
    None,
    "--dp",
    help="Make it a differentially private release: a JSON file with epsilon, unit, "
    "max_contributions, group_by and aggregates (see docs/privacy.md).",
)


@analysis_app.command("propose")
def analysis_propose(
    name: str = typer.Argument(..., help="The analysis name, used by `job run`."),
    sql: Path = SQL,
    inputs: list[str] = INPUTS,
    recipients: list[str] = RECIPIENTS,
    dp: Path | None = DP,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose an SQL analysis. Tables are the input datasets' names. It runs only
    after the owners of every input and every recipient approve it.

    Example: cleanroom analysis propose offers --sql offers.sql -i transactions
    -i customers --recipient bank --room offers --service ... --as keys/analyst
    """
    from cleanroom.wire import read_json_file  # noqa: PLC0415

    text = read_sql(sql)  # a missing or empty file is refused before anything is signed
    spec = read_json_file(dp, what="DP specification") if dp is not None else None
    handle = _room(service, keystore, room)
    pid = handle.propose_analysis(name, text, inputs=inputs, recipients=recipients, dp=spec)
    proposed(pid, f"analysis {name}", quiet)


@analysis_app.command("propose-scoring")
def analysis_propose_scoring(
    name: str = typer.Argument(..., help="The analysis name, used by `job run`."),
    model: str = typer.Option(..., "--model", help="The model asset that scores."),
    records: str = typer.Option(..., "--records", help="The dataset whose rows it scores."),
    id_column: str = typer.Option(..., "--id", help="The records' column that names each row."),
    outputs: list[str] = typer.Option(
        [], "--output", "-o", help="A model output to release, e.g. label (repeat; none: ids only)."
    ),
    keep: str | None = typer.Option(
        None,
        "--keep",
        help="Keep only rows whose output equals a value: OUTPUT=VALUE, e.g. label=1.",
    ),
    recipients: list[str] = RECIPIENTS,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose a scoring analysis: a protected model scores every row of a dataset in
    the enclave; the result holds the id column and the outputs named, nothing else.
    It runs once the model's owner, the records' owner and every recipient approve.

    Example: cleanroom analysis propose-scoring candidates --model triage --records
    patients --id patient_id --keep label=1 --recipient hospital --room trial --as keys/hospital
    """
    kept: tuple[str, int | bool] | None = None
    if keep is not None:
        output, sep, value = keep.partition("=")
        if not sep or not output.strip():
            raise typer.BadParameter("write OUTPUT=VALUE, e.g. label=1", param_hint="--keep")
        kept = (output.strip(), _keep_value(value.strip()))
    handle = _room(service, keystore, room)
    pid = handle.propose_scoring(
        name,
        model=model,
        records=records,
        id_column=id_column,
        outputs=outputs,
        keep=kept,
        recipients=recipients,
    )
    proposed(pid, f"scoring analysis {name}", quiet)


@analysis_app.command("propose-training")
def analysis_propose_training(
    name: str = typer.Argument(..., help="The analysis name, used by `job run`."),
    sql: Path = typer.Option(
        ..., "--sql", help="A file with the SELECT that defines the training set."
    ),
    label: str = typer.Option(..., "--label", help="The training set's column of classes."),
    features: list[str] = typer.Option(
        ..., "--feature", "-f", help="A training-set column the model takes, in order (repeat)."
    ),
    inputs: list[str] = INPUTS,
    recipients: list[str] = RECIPIENTS,
    algorithm: str = typer.Option(
        "gradient_boosting",
        "--algorithm",
        help="gradient_boosting (LightGBM) or logistic_regression (scikit-learn).",
    ),
    params: list[str] = typer.Option(
        [],
        "--param",
        help="An algorithm parameter, NAME=VALUE, e.g. n_estimators=200 (repeat; "
        "docs/models.md lists them with their ranges).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the held-out rows and the algorithm."),
    holdout: float = typer.Option(0.2, "--holdout", help="The share of rows held out (0-0.5]."),
    metrics_only: bool = typer.Option(
        False, "--metrics-only", help="Release the evaluation only, not the model."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Propose nothing: run it here, as the enclave would, on mock rows of the "
        "inputs (made from their schemas, never their data) and print the metrics.",
    ),
    mock_rows: int | None = typer.Option(
        None, "--mock-rows", min=10, max=1_000_000, help="Mock rows per input for --dry-run."
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose a training analysis: the enclave runs the SQL over the inputs, fits the
    model on the rows, converts it to ONNX and evaluates it on held-out rows; the
    recipients receive the ONNX model and its metrics (`job result --model-out`).
    Only inputs whose owners approve this exact analysis can be read.

    Example: cleanroom analysis propose-training response --sql outcomes.sql
    --label responded -f age_band -f hba1c -i trial --recipient sponsor --room trial
    """
    from cleanroom.policy.train import LANGUAGE, training_spec  # noqa: PLC0415

    spec = training_spec(
        training_sql=read_sql(sql),
        label=label,
        features=features,
        model=name,
        algorithm=algorithm,
        params=dict(_param(p) for p in params),
        seed=seed,
        holdout=holdout,
        deliver="metrics" if metrics_only else "model",
    )
    handle = _room(service, keystore, room)
    if dry_run:
        result = handle.try_analysis(
            LANGUAGE, spec.text(), inputs, recipients=recipients, rows=mock_rows
        )
        metrics = {k: v for k, v in result.to_pylist()[0].items() if k != "onnx"}
        console.print(f"[green]trained on mock rows[/] (nothing proposed): {metrics}")
        return
    pid = handle.propose_training(
        name,
        training_sql=spec.training,
        label=spec.label,
        features=spec.features,
        inputs=inputs,
        recipients=recipients,
        algorithm=spec.algorithm,
        params=spec.params,
        seed=spec.seed,
        holdout=spec.holdout,
        deliver=spec.deliver,
    )
    proposed(pid, f"training analysis {name}", quiet)


def _param(text: str) -> tuple[str, int | float]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise typer.BadParameter("write NAME=VALUE, e.g. n_estimators=200", param_hint="--param")
    try:
        return name.strip(), int(value)
    except ValueError:
        pass
    try:
        return name.strip(), float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number", param_hint="--param") from None


def _keep_value(text: str) -> int | bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an integer or true/false", param_hint="--keep"
        ) from None


@analysis_app.command("list")
def analysis_list(
    room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE, as_json: bool = JSON
) -> None:
    """List the room's analyses: inputs, recipients, status, DP epsilon.

    Example: cleanroom analysis list --room offers --service ... --as keys/analyst
    """
    found = _room(service, keystore, room).state()["analyses"]
    if as_json:
        emit_json(found)
        return
    shown = table("analysis", "version", "inputs", "status", "epsilon")
    for a in found:
        epsilon = "" if a["dp_epsilon"] is None else f"{a['dp_epsilon']:g}"
        shown.add_row(a["name"], str(a["version"]), ", ".join(a["inputs"]), a["status"], epsilon)
    console.print(shown)


@enclave_app.command("measure")
def enclave_measure() -> None:
    """Print the measurement of the enclave runtime installed here (insecure-virtual).

    It is a hash of every file of the installed cleanroom package and the
    engines it runs on: any change to the code gives a new measurement.

    Example: cleanroom enclave measure
    """
    from cleanroom.attestation import measure  # noqa: PLC0415

    console.print(measure(), highlight=False, soft_wrap=True)


@enclave_app.command("approve")
def enclave_approve(
    measurements: list[str] = typer.Option(
        [], "--measurement", "-m", help="PLATFORM:HEX, e.g. sev-snp:5f2c... (repeat)."
    ),
    this_install: bool = typer.Option(
        False, "--this-install", help="Add this machine's insecure-virtual measurement."
    ),
    allow_insecure_virtual: bool = typer.Option(
        False,
        "--allow-insecure-virtual",
        help="Explicitly accept the insecure virtual platform (no hardware protection).",
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose the list of enclave measurements the room trusts (it replaces the
    current list). Every voting member must approve it.

    Example: cleanroom enclave approve --this-install --allow-insecure-virtual
    --room offers --service ... --as keys/analyst
    """
    if not measurements and not this_install:
        raise typer.BadParameter("name at least one --measurement, or --this-install")
    handle = _room(service, keystore, room)
    pid = handle.propose_measurements(
        measurements, this_install=this_install, allow_insecure_virtual=allow_insecure_virtual
    )
    count = len(measurements) + this_install
    proposed(pid, f"{count} measurement(s)", quiet)


def _find_job(handle: Room, ref: str) -> dict[str, Any]:
    from cleanroom.client import names  # noqa: PLC0415

    jobs = handle.jobs()
    found = names.job_id(jobs, ref)
    return next(j for j in jobs if j["id"] == found)


def _waiting(owners: list[str]) -> str:
    agents = ", ".join(f"{o}'s key agent" if o != "key broker" else o for o in owners)
    return f"waiting for {agents}"


def _show(job: dict[str, Any]) -> None:
    status = job["status"]
    colour = {"succeeded": "green", "failed": "red"}.get(status, "yellow")
    console.print(f"job {short(job['id'])} ({job['analysis']}): [{colour}]{status}[/]")
    if job["reason"]:
        console.print(f"  reason: {job['reason']}", highlight=False)
    if job.get("queue_position") is not None:
        console.print(f"  queued: position {job['queue_position']} in this room's queue")
    if status == "requested" and job.get("waiting_for"):
        console.print(f"  {_waiting(job['waiting_for'])}", highlight=False)
    if job.get("stale"):
        console.print(
            f"  stale deposits (the key broker restarted): {', '.join(job['stale'])}; "
            "their owners run `cleanroom dataset redeposit`",
            highlight=False,
        )
    if job["platform"]:
        console.print(f"  enclave: {job['platform']}, measurement {job['measurement']}")
    if job["output"]:
        out = job["output"]
        # the ledger shows coarse buckets (upper bounds), not exact sizes and times
        console.print(
            f"  result: up to {out['rows']:,} rows, up to {out['bytes']:,} bytes encrypted, "
            f"up to {out['duration_ms']:,} ms in the enclave; "
            f"recipients: {', '.join(job['recipients'])}"
        )
    if job["assurance"] == "insecure-virtual":
        err_console.print(INSECURE_WARNING)


@job_app.command("run")
def job_run(
    analysis_ref: str = typer.Argument(
        ..., metavar="ANALYSIS", help="An accepted analysis's name."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job ends."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Print only the new job's id (once it ends, or at once with --no-wait).",
    ),
) -> None:
    """Run an accepted analysis in an attested enclave.

    The enclave gets the data keys only if its attestation matches a
    measurement the room approved and every input's owner still consents.

    Example: cleanroom job run offers --room offers --service ... --as keys/analyst
    """
    from cleanroom.cli.rooms import analysis  # noqa: PLC0415

    handle = _room(service, keystore, room)
    job = handle.run_job(analysis(handle, analysis_ref)["name"])
    if not wait:
        if quiet:
            emit_id(job)
        else:
            console.print(f"job {short(job)} requested")
        return
    with console.status(f"job {short(job)}: attesting, releasing keys, running...") as shown:
        view = handle.wait_job(
            job,
            timeout=timeout,
            progress=False,  # the status line above shows it
            on_update=lambda v: shown.update(
                f"job {short(job)}: queued, position {v['queue_position']}"
                if v.get("queue_position") is not None
                else f"job {short(job)}: {_waiting(v['waiting_for'])}"
                if v["status"] == "requested" and v.get("waiting_for")
                else f"job {short(job)}: {v['status']}..."
            ),
        )
    if quiet:
        emit_id(job)
    else:
        _show(view)
    if view["status"] != "succeeded":
        raise typer.Exit(1)


@job_app.command("status")
def job_status(
    job: str = JOB,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    as_json: bool = typer.Option(False, "--json", help="Print the job as JSON."),
) -> None:
    """Show one job: status, enclave, measurement, result size or failure reason.

    Example: cleanroom job status 5d1c --room offers --service ... --as keys/analyst
    """
    found = _find_job(_room(service, keystore, room), job)
    if as_json:
        emit_json(found)
    else:
        _show(found)


@job_app.command("list")
def job_list(
    room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE, as_json: bool = JSON
) -> None:
    """List the room's jobs, oldest first.

    Example: cleanroom job list --room offers --service http://127.0.0.1:8321 --as keys/bank
    """
    jobs = _room(service, keystore, room).jobs()
    if as_json:
        emit_json(jobs)
        return
    shown = table("id", "analysis", "by", "status", "assurance", "rows")
    for j in jobs:
        rows = f"{j['output']['rows']:,}" if j["output"] else ""
        shown.add_row(
            short(j["id"]), j["analysis"], j["requester"], j["status"], j["assurance"], rows
        )
    console.print(shown)


@job_app.command("result")
def job_result(
    job: str = typer.Argument(..., help="A job id (a unique prefix is enough)."),
    output: Path = typer.Option(..., "--output", "-o", help="A .csv or .parquet file to write."),
    model_out: Path | None = typer.Option(
        None,
        "--model-out",
        help="A training job's model: also write its ONNX bytes to this file "
        "(publish it with `cleanroom model publish`).",
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Fetch and decrypt a job's result (result recipients only).

    The ciphertext digest and the key come from the verified ledger, recorded
    by the attested enclave; anyone else, the operator included, has
    ciphertext only.

    Example: cleanroom job result 5d1c -o offers.csv --room 3f2a... --service ... --as keys/bank
    """
    from cleanroom.errors import InvalidInputError, OperationalError  # noqa: PLC0415

    if model_out is not None and output.suffix.lower() != ".parquet":
        # a model is bytes, which CSV cannot hold: the result must be Parquet
        raise InvalidInputError("--model-out needs the result as .parquet (-o result.parquet)")
    handle = _room(service, keystore, room)
    found = _find_job(handle, job)
    if found["status"] != "succeeded":
        raise OperationalError(f"job {found['id'][:16]} is {found['status']}: no result")
    with RichProgress() as progress:
        view = handle.download_result(found["id"], output, progress=progress)
    console.print(f"Decrypted {view['rows']:,} rows to {output}")
    if model_out is not None:
        _write_model(output, model_out)
    if view["assurance"] == "insecure-virtual":
        err_console.print(INSECURE_WARNING)


def _write_model(result: Path, model_out: Path) -> None:
    """The ONNX bytes of a training job's result, written whole or not at all."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    from cleanroom.errors import InvalidInputError  # noqa: PLC0415
    from cleanroom.fs import atomic_path  # noqa: PLC0415

    table = pq.read_table(result)
    if "onnx" not in table.column_names or table.num_rows != 1:
        raise InvalidInputError("this job's result holds no model (not a training job's)")
    model = table.column("onnx")[0].as_py()
    with atomic_path(model_out) as tmp:
        tmp.write_bytes(model)
    console.print(f"Wrote the model ({len(model):,} bytes of ONNX) to {model_out}")


@budget_app.command("show")
def budget_show(
    analysis_ref: str | None = typer.Option(
        None, "--analysis", "-a", help="Also preview whether this DP analysis can run now."
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    as_json: bool = JSON,
) -> None:
    """Show each dataset's privacy budget: epsilon, spent by releases, remaining.

    Example: cleanroom budget show --analysis spend-dp --room offers --service ... --as keys/bank
    """
    from cleanroom.cli.rooms import analysis  # noqa: PLC0415
    from cleanroom.errors import NotFoundError  # noqa: PLC0415

    handle = _room(service, keystore, room)
    state = handle.state()
    budgets = {d["name"]: d["budget"] for d in state["datasets"]}
    verdict: dict[str, Any] | None = None
    if analysis_ref is not None:
        found = analysis(handle, analysis_ref, state)
        if found["dp_epsilon"] is None:
            raise NotFoundError(f"analysis {found['name']!r} is not differentially private")
        short_of = [
            n
            for n in found["inputs"]
            if budgets.get(n) is None or budgets[n]["remaining"] < found["dp_epsilon"]
        ]
        verdict = {
            "analysis": found["name"],
            "epsilon": found["dp_epsilon"],
            "can_run": not short_of,
            "short": short_of,
        }
    if as_json:
        emit_json({"budgets": budgets, "analysis": verdict})
    else:
        shown = table("dataset", "epsilon", "spent", "remaining")
        for name, b in budgets.items():
            if b is None:
                shown.add_row(name, "no budget", "", "")
            else:
                shown.add_row(name, f"{b['epsilon']:g}", f"{b['spent']:g}", f"{b['remaining']:g}")
        console.print(shown)
        if verdict is not None and verdict["short"]:
            console.print(
                f"{verdict['analysis']} needs epsilon {verdict['epsilon']:g}: "
                f"[red]not enough left[/] in {', '.join(verdict['short'])}"
            )
        elif verdict is not None:
            console.print(
                f"{verdict['analysis']} needs epsilon {verdict['epsilon']:g}: [green]it can run[/]"
            )
    if verdict is not None and verdict["short"]:
        raise typer.Exit(1)
