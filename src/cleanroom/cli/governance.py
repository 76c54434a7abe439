"""Governance from the command line: one command per proposal action.

Every action of :data:`cleanroom.governance.statements.Action` has a command
that calls the SDK's typed method for it (:class:`cleanroom.client.Room`),
which builds and checks the action and signs it as a proposal (``--quiet``
prints just its id); the room's members then vote with ``cleanroom proposal
approve``. The state machine, not this module,
decides whether the action is allowed.

    add_member          cleanroom member add IDENTITY_FILE --roles ROLES
    remove_member       cleanroom member remove MEMBER
    register_dataset    cleanroom dataset publish SOURCE --schema FILE   (cli/rooms.py)
    set_analysis_rule   cleanroom dataset set-rule DATASET --rule FILE
    add_analysis        cleanroom analysis propose NAME --sql FILE ...   (cli/jobs.py)
    retire_analysis     cleanroom analysis retire NAME
    set_measurements    cleanroom enclave approve --measurement ...      (cli/jobs.py)
    set_privacy_budget  cleanroom budget set DATASET --epsilon E
    set_limits          cleanroom room set-limits --time-s ... --memory-mb ... --max-rows ...
    change_constitution cleanroom room set-constitution --rule RULE
    restore_consent     cleanroom consent restore DATASET
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cleanroom.cli.rooms import (
    JSON,
    KEYSTORE,
    QUIET,
    ROOM,
    SERVICE,
    _room,
    analysis,
    dataset,
    member,
    proposed,
    room_app,
)
from cleanroom.cli.ui import console, emit_json, short, table

member_app = typer.Typer(help="List, add and remove a room's members.", no_args_is_help=True)

ROLES = ("data_provider", "analyst", "result_recipient", "observer")


def _roles(value: str) -> list[str]:
    roles = [r.strip() for r in value.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise typer.BadParameter(
            f"{value!r}: choose from {', '.join(ROLES)} (comma-separated)", param_hint="--roles"
        )
    return roles


def _json_file(path: Path, what: str) -> Any:
    from cleanroom.wire import read_json_file  # noqa: PLC0415

    return read_json_file(path, what=what)


# -- members -------------------------------------------------------------------


@member_app.command("list")
def member_list(
    room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE, as_json: bool = JSON
) -> None:
    """List the room's members: name, fingerprint, roles, status.

    Example: cleanroom member list --room offers --service ... --as keys/bank
    """
    members = _room(service, keystore, room).members
    if as_json:
        emit_json(members)
        return
    shown = table("member", "fingerprint", "roles", "status")
    for m in members:
        shown.add_row(m["name"], short(m["fingerprint"]), ", ".join(m["roles"]), m["status"])
    console.print(shown)


@member_app.command("add")
def member_add(
    identity: Path = typer.Argument(
        ..., metavar="IDENTITY_FILE", help="The new member's public identity file."
    ),
    roles: str = typer.Option(..., "--roles", help=f"Comma-separated: {', '.join(ROLES)}."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose a new member (add_member); once accepted, it runs `cleanroom room join`.

    Check the identity's fingerprint with its owner out of band first
    (`cleanroom party show --identity FILE`).

    Example: cleanroom member add auditor.identity.json --roles observer --room offers
    --service ... --as keys/bank
    """
    from cleanroom.identities import PublicIdentity  # noqa: PLC0415

    chosen = _roles(roles)
    document = _json_file(identity, "identity file")
    named = PublicIdentity.from_document(document)  # a forged or malformed file stops here
    pid = _room(service, keystore, room).add_member(document, chosen)
    proposed(pid, f"adding {named.name}", quiet)


@member_app.command("remove")
def member_remove(
    who: str = typer.Argument(..., metavar="MEMBER", help="A member's name or fingerprint prefix."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose removing a member (remove_member).

    Example: cleanroom member remove merchant --room offers --service ... --as keys/bank
    """
    handle = _room(service, keystore, room)
    fingerprint = member(handle, who)
    proposed(handle.remove_member(fingerprint), f"removing {who} ({short(fingerprint)})", quiet)


# -- datasets, analyses, budgets, consent ----------------------------------------


def dataset_set_rule(
    dataset_ref: str = typer.Argument(..., metavar="DATASET", help="The dataset's name."),
    rule: Path = typer.Option(
        ...,
        "--rule",
        help="The analysis rule (JSON: aggregation, list or custom; docs/privacy.md).",
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose a new analysis rule for a dataset (set_analysis_rule).

    Example: cleanroom dataset set-rule customers --rule customers.rule.json --room offers
    --service ... --as keys/merchant
    """
    document = _json_file(rule, "rule file")
    handle = _room(service, keystore, room)
    name = dataset(handle, dataset_ref)["name"]
    proposed(handle.set_analysis_rule(name, document), f"a new rule for {name}", quiet)


def analysis_retire(
    name_ref: str = typer.Argument(..., metavar="ANALYSIS", help="The analysis's name."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose retiring an analysis (retire_analysis): no new job may run it.

    Example: cleanroom analysis retire offers --room offers --service ... --as keys/bank
    """
    handle = _room(service, keystore, room)
    name = analysis(handle, name_ref)["name"]
    proposed(handle.retire_analysis(name), f"retiring {name}", quiet)


def budget_set(
    dataset_ref: str = typer.Argument(..., metavar="DATASET", help="The dataset's name."),
    epsilon: float = typer.Option(..., "--epsilon", min=0, max=100, help="Total epsilon (> 0)."),
    delta: float = typer.Option(0.0, "--delta", min=0, max=1, help="Total delta (< 1)."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose a dataset's privacy budget (set_privacy_budget): only differentially
    private analyses may then read it, each release charged to the budget.

    Example: cleanroom budget set transactions --epsilon 3 --room offers --service ...
    --as keys/bank
    """
    handle = _room(service, keystore, room)
    name = dataset(handle, dataset_ref)["name"]
    pid = handle.set_privacy_budget(name, epsilon, delta)
    proposed(pid, f"a budget of epsilon {epsilon:g} for {name}", quiet)


def consent_restore(
    dataset_ref: str = typer.Argument(..., metavar="DATASET", help="Your dataset's name."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose restoring consent for a dataset whose consent was revoked
    (restore_consent); unlike a revocation it takes a vote.

    Example: cleanroom consent restore customers --room offers --service ... --as keys/merchant
    """
    handle = _room(service, keystore, room)
    name = dataset(handle, dataset_ref)["name"]
    proposed(handle.restore_consent(name), f"restoring {name}", quiet)


# -- the room's contract ----------------------------------------------------------


@room_app.command("set-limits")
def room_set_limits(
    time_s: int = typer.Option(..., "--time-s", min=1, help="Seconds a job may run."),
    memory_mb: int = typer.Option(..., "--memory-mb", min=64, help="Memory per job, in MB."),
    max_rows: int = typer.Option(..., "--max-rows", min=1, help="Most rows a result may hold."),
    max_scoring_jobs: int | None = typer.Option(
        None, "--max-scoring-jobs", min=0, help="Most scoring jobs over the room's life."
    ),
    max_scored_rows: int | None = typer.Option(
        None, "--max-scored-rows", min=0, help="Most records scored over the room's life."
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose the room's resource limits per job (set_limits); each service may be stricter.

    Example: cleanroom room set-limits --time-s 600 --memory-mb 2048 --max-rows 100000
    --room offers --service ... --as keys/bank
    """
    handle = _room(service, keystore, room)
    pid = handle.set_limits(
        time_s=time_s,
        memory_mb=memory_mb,
        max_result_rows=max_rows,
        max_scoring_jobs=max_scoring_jobs,
        max_scored_rows=max_scored_rows,
    )
    proposed(pid, "new limits", quiet)


@room_app.command("set-constitution")
def room_set_constitution(
    rule: str = typer.Option(
        ..., "--rule", help="default, unanimity, majority or threshold (with --k)."
    ),
    k: int | None = typer.Option(None, "--k", min=1, help="Approvals needed under threshold."),
    ttl_hours: int | None = typer.Option(
        None, "--proposal-ttl-hours", min=1, help="Hours a proposal stays open (default 168)."
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Propose a new constitution: how many approvals a proposal needs (change_constitution).

    Example: cleanroom room set-constitution --rule threshold --k 2 --room offers
    --service ... --as keys/bank
    """
    handle = _room(service, keystore, room)
    pid = handle.change_constitution(
        rule,  # type: ignore[arg-type]  # the SDK's model refuses an unknown rule, naming it
        k=k,
        proposal_ttl_hours=ttl_hours if ttl_hours is not None else 168,
    )
    proposed(pid, f"the constitution {rule!r}", quiet)


def register(
    *,
    dataset_app: typer.Typer,
    analysis_app: typer.Typer,
    consent_app: typer.Typer,
    budget_app: typer.Typer,
) -> None:
    """Add this module's commands to the groups other modules own."""
    dataset_app.command("set-rule")(dataset_set_rule)
    analysis_app.command("retire")(analysis_retire)
    consent_app.command("restore")(consent_restore)
    budget_app.command("set")(budget_set)
