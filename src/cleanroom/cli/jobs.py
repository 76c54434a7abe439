"""Commands for analyses, enclave measurements and jobs.

    cleanroom analysis propose offers --sql offers.sql --input transactions \\
        --input customers --recipient bank
    cleanroom enclave measure
    cleanroom enclave approve --this-install --allow-insecure-virtual
    cleanroom job run offers --wait
    cleanroom job result 5d1c -o offers.csv
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cleanroom.attestation import measure
from cleanroom.cli.rooms import KEYSTORE, ROOM, SERVICE, _room
from cleanroom.cli.ui import RichProgress, console, err_console
from cleanroom.client import Room
from cleanroom.errors import GovernanceError, NotFoundError, OperationalError
from cleanroom.wire import read_json_file

analysis_app = typer.Typer(help="Propose analyses (SQL run in an enclave).", no_args_is_help=True)
enclave_app = typer.Typer(
    help="Measure the enclave runtime and propose which measurements the room trusts.",
    no_args_is_help=True,
)
job_app = typer.Typer(help="Run approved analyses in an attested enclave.", no_args_is_help=True)
budget_app = typer.Typer(help="Privacy budgets of the room's datasets.", no_args_is_help=True)

INSECURE_WARNING = (
    "[bold yellow]warning:[/] this job ran on the insecure virtual platform: "
    "no hardware protected the data while it ran (development only)"
)


def _member(handle: Room, who: str) -> str:
    """A member's fingerprint from its name or a fingerprint prefix."""
    members = handle.members
    found = [m for m in members if m["name"] == who] or [
        m for m in members if m["fingerprint"].startswith(who.replace(":", ""))
    ]
    if len(found) != 1:
        raise GovernanceError(f"{'no' if not found else 'more than one'} member matches {who!r}")
    fingerprint: str = found[0]["fingerprint"]
    return fingerprint


@analysis_app.command("propose")
def analysis_propose(
    name: str = typer.Argument(..., help="The analysis name, used by `job run`."),
    sql: Path = typer.Option(..., "--sql", help="A file holding exactly one SELECT statement."),
    inputs: list[str] = typer.Option(
        ..., "--input", "-i", help="A dataset the query reads, by name (repeat)."
    ),
    recipients: list[str] = typer.Option(
        ..., "--recipient", help="Who receives the result: a member name or fingerprint (repeat)."
    ),
    dp: Path | None = typer.Option(
        None,
        "--dp",
        help="Make it a differentially private release: a JSON file with epsilon, unit, "
        "max_contributions, group_by and aggregates (see docs/privacy.md).",
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Propose an SQL analysis. Tables are the input datasets' names. It runs only
    after the owners of every input and every recipient approve it.

    Example: cleanroom analysis propose offers --sql offers.sql -i transactions
    -i customers --recipient bank --room 3f2a... --service ... --as keys/analyst
    """
    handle = _room(service, keystore, room)
    action = {
        "type": "add_analysis",
        "name": name,
        "language": "sql",
        "text": sql.read_text(encoding="utf-8"),
        "inputs": inputs,
        "recipients": [_member(handle, r) for r in recipients],
    }
    if dp is not None:
        action["dp"] = read_json_file(dp, what="DP specification")
    proposal = handle.propose(action)
    console.print(f"Proposed analysis {name}: proposal {proposal[:16]} awaits approval")


@enclave_app.command("measure")
def enclave_measure() -> None:
    """Print the measurement of the enclave runtime installed here (insecure-virtual).

    It is a hash of every file of the installed cleanroom package and the
    engines it runs on: any change to the code gives a new measurement.

    Example: cleanroom enclave measure
    """
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
) -> None:
    """Propose the list of enclave measurements the room trusts (it replaces the
    current list). Every voting member must approve it.

    Example: cleanroom enclave approve --this-install --allow-insecure-virtual
    --room 3f2a... --service ... --as keys/analyst
    """
    chosen = []
    for spec in measurements:
        platform, _, value = spec.partition(":")
        if not value:
            raise typer.BadParameter(f"--measurement {spec!r}: use PLATFORM:HEX")
        chosen.append({"platform": platform, "value": value})
    if this_install:
        chosen.append({"platform": "insecure-virtual", "value": measure()})
    if not chosen:
        raise typer.BadParameter("name at least one --measurement, or --this-install")
    action = {
        "type": "set_measurements",
        "measurements": chosen,
        "allow_insecure_virtual": allow_insecure_virtual,
    }
    proposal = _room(service, keystore, room).propose(action)
    console.print(f"Proposed {len(chosen)} measurement(s): proposal {proposal[:16]}")


def _find_job(handle: Room, prefix: str) -> dict[str, Any]:
    matches = [j for j in handle.jobs() if j["id"].startswith(prefix)]
    if len(matches) != 1:
        raise NotFoundError(
            f"{'no' if not matches else 'more than one'} job starts with {prefix!r}"
        )
    return matches[0]


def _waiting(owners: list[str]) -> str:
    agents = ", ".join(f"{o}'s key agent" if o != "key broker" else o for o in owners)
    return f"waiting for {agents}"


def _show(job: dict[str, Any]) -> None:
    status = job["status"]
    colour = {"succeeded": "green", "failed": "red"}.get(status, "yellow")
    console.print(f"job {job['id'][:16]} ({job['analysis']}): [{colour}]{status}[/]")
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
    analysis: str = typer.Argument(..., help="An accepted analysis's name."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job ends."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Run an accepted analysis in an attested enclave.

    The enclave gets the data keys only if its attestation matches a
    measurement the room approved and every input's owner still consents.

    Example: cleanroom job run offers --room 3f2a... --service ... --as keys/analyst
    """
    handle = _room(service, keystore, room)
    job = handle.run_job(analysis)
    if not wait:
        console.print(f"job {job[:16]} requested")
        return
    with console.status(f"job {job[:16]}: attesting, releasing keys, running...") as shown:
        view = handle.wait_job(
            job,
            timeout=timeout,
            on_update=lambda v: shown.update(
                f"job {job[:16]}: queued, position {v['queue_position']}"
                if v.get("queue_position") is not None
                else f"job {job[:16]}: {_waiting(v['waiting_for'])}"
                if v["status"] == "requested" and v.get("waiting_for")
                else f"job {job[:16]}: {v['status']}..."
            ),
        )
    _show(view)
    if view["status"] != "succeeded":
        raise typer.Exit(1)


@job_app.command("status")
def job_status(
    job: str = typer.Argument(..., help="A job id (a unique prefix is enough)."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    as_json: bool = typer.Option(False, "--json", help="Print the job as JSON."),
) -> None:
    """Show one job: status, enclave, measurement, result size or failure reason.

    Example: cleanroom job status 5d1c --room 3f2a... --service ... --as keys/analyst
    """
    found = _find_job(_room(service, keystore, room), job)
    if as_json:
        console.print_json(json.dumps(found))
    else:
        _show(found)


@job_app.command("list")
def job_list(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """List the room's jobs, oldest first.

    Example: cleanroom job list --room 3f2a... --service http://127.0.0.1:8321 --as keys/bank
    """
    table = Table("id", "analysis", "by", "status", "assurance", "rows", title_justify="left")
    for j in _room(service, keystore, room).jobs():
        rows = f"{j['output']['rows']:,}" if j["output"] else ""
        table.add_row(
            j["id"][:16], j["analysis"], j["requester"], j["status"], j["assurance"], rows
        )
    console.print(table)


@job_app.command("result")
def job_result(
    job: str = typer.Argument(..., help="A job id (a unique prefix is enough)."),
    output: Path = typer.Option(..., "--output", "-o", help="A .csv or .parquet file to write."),
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
    handle = _room(service, keystore, room)
    found = _find_job(handle, job)
    if found["status"] != "succeeded":
        raise OperationalError(f"job {found['id'][:16]} is {found['status']}: no result")
    with RichProgress() as progress:
        view = handle.job_result(found["id"], output, progress=progress)
    console.print(f"Decrypted {view['rows']:,} rows to {output}")
    if view["assurance"] == "insecure-virtual":
        err_console.print(INSECURE_WARNING)


@budget_app.command("show")
def budget_show(
    analysis: str | None = typer.Option(
        None, "--analysis", "-a", help="Also preview whether this DP analysis can run now."
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Show each dataset's privacy budget: epsilon, spent by releases, remaining.

    Example: cleanroom budget show --analysis spend-dp --room 3f2a... --service ... --as keys/bank
    """
    state = _room(service, keystore, room).state()
    table = Table("dataset", "epsilon", "spent", "remaining", title_justify="left")
    for d in state["datasets"]:
        b = d["budget"]
        if b is None:
            table.add_row(d["name"], "no budget", "", "")
        else:
            table.add_row(d["name"], f"{b['epsilon']:g}", f"{b['spent']:g}", f"{b['remaining']:g}")
    console.print(table)
    if analysis is None:
        return
    found = next((a for a in state["analyses"] if a["name"] == analysis), None)
    if found is None or found["dp_epsilon"] is None:
        raise NotFoundError(f"no DP analysis {analysis!r} in this room")
    budgets = {d["name"]: d["budget"] for d in state["datasets"]}
    short = [n for n in found["inputs"] if budgets[n]["remaining"] < found["dp_epsilon"]]
    if short:
        console.print(
            f"{analysis} needs epsilon {found['dp_epsilon']:g}: [red]not enough left[/] in "
            f"{', '.join(short)}"
        )
        raise typer.Exit(1)
    console.print(f"{analysis} needs epsilon {found['dp_epsilon']:g}: [green]it can run[/]")
