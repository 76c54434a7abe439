"""Commands that talk to a clean room service through the SDK.

Every command acts as one party: ``--as KEYSTORE`` (or CLEANROOM_KEYSTORE) and
``--service URL`` (or CLEANROOM_SERVICE). The party's view of each room's
ledger (the last tree heads it verified) and the service key pinned for each
URL are kept in KEYSTORE/state, so a service that rolls back, forks or
presents another key is caught on the next command.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cleanroom.agent import KeyAgent
from cleanroom.cli.common import load_party, service_key
from cleanroom.cli.ui import RichProgress, console
from cleanroom.client import STATE_DIR, Client, Room
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.errors import GovernanceError
from cleanroom.fs import write_file
from cleanroom.identities import format_fingerprint
from cleanroom.identities.keystore import IDENTITY_FILE
from cleanroom.wire import pretty_json, read_json_file

SERVICE = typer.Option(
    ...,
    "--service",
    envvar="CLEANROOM_SERVICE",
    help="The service URL, e.g. http://127.0.0.1:8321.",
)
KEYSTORE = typer.Option(
    ..., "--as", envvar="CLEANROOM_KEYSTORE", help="Your keystore directory: who signs."
)
ROOM = typer.Option(..., "--room", "-r", envvar="CLEANROOM_ROOM", help="The room id.")
PROPOSAL = typer.Argument(..., help="A proposal id (a unique prefix is enough).")

room_app = typer.Typer(help="Create, join and show rooms on a service.", no_args_is_help=True)
proposal_app = typer.Typer(help="List, show and vote on proposals.", no_args_is_help=True)
consent_app = typer.Typer(help="Stop your data being used, at once.", no_args_is_help=True)


def _client(service: str, keystore: Path) -> Client:
    party = load_party(keystore)
    return Client(service, party, state_dir=keystore / STATE_DIR, service_key=service_key())


def _room(service: str, keystore: Path, room: str) -> Room:
    handle = _client(service, keystore).room(room)
    handle.tree_head()  # every command first checks the room's history extends what it saw
    return handle


def _members(specs: list[str]) -> list[tuple[dict[str, Any], list[str]]]:
    members = []
    for spec in specs:
        path, _, roles = spec.rpartition(":")
        if not path or not roles:
            raise typer.BadParameter(f"--member {spec!r}: use IDENTITY_FILE:role[,role]")
        members.append((json.loads(Path(path).read_text()), roles.split(",")))
    return members


@room_app.command("create")
def room_create(
    name: str = typer.Argument(..., help="A name for the room, e.g. personalised-offers."),
    roles: str = typer.Option(..., "--roles", help="Your own roles, comma-separated."),
    member: list[str] = typer.Option(
        [], "--member", "-m", help="Another member: IDENTITY_FILE:role[,role]. Repeat."
    ),
    rule: str = typer.Option(
        "default", "--rule", help="Constitution: default, unanimity, majority or threshold."
    ),
    k: int | None = typer.Option(None, "--k", help="Approvals needed under --rule threshold."),
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Create a room; every listed member must then join it.

    Roles: data_provider, analyst, result_recipient, observer.

    Example: cleanroom room create offers --roles data_provider,result_recipient
    --member merchant.identity.json:data_provider,analyst --service http://127.0.0.1:8321
    --as keys/bank
    """
    client = _client(service, keystore)
    own = json.loads((keystore / IDENTITY_FILE).read_text())
    constitution: dict[str, Any] = {"rule": rule} | ({"k": k} if k is not None else {})
    room = client.create_room(name, [(own, roles.split(",")), *_members(member)], constitution)
    console.print(f"Created room [bold]{name}[/]: {room.id}")
    console.print("Each member now runs: cleanroom room join --room " + room.id)


@room_app.command("join")
def room_join(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """Accept your invitation to a room (sign member.accept).

    Example: cleanroom room join --room 3f2a... --service http://127.0.0.1:8321 --as keys/merchant
    """
    handle = _room(service, keystore, room)
    handle.accept()
    console.print(f"Joined room {room}: {handle.state()['status']}")


@room_app.command("decline")
def room_decline(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """Decline your invitation to a room (sign member.decline).

    The room disappears from your `room list`; a room still being formed can then
    never become active, and the room cannot invite you again.

    Example: cleanroom room decline --room 3f2a... --service http://127.0.0.1:8321
    --as keys/merchant
    """
    _room(service, keystore, room).decline()
    console.print(f"Declined room {room}.")


@room_app.command("list")
def room_list(service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """List the rooms you belong to.

    Example: cleanroom room list --service http://127.0.0.1:8321 --as keys/bank
    """
    table = Table("room", "name", "status", "contract", "you", title_justify="left")
    for info in _client(service, keystore).rooms():
        table.add_row(info.room, info.name, info.status, str(info.contract_version), info.you)
    console.print(table)


@room_app.command("show")
def room_show(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """Show a room: members, datasets, analyses, contract version.

    Example: cleanroom room show --room 3f2a... --service http://127.0.0.1:8321 --as keys/bank
    """
    handle = _room(service, keystore, room)
    state = handle.state()
    head = handle.tree_head()
    console.print(
        f"[bold]{state['name']}[/] ({room}): {state['status']}, contract version "
        f"{state['contract_version']}, {state['entries']} ledger entries "
        f"(tree head verified, size {head.size})"
    )
    members = Table(
        "member", "fingerprint", "roles", "status", title="members", title_justify="left"
    )
    for m in state["members"]:
        members.add_row(
            m["name"], format_fingerprint(m["fingerprint"])[:19], ", ".join(m["roles"]), m["status"]
        )
    console.print(members)
    if state["datasets"]:
        datasets = Table(
            "dataset", "versions", "rows", "consent", title="datasets", title_justify="left"
        )
        for d in state["datasets"]:
            datasets.add_row(
                d["name"],
                str(len(d["versions"])),
                str(d["versions"][-1]["rows"]),
                "yes" if d["consent"] else "[red]revoked[/]",
            )
        console.print(datasets)
    if state["analyses"]:
        analyses = Table("analysis", "inputs", "status", title="analyses", title_justify="left")
        for a in state["analyses"]:
            analyses.add_row(a["name"], ", ".join(a["inputs"]), a["status"])
        console.print(analyses)


# -- proposals -------------------------------------------------------------------


@proposal_app.command("list")
def proposal_list(
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    all_: bool = typer.Option(False, "--all", help="Also closed proposals."),
) -> None:
    """List open proposals (or all with --all).

    Example: cleanroom proposal list --room 3f2a... --service http://127.0.0.1:8321 --as keys/bank
    """
    table = Table("id", "action", "by", "status", "approvals", title_justify="left")
    for p in _room(service, keystore, room).proposals():
        if all_ or p["status"] == "open":
            table.add_row(
                p["id"][:16],
                p["type"],
                p["proposer"],
                p["status"],
                f"{len(p['approvals'])}/{len(p['approvers'])}",
            )
    console.print(table)


def _find(handle: Room, prefix: str) -> dict[str, Any]:
    matches = [p for p in handle.proposals() if p["id"].startswith(prefix)]
    if len(matches) != 1:
        raise GovernanceError(
            f"{'no' if not matches else 'more than one'} proposal starts with {prefix!r}"
        )
    return matches[0]


@proposal_app.command("show")
def proposal_show(
    proposal: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Show one proposal: its action in full, approvers and ballots.

    Example: cleanroom proposal show 9c1e --room 3f2a... --service ... --as keys/bank
    """
    found = _find(_room(service, keystore, room), proposal)
    console.print_json(json.dumps(found))


def _vote(proposal: str, room: str, service: str, keystore: Path, verb: str) -> None:
    handle = _room(service, keystore, room)
    found = _find(handle, proposal)
    getattr(handle, verb)(found["id"])
    after = _find(handle, found["id"])
    console.print(f"{verb}: proposal {found['id'][:16]} ({found['type']}) is {after['status']}")


@proposal_app.command("approve")
def proposal_approve(
    proposal: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Sign an approving ballot.

    Example: cleanroom proposal approve 9c1e --room 3f2a... --service ... --as keys/bank
    """
    _vote(proposal, room, service, keystore, "approve")


@proposal_app.command("reject")
def proposal_reject(
    proposal: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Sign a rejecting ballot (a veto where the constitution gives you one).

    Example: cleanroom proposal reject 9c1e --room 3f2a... --service ... --as keys/bank
    """
    _vote(proposal, room, service, keystore, "reject")


@proposal_app.command("withdraw")
def proposal_withdraw(
    proposal: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Withdraw a proposal you made, while it is open.

    Example: cleanroom proposal withdraw 9c1e --room 3f2a... --service ... --as keys/bank
    """
    _vote(proposal, room, service, keystore, "withdraw")


@consent_app.command("revoke")
def consent_revoke(
    dataset: str = typer.Argument(..., help="Your dataset's name in the room."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Revoke consent for your dataset: effective at once, no vote.

    Example: cleanroom consent revoke customers --room 3f2a... --service ... --as keys/merchant
    """
    _room(service, keystore, room).revoke_consent(dataset)
    console.print(f"Consent for {dataset} revoked in room {room}.")


def dataset_publish(
    source: Path = typer.Argument(..., help="A .csv or .parquet file."),
    schema: Path = typer.Option(..., "--schema", "-s", help="The declared schema (JSON)."),
    name: str | None = typer.Option(
        None, "--name", "-n", help="Dataset name (default: file stem)."
    ),
    release_to: str = typer.Option(
        "sev-snp,tdx",
        "--release-to",
        help="Platforms whose attested enclaves may get the data key (comma separated).",
    ),
    allow_insecure_virtual: bool = typer.Option(
        False,
        "--allow-insecure-virtual",
        help="Also release the key to the insecure virtual platform (development only: "
        "no hardware protects the data there).",
    ),
    rule: Path | None = typer.Option(
        None,
        "--rule",
        help="The dataset's analysis rule (JSON: aggregation, list or custom; see "
        "docs/privacy.md). Without one, only analyses you approve by vote may read it.",
    ),
    release: str = typer.Option(
        "owner",
        "--release",
        help="Who releases the data key to attested enclaves: 'owner' (the key stays on "
        "this machine; run `cleanroom keys serve` so jobs can get it) or 'broker' (the key "
        "is deposited sealed to the service's attested key broker, after its evidence is "
        "checked against the room's contract).",
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Seal a dataset on this machine, propose its registration, upload the ciphertext,
    and say how its key is released to attested enclaves (by your own key agent, or
    by the key broker).

    Example: cleanroom dataset publish cards.csv --schema cards.schema.json --room 3f2a...
    --service http://127.0.0.1:8321 --as keys/bank
    """
    if release not in ("owner", "broker"):
        raise typer.BadParameter("choose 'owner' or 'broker'", param_hint="--release")
    handle = _room(service, keystore, room)
    platforms = [p.strip() for p in release_to.split(",") if p.strip()]
    if allow_insecure_virtual and "insecure-virtual" not in platforms:
        platforms.append("insecure-virtual")
    with RichProgress() as progress:
        proposal = handle.publish_dataset(
            source,
            schema=schema,
            name=name or source.stem,
            progress=progress,
            release_to=platforms,
            rule=read_json_file(rule, what="rule file") if rule is not None else None,
            release="owner" if release == "owner" else "broker",
        )
    console.print(f"Published {name or source.stem}: proposal {proposal[:16]} awaits approval")
    if release == "owner":
        console.print(
            f"Its key stays here: run `cleanroom keys serve --room {room} --as {keystore}` "
            "so approved jobs can get it."
        )


def keys_serve(
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    poll: float = typer.Option(0.5, "--poll", min=0.05, help="Seconds between checks."),
    once: bool = typer.Option(False, "--once", help="Answer the open requests, then exit."),
) -> None:
    """Run your key agent: release your datasets' keys to attested enclaves yourself.

    It needs no inbound connection: it follows the room through the service,
    verifies the whole ledger, and for each key request of a job reading your data
    checks the enclave's evidence, the room's contract, your consent and the privacy
    rules, then signs the release (key sealed to that enclave only) or a denial.
    Stop it with Ctrl-C; while it is stopped, jobs wait, then fail.

    Example: cleanroom keys serve --room 3f2a... --service http://127.0.0.1:8321 --as keys/merchant
    """
    handle = _room(service, keystore, room)
    agent = KeyAgent(handle, KeyVault(handle.client.party, keystore / STATE_DIR / VAULT_DIR))
    if once:
        for answer in agent.step():
            console.print(f"{answer.action} job {answer.job[:12]}: {answer.detail}")
        return
    console.print(f"Key agent of {handle.client.party.name} for room {room[:12]}; Ctrl-C stops it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        agent.serve(poll_s=poll)


def dataset_list(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """List a room's datasets.

    Example: cleanroom dataset list --room 3f2a... --service http://127.0.0.1:8321 --as keys/bank
    """
    table = Table("dataset", "version", "rows", "sha256", "consent", title_justify="left")
    for d in _room(service, keystore, room).state()["datasets"]:
        latest = d["versions"][-1]
        table.add_row(
            d["name"],
            str(latest["version"]),
            str(latest["rows"]),
            latest["sha256"][:16],
            "yes" if d["consent"] else "revoked",
        )
    console.print(table)


def dataset_download(
    dataset: str = typer.Argument(..., help="The dataset's name in the room."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the ciphertext."),
    version: int | None = typer.Option(None, "--version", help="A version (default: latest)."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Download a dataset's ciphertext (encrypted Parquet); its digest is checked.

    Only the owner (or, later, an attested enclave) holds the key to read it.

    Example: cleanroom dataset download cards -o cards.parquet --room 3f2a... --service ...
    --as keys/bank
    """
    handle = _room(service, keystore, room)
    found = next((d for d in handle.state()["datasets"] if d["name"] == dataset), None)
    if found is None:
        raise GovernanceError(f"no dataset {dataset!r} in room {room}")
    versions = {v["version"]: v for v in found["versions"]}
    chosen = versions.get(version if version is not None else max(versions))
    if chosen is None:
        raise GovernanceError(f"{dataset!r} has no version {version}")
    with RichProgress() as progress:
        handle.download(chosen["sha256"], output, progress=progress)
    console.print(
        f"Downloaded {dataset} version {chosen['version']} "
        f"({chosen['rows']:,} rows, encrypted) to {output}"
    )


def audit_export_from_service(room: str, service: str, keystore: Path, output: Path) -> int:
    """Export as a member: verified, and checked against the heads seen before.

    A removed member gets the history up to its removal; when a signed tree head
    covers exactly that, the file is a plain export (`cleanroom audit verify`
    checks it); otherwise it keeps the consistency proof to a later head, which
    the SDK's ``verify_prefix_export`` checks."""
    audit = _room(service, keystore, room).audit
    document = audit.export()
    verified = audit.verify(document)
    if "prefix" in document and verified.head.size == len(verified.entries):
        document = {k: v for k, v in document.items() if k != "prefix"}
    write_file(output, pretty_json(document))
    return len(verified.entries)


def dataset_redeposit(
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Deposit again every key you deposited with a key broker that has since
    restarted (its new key cannot open the old deposits; jobs on them wait).

    The keys come from your key vault; the broker's evidence is checked first.

    Example: cleanroom dataset redeposit --room 3f2a... --service http://127.0.0.1:8321
    --as keys/bank
    """
    handle = _room(service, keystore, room)
    done = handle.redeposit()
    console.print(
        f"re-deposited {', '.join(done)} with the key broker" if done else "nothing is stale"
    )
