"""Commands that talk to a clean room service through the SDK.

Every command acts as one party: ``--as KEYSTORE`` (or CLEANROOM_KEYSTORE) and
``--service URL`` (or CLEANROOM_SERVICE). The party's view of each room's
ledger (the last tree heads it verified) and the service key pinned for each
URL are kept in KEYSTORE/state, so a service that rolls back, forks or
presents another key is caught on the next command.

Rooms, members, proposals, jobs, datasets and analyses are named by name,
full id or unique id prefix, resolved by :mod:`cleanroom.client.names` from
the service's list views (one rule for the CLI and the SDK). The SDK loads
when a command runs, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cleanroom.cli.common import load_party, service_key
from cleanroom.cli.ui import RichProgress, console, emit_id, emit_json, short, table

if TYPE_CHECKING:
    from cleanroom.client import Client, Room

SERVICE = typer.Option(
    ...,
    "--service",
    envvar="CLEANROOM_SERVICE",
    help="The service URL, e.g. http://127.0.0.1:8321.",
)
KEYSTORE = typer.Option(
    ..., "--as", envvar="CLEANROOM_KEYSTORE", help="Your keystore directory: who signs."
)
ROOM = typer.Option(
    ...,
    "--room",
    "-r",
    envvar="CLEANROOM_ROOM",
    help="The room: its name, id, or a unique id prefix.",
)
PROPOSAL = typer.Argument(
    ..., metavar="PROPOSAL", help="A proposal id (a unique prefix of 4+ characters is enough)."
)
JSON = typer.Option(False, "--json", help="Print JSON (stable keys, full ids) instead of a table.")
QUIET = typer.Option(False, "--quiet", "-q", help="Print only the new id.")

room_app = typer.Typer(help="Create, join and show rooms on a service.", no_args_is_help=True)
proposal_app = typer.Typer(help="List, show and vote on proposals.", no_args_is_help=True)
consent_app = typer.Typer(
    help="Stop your data being used, at once (and propose to restore it).", no_args_is_help=True
)

_ROOM_ID = re.compile(r"^[0-9a-f]{32}$")


def _client(service: str, keystore: Path) -> Client:
    from cleanroom.client import STATE_DIR, Client  # noqa: PLC0415 - loads the SDK

    party = load_party(keystore)
    return Client(service, party, state_dir=keystore / STATE_DIR, service_key=service_key())


def room_id(client: Client, ref: str) -> str:
    """A room's full id from its name, id or unique prefix (a full id needs no look-up)."""
    from cleanroom.client import names  # noqa: PLC0415 - the SDK package

    if _ROOM_ID.match(ref):
        return ref
    listed = [{"room": r.room, "name": r.name} for r in client.rooms()]
    return names.room_id(listed, ref)


def _room(service: str, keystore: Path, room: str) -> Room:
    client = _client(service, keystore)
    handle = client.room(room_id(client, room))
    handle.tree_head()  # every command first checks the room's history extends what it saw
    return handle


def member(handle: Room, ref: str) -> str:
    """A member's fingerprint from its name, fingerprint or a unique prefix, as the
    room's verified ledger has it (the SDK's resolver)."""
    return handle.resolve_member(ref)


def proposal(handle: Room, ref: str) -> dict[str, Any]:
    """The proposal view named by an id or a unique prefix (resolved on the verified
    ledger; the view itself is the service's, for display)."""
    from cleanroom.errors import NotFoundError  # noqa: PLC0415

    found = handle.resolve_proposal(ref)
    view = next((p for p in handle.proposals() if p["id"] == found), None)
    if view is None:
        raise NotFoundError(f"the service does not list proposal {found[:16]}")
    return view


def dataset(handle: Room, ref: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A registered dataset's view, by name (a pending registration is named)."""
    from cleanroom.client import names  # noqa: PLC0415

    state = state if state is not None else handle.state()
    found = names.dataset_name(state["datasets"], ref, handle.proposals())
    return next(d for d in state["datasets"] if d["name"] == found)


def analysis(handle: Room, ref: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """An analysis's view, by name (a pending proposal for it is named)."""
    from cleanroom.client import names  # noqa: PLC0415

    state = state if state is not None else handle.state()
    found = names.analysis_name(state["analyses"], ref, handle.proposals())
    return next(a for a in state["analyses"] if a["name"] == found)


def proposed(pid: str, what: str, quiet: bool) -> str:
    """Say that proposal ``pid`` was made (``--quiet``: its id alone)."""
    if quiet:
        emit_id(pid)
    else:
        console.print(f"Proposed {what}: proposal {short(pid)} awaits approval", highlight=False)
    return pid


def _members(specs: list[str]) -> list[tuple[dict[str, Any], list[str]]]:
    from cleanroom.identities import PublicIdentity  # noqa: PLC0415
    from cleanroom.wire import read_json_file  # noqa: PLC0415

    members = []
    for spec in specs:
        path, _, roles = spec.rpartition(":")
        if not path or not roles:
            raise typer.BadParameter(
                f"{spec!r}: use IDENTITY_FILE:role[,role]", param_hint="--member"
            )
        document = read_json_file(Path(path), what="--member identity file")
        PublicIdentity.from_document(document)  # refused here, not by the service
        members.append((document, roles.split(",")))
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
    quiet: bool = QUIET,
) -> None:
    """Create a room; every listed member must then join it.

    Roles: data_provider, analyst, result_recipient, observer.

    Example: cleanroom room create offers --roles data_provider,result_recipient
    --member merchant.identity.json:data_provider,analyst --service http://127.0.0.1:8321
    --as keys/bank
    """
    from cleanroom.identities.keystore import IDENTITY_FILE  # noqa: PLC0415
    from cleanroom.wire import read_json_file  # noqa: PLC0415

    others = _members(member)
    client = _client(service, keystore)
    own = read_json_file(keystore / IDENTITY_FILE, what="your identity file")
    constitution: dict[str, Any] = {"rule": rule} | ({"k": k} if k is not None else {})
    room = client.create_room(name, [(own, roles.split(",")), *others], constitution)
    if quiet:
        emit_id(room.id)
        return
    console.print(f"Created room [bold]{name}[/]: {room.id}")
    console.print(f"Each member now runs: cleanroom room join --room {name}")


@room_app.command("join")
def room_join(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """Accept your invitation to a room (sign member.accept).

    Example: cleanroom room join --room offers --service http://127.0.0.1:8321 --as keys/merchant
    """
    handle = _room(service, keystore, room)
    handle.accept()
    console.print(f"Joined room {room}: {handle.state()['status']}")


@room_app.command("decline")
def room_decline(room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE) -> None:
    """Decline your invitation to a room (sign member.decline).

    The room disappears from your `room list`; a room still being formed can then
    never become active, and the room cannot invite you again.

    Example: cleanroom room decline --room offers --service http://127.0.0.1:8321
    --as keys/merchant
    """
    _room(service, keystore, room).decline()
    console.print(f"Declined room {room}.")


@room_app.command("list")
def room_list(service: str = SERVICE, keystore: Path = KEYSTORE, as_json: bool = JSON) -> None:
    """List the rooms you belong to.

    Example: cleanroom room list --service http://127.0.0.1:8321 --as keys/bank
    """
    listed = _client(service, keystore).rooms()
    if as_json:
        emit_json(
            [
                {
                    "room": r.room,
                    "name": r.name,
                    "status": r.status,
                    "contract_version": r.contract_version,
                    "you": r.you,
                }
                for r in listed
            ]
        )
        return
    shown = table("room", "name", "status", "contract", "you")
    for info in listed:
        shown.add_row(
            short(info.room), info.name, info.status, str(info.contract_version), info.you
        )
    console.print(shown)


@room_app.command("show")
def room_show(
    room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE, as_json: bool = JSON
) -> None:
    """Show a room: members, datasets, analyses, contract version.

    Example: cleanroom room show --room offers --service http://127.0.0.1:8321 --as keys/bank
    """
    handle = _room(service, keystore, room)
    state = handle.state()
    head = handle.tree_head()
    if as_json:
        emit_json(state | {"tree_head": {"size": head.size, "root": head.root.hex()}})
        return
    console.print(
        f"[bold]{state['name']}[/] ({handle.id}): {state['status']}, contract version "
        f"{state['contract_version']}, {state['entries']} ledger entries "
        f"(tree head verified, size {head.size})"
    )
    members = table("member", "fingerprint", "roles", "status", title="members")
    for m in state["members"]:
        members.add_row(m["name"], short(m["fingerprint"]), ", ".join(m["roles"]), m["status"])
    console.print(members)
    if state["datasets"]:
        datasets = table("dataset", "versions", "rows", "consent", title="datasets")
        for d in state["datasets"]:
            datasets.add_row(
                d["name"],
                str(len(d["versions"])),
                str(d["versions"][-1]["rows"]),
                "yes" if d["consent"] else "[red]revoked[/]",
            )
        console.print(datasets)
    if state["analyses"]:
        analyses = table("analysis", "inputs", "status", title="analyses")
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
    as_json: bool = JSON,
) -> None:
    """List open proposals (or all with --all).

    Example: cleanroom proposal list --room offers --service http://127.0.0.1:8321 --as keys/bank
    """
    shown = [p for p in _room(service, keystore, room).proposals() if all_ or p["status"] == "open"]
    if as_json:
        emit_json(shown)
        return
    listing = table("id", "action", "by", "status", "approvals")
    for p in shown:
        listing.add_row(
            short(p["id"]),
            p["type"],
            p["proposer"],
            p["status"],
            f"{len(p['approvals'])}/{len(p['approvers'])}",
        )
    console.print(listing)


@proposal_app.command("show")
def proposal_show(
    proposal_ref: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    as_json: bool = JSON,
) -> None:
    """Show one proposal: its action in full, approvers and ballots.

    Example: cleanroom proposal show 9c1e --room offers --service ... --as keys/bank
    """
    found = proposal(_room(service, keystore, room), proposal_ref)
    if as_json:
        emit_json(found)
    else:
        import json  # noqa: PLC0415

        console.print_json(json.dumps(found))


def _vote(proposal_ref: str, room: str, service: str, keystore: Path, verb: str) -> None:
    handle = _room(service, keystore, room)
    found = proposal(handle, proposal_ref)
    getattr(handle, verb)(found["id"])
    after = proposal(handle, found["id"])
    console.print(f"{verb}: proposal {short(found['id'])} ({found['type']}) is {after['status']}")


@proposal_app.command("approve")
def proposal_approve(
    proposal_ref: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Sign an approving ballot.

    Example: cleanroom proposal approve 9c1e --room offers --service ... --as keys/bank
    """
    _vote(proposal_ref, room, service, keystore, "approve")


@proposal_app.command("reject")
def proposal_reject(
    proposal_ref: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Sign a rejecting ballot (a veto where the constitution gives you one).

    Example: cleanroom proposal reject 9c1e --room offers --service ... --as keys/bank
    """
    _vote(proposal_ref, room, service, keystore, "reject")


@proposal_app.command("withdraw")
def proposal_withdraw(
    proposal_ref: str = PROPOSAL,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Withdraw a proposal you made, while it is open.

    Example: cleanroom proposal withdraw 9c1e --room offers --service ... --as keys/bank
    """
    _vote(proposal_ref, room, service, keystore, "withdraw")


@consent_app.command("revoke")
def consent_revoke(
    dataset_ref: str = typer.Argument(
        ..., metavar="DATASET", help="Your dataset's name in the room."
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Revoke consent for your dataset: effective at once, no vote.

    Example: cleanroom consent revoke customers --room offers --service ... --as keys/merchant
    """
    handle = _room(service, keystore, room)
    name = dataset(handle, dataset_ref)["name"]
    handle.revoke_consent(name)
    console.print(f"Consent for {name} revoked in room {room}.")


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
    quiet: bool = QUIET,
) -> None:
    """Seal a dataset on this machine, propose its registration, upload the ciphertext,
    and say how its key is released to attested enclaves (by your own key agent, or
    by the key broker).

    Example: cleanroom dataset publish cards.csv --schema cards.schema.json --room offers
    --service http://127.0.0.1:8321 --as keys/bank
    """
    from cleanroom.wire import read_json_file  # noqa: PLC0415

    if release not in ("owner", "broker"):
        raise typer.BadParameter("choose 'owner' or 'broker'", param_hint="--release")
    rule_json = read_json_file(rule, what="rule file") if rule is not None else None
    handle = _room(service, keystore, room)
    platforms = [p.strip() for p in release_to.split(",") if p.strip()]
    if allow_insecure_virtual and "insecure-virtual" not in platforms:
        platforms.append("insecure-virtual")
    with RichProgress() as progress:
        pid = handle.publish_dataset(
            source,
            schema=schema,
            name=name or source.stem,
            progress=progress,
            release_to=platforms,
            rule=rule_json,
            release="owner" if release == "owner" else "broker",
        )
    if quiet:
        emit_id(pid)
        return
    console.print(f"Published {name or source.stem}: proposal {short(pid)} awaits approval")
    if release == "owner":
        console.print(
            f"Its key stays here: run `cleanroom keys serve --room {room} --as {keystore}` "
            "so approved jobs can get it."
        )


def model_publish(
    model: Path = typer.Argument(..., help="The model, an ONNX file (never a pickle)."),
    name: str = typer.Option(..., "--name", "-n", help="The model asset's name in the room."),
    version: str = typer.Option(..., "--version", help="The model's version, e.g. 1.0.0."),
    features: str = typer.Option(
        ...,
        "--features",
        help="The records' columns the model takes, in its input's order (comma separated).",
    ),
    release_to: str = typer.Option(
        "sev-snp,tdx",
        "--release-to",
        help="Platforms whose attested enclaves may get the model's key (comma separated).",
    ),
    allow_insecure_virtual: bool = typer.Option(
        False,
        "--allow-insecure-virtual",
        help="Also release the key to the insecure virtual platform (development only: "
        "no hardware protects the model there).",
    ),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    quiet: bool = QUIET,
) -> None:
    """Check an ONNX model as the enclave will, sign its manifest, seal it on this
    machine and publish it like a dataset: its key stays with your key agent
    (`cleanroom keys serve`), no SQL can read it, and it scores only in analyses
    you approve (`cleanroom analysis propose-scoring`). See docs/models.md.

    Example: cleanroom model publish triage.onnx --name triage --version 1.0.0
    --features age_band,bmi,hba1c --room trial --service ... --as keys/vendor
    """
    from datetime import UTC, datetime  # noqa: PLC0415

    from cleanroom.models.manifest import ModelManifest  # noqa: PLC0415
    from cleanroom.models.onnx import describe  # noqa: PLC0415 - the [server] extra

    try:
        model_bytes = model.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {model}: {exc.strerror}", param_hint="MODEL"
        ) from exc
    columns = tuple(f.strip() for f in features.split(",") if f.strip())
    handle = _room(service, keystore, room)
    party = handle.client.party
    try:
        manifest = ModelManifest(
            name=name,
            version=version,
            vendor_name=party.name,
            vendor_fingerprint=party.fingerprint,
            features=columns,
            model=describe(model_bytes),  # the enclave's checks, before anything is signed
            created_at=f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    platforms = [p.strip() for p in release_to.split(",") if p.strip()]
    if allow_insecure_virtual and "insecure-virtual" not in platforms:
        platforms.append("insecure-virtual")
    pid = handle.publish_model(model_bytes, manifest, name=name, release_to=platforms)
    if quiet:
        emit_id(pid)
        return
    console.print(f"Published model {name}: proposal {short(pid)} awaits approval")
    console.print(
        f"Its key stays here: run `cleanroom keys serve --room {room} --as {keystore}` "
        "so approved scoring jobs can get it."
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

    Example: cleanroom keys serve --room offers --service http://127.0.0.1:8321 --as keys/merchant
    """
    from cleanroom.agent import KeyAgent  # noqa: PLC0415
    from cleanroom.client import STATE_DIR  # noqa: PLC0415
    from cleanroom.client.vault import VAULT_DIR, KeyVault  # noqa: PLC0415

    handle = _room(service, keystore, room)
    agent = KeyAgent(handle, KeyVault(handle.client.party, keystore / STATE_DIR / VAULT_DIR))
    if once:
        for answer in agent.step():
            console.print(f"{answer.action} job {short(answer.job)}: {answer.detail}")
        return
    console.print(
        f"Key agent of {handle.client.party.name} for room {short(handle.id)}; Ctrl-C stops it"
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        agent.serve(poll_s=poll)


def dataset_list(
    room: str = ROOM, service: str = SERVICE, keystore: Path = KEYSTORE, as_json: bool = JSON
) -> None:
    """List a room's datasets.

    Example: cleanroom dataset list --room offers --service http://127.0.0.1:8321 --as keys/bank
    """
    found = _room(service, keystore, room).state()["datasets"]
    if as_json:
        emit_json(found)
        return
    shown = table("dataset", "version", "rows", "sha256", "rule", "consent")
    for d in found:
        latest = d["versions"][-1]
        shown.add_row(
            d["name"],
            str(latest["version"]),
            str(latest["rows"]),
            short(latest["sha256"]),
            d.get("rule") or "",
            "yes" if d["consent"] else "revoked",
        )
    console.print(shown)


def dataset_download(
    dataset_ref: str = typer.Argument(
        ..., metavar="DATASET", help="The dataset's name in the room."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the ciphertext."),
    version: int | None = typer.Option(None, "--version", help="A version (default: latest)."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Download a dataset's ciphertext (encrypted Parquet); its digest is checked.

    Only the owner (or, later, an attested enclave) holds the key to read it.

    Example: cleanroom dataset download cards -o cards.parquet --room offers --service ...
    --as keys/bank
    """
    from cleanroom.errors import NotFoundError  # noqa: PLC0415

    handle = _room(service, keystore, room)
    found = dataset(handle, dataset_ref)
    versions = {v["version"]: v for v in found["versions"]}
    chosen = versions.get(version if version is not None else max(versions))
    if chosen is None:
        raise NotFoundError(
            f"dataset {found['name']!r} has no version {version} (versions: "
            f"{', '.join(str(v) for v in sorted(versions))})"
        )
    with RichProgress() as progress:
        handle.download(chosen["sha256"], output, progress=progress)
    console.print(
        f"Downloaded {found['name']} version {chosen['version']} "
        f"({chosen['rows']:,} rows, encrypted) to {output}"
    )


def audit_export_from_service(room: str, service: str, keystore: Path, output: Path) -> int:
    """Export as a member: verified, and checked against the heads seen before.

    A removed member gets the history up to its removal; when a signed tree head
    covers exactly that, the file is a plain export (`cleanroom audit verify`
    checks it); otherwise it keeps the consistency proof to a later head, which
    the SDK's ``verify_prefix_export`` checks."""
    from cleanroom.fs import write_file  # noqa: PLC0415
    from cleanroom.wire import pretty_json  # noqa: PLC0415

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

    Example: cleanroom dataset redeposit --room offers --service http://127.0.0.1:8321
    --as keys/bank
    """
    handle = _room(service, keystore, room)
    done = handle.redeposit()
    console.print(
        f"re-deposited {', '.join(done)} with the key broker" if done else "nothing is stale"
    )
