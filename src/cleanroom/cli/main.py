"""The ``cleanroom`` command line.

Every command prints one readable line and a hint on failure, and exits with
one status of :data:`cleanroom.cli.failures.EXIT_CODES` (docs/cli.md).

Invariant: importing this module loads Typer, Click and Rich's console only;
each command imports what it needs (the SDK, httpx, pyarrow, DuckDB, the
service) when it runs, so ``--help`` and ``--version`` answer at once
(tests/test_cli_imports.py pins the import graph).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cleanroom import __version__
from cleanroom.cli import analyst, governance, jobs, rooms
from cleanroom.cli.common import (
    PASSPHRASE_ENV,
    SERVICE_KEY_ENV,
    SERVICE_KEY_HELP,
    load_party,
    passphrase,
    use_service_key,
)
from cleanroom.cli.failures import INTERRUPTED, USAGE, debugging, exit_codes_epilog, explain
from cleanroom.cli.ui import RichProgress, console, emit_id, emit_json, err_console, short, table

if TYPE_CHECKING:
    from cleanroom.governance.state import RoomState
    from cleanroom.governance.statements import Statement
    from cleanroom.identities import PublicIdentity
    from cleanroom.ledger import VerifiedLedger

JSON = typer.Option(False, "--json", help="Print JSON (stable keys, full ids) instead of a table.")

app = typer.Typer(
    name="cleanroom",
    help="A confidential clean room: parties, encrypted datasets and audited rooms.",
    epilog=exit_codes_epilog(),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
party_app = typer.Typer(help="Create and show party identities (keystores).", no_args_is_help=True)
dataset_app = typer.Typer(help="Encrypt, inspect and decrypt datasets.", no_args_is_help=True)
app.add_typer(party_app, name="party")
app.add_typer(dataset_app, name="dataset")
audit_app = typer.Typer(
    help="Export, verify and read a room's ledger, offline.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
app.add_typer(rooms.room_app, name="room")
app.add_typer(governance.member_app, name="member")
app.add_typer(rooms.proposal_app, name="proposal")
app.add_typer(rooms.consent_app, name="consent")
app.add_typer(jobs.analysis_app, name="analysis")
app.add_typer(jobs.enclave_app, name="enclave")
app.add_typer(jobs.job_app, name="job")
app.add_typer(jobs.budget_app, name="budget")
analyst.register(dataset_app, jobs.analysis_app)  # schema, mock, check (docs/analyst.md)
governance.register(
    dataset_app=dataset_app,
    analysis_app=jobs.analysis_app,
    consent_app=rooms.consent_app,
    budget_app=jobs.budget_app,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"cleanroom {__version__}\n")
        raise typer.Exit


@app.callback()
def _options(
    service_key: Path | None = typer.Option(
        None, "--service-key", envvar=SERVICE_KEY_ENV, help=SERVICE_KEY_HELP
    ),
    _version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Options for every command that talks to a service."""
    use_service_key(service_key)


dataset_app.command("publish")(rooms.dataset_publish)
model_app = typer.Typer(help="Publish protected models (ONNX) for scoring.", no_args_is_help=True)
app.add_typer(model_app, name="model")
model_app.command("publish")(rooms.model_publish)
keys_app = typer.Typer(
    help="Release your datasets' keys to attested enclaves yourself (owner-held release).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
keys_app.command("serve")(rooms.keys_serve)
dataset_app.command("list")(rooms.dataset_list)
dataset_app.command("download")(rooms.dataset_download)
dataset_app.command("redeposit")(rooms.dataset_redeposit)


def _identity_json(identity: PublicIdentity) -> dict[str, Any]:
    payload = identity.payload()
    return {
        "name": identity.name,
        "fingerprint": identity.fingerprint,
        "signing_key": payload["signing_key"],
        "encryption_key": payload["encryption_key"],
    }


def _show_identity(identity: PublicIdentity, title: str) -> None:
    from rich.table import Table  # noqa: PLC0415

    from cleanroom.identities import format_fingerprint  # noqa: PLC0415

    shown = Table(title=title, show_header=False, title_justify="left")
    shown.add_column(no_wrap=True)
    shown.add_column(no_wrap=True)
    shown.add_row("name", identity.name)
    shown.add_row("fingerprint", format_fingerprint(identity.fingerprint))
    payload = identity.payload()
    shown.add_row("signing key (Ed25519)", payload["signing_key"])
    shown.add_row("encryption key (X25519)", payload["encryption_key"])
    console.print(shown)


# -- party ------------------------------------------------------------------


@party_app.command("create")
def party_create(
    name: str = typer.Argument(..., help="The party's display name, e.g. 'bank'."),
    directory: Path = typer.Option(..., "--dir", "-d", help="Keystore directory to create."),
    protect: bool = typer.Option(
        False,
        "--passphrase",
        help=f"Encrypt the private keys under a passphrase (from ${PASSPHRASE_ENV} or a prompt).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the new fingerprint."),
) -> None:
    """Create a party: an Ed25519 signing key and an X25519 encryption key.

    Writes DIR/keystore.json (private, mode 0600) and DIR/identity.json (public,
    self-signed, to share with the other parties).

    Example: cleanroom party create bank --dir keys/bank --passphrase
    """
    from cleanroom.identities import Party, format_fingerprint  # noqa: PLC0415

    secret = passphrase(confirm=True) if protect else None
    party = Party.create(name)
    party.save(directory, passphrase=secret)
    if quiet:
        emit_id(party.fingerprint)
        return
    console.print(f"Created party [bold]{party.name}[/] in {directory}")
    console.print(f"fingerprint: {format_fingerprint(party.fingerprint)}")
    if secret is None:
        err_console.print(
            "[yellow]note:[/] private keys are stored unencrypted (mode 0600); "
            "use --passphrase to protect them"
        )


@party_app.command("show")
def party_show(
    directory: Path | None = typer.Option(None, "--dir", "-d", help="A keystore directory."),
    identity_file: Path | None = typer.Option(
        None, "--identity", "-i", help="A public identity file instead of a keystore."
    ),
    as_json: bool = JSON,
) -> None:
    """Print a party's name and key fingerprints.

    Compare the fingerprint with the party out of band (a call, a signed e-mail)
    before trusting its identity file.

    Example: cleanroom party show --identity merchant.identity.json
    """
    from cleanroom.identities import PublicIdentity  # noqa: PLC0415
    from cleanroom.identities.keystore import IDENTITY_FILE  # noqa: PLC0415

    if directory is not None and identity_file is None:
        identity = PublicIdentity.load(directory / IDENTITY_FILE)
    elif identity_file is not None and directory is None:
        identity = PublicIdentity.load(identity_file)
    else:
        raise typer.BadParameter("give exactly one of --dir or --identity")
    if as_json:
        emit_json(_identity_json(identity))
    else:
        _show_identity(identity, "Party")


@party_app.command("export")
def party_export(
    directory: Path = typer.Option(..., "--dir", "-d", help="A keystore directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the identity file."),
) -> None:
    """Write the party's public identity file (name, both public keys, fingerprint).

    The file is self-signed and contains no secret; send it to the other parties.

    Example: cleanroom party export --dir keys/bank -o bank.identity.json
    """
    from cleanroom.fs import write_file  # noqa: PLC0415
    from cleanroom.identities import format_fingerprint  # noqa: PLC0415
    from cleanroom.wire import pretty_json  # noqa: PLC0415

    party = load_party(directory)
    write_file(output, pretty_json(party.identity_document()))
    console.print(f"Wrote the public identity of [bold]{party.name}[/] to {output}")
    console.print(f"fingerprint: {format_fingerprint(party.fingerprint)}")


# -- dataset ----------------------------------------------------------------


@dataset_app.command("encrypt")
def dataset_encrypt(
    source: Path = typer.Argument(..., help="A .csv (with header) or .parquet file."),
    schema: Path = typer.Option(..., "--schema", "-s", help="The declared schema (JSON)."),
    owner: Path = typer.Option(..., "--owner", help="The owner's keystore directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to create."),
    name: str | None = typer.Option(
        None, "--name", "-n", help="Dataset name (default: file stem)."
    ),
) -> None:
    """Validate every row against a schema and write an encrypted dataset.

    OUTDIR gets data.parquet (encrypted Parquet under a fresh 256-bit key),
    manifest.json (signed by the owner; never contains the key) and the key
    sealed to the owner. On any error nothing is written.

    Example: cleanroom dataset encrypt cards.csv --schema cards.schema.json
    --owner keys/bank -o cards.sealed
    """
    from cleanroom.datasets import Schema, seal_dataset  # noqa: PLC0415

    declared = Schema.load(schema)
    party = load_party(owner)
    with RichProgress() as progress:
        sealed = seal_dataset(
            source,
            schema=declared,
            owner=party,
            output=output,
            name=name or source.stem,
            progress=progress,
        )
    m = sealed.manifest
    console.print(f"Encrypted [bold]{m.name}[/]: {m.rows:,} rows -> {output}")
    console.print(f"ciphertext sha256: {m.sha256}")


@dataset_app.command("decrypt")
def dataset_decrypt(
    dataset: Path = typer.Argument(..., help="An encrypted dataset directory."),
    owner: Path = typer.Option(..., "--owner", help="The owner's keystore directory."),
    output: Path = typer.Option(..., "--output", "-o", help="A .csv or .parquet file to write."),
) -> None:
    """Verify and decrypt a dataset as its owner.

    Checks the manifest signature and the ciphertext digest before decrypting.

    Example: cleanroom dataset decrypt cards.sealed --owner keys/bank -o cards.parquet
    """
    from cleanroom.datasets import decrypt_dataset  # noqa: PLC0415

    party = load_party(owner)
    manifest = decrypt_dataset(dataset, party, output)
    console.print(f"Decrypted [bold]{manifest.name}[/]: {manifest.rows:,} rows -> {output}")


@dataset_app.command("inspect")
def dataset_inspect(
    dataset: Path = typer.Argument(..., help="An encrypted dataset directory."),
    owner: Path | None = typer.Option(
        None, "--owner", help="The owner's keystore: verify and allow --rows."
    ),
    identity_file: Path | None = typer.Option(
        None, "--identity", "-i", help="The owner's public identity file: verify only."
    ),
    rows: int = typer.Option(0, "--rows", "-r", min=0, max=1000, help="Decrypt and show N rows."),
    as_json: bool = JSON,
) -> None:
    """Verify a dataset's manifest and show its schema; optionally show rows.

    Example: cleanroom dataset inspect cards.sealed --identity bank.identity.json
    """
    from cleanroom.datasets import load_manifest, open_dataset  # noqa: PLC0415
    from cleanroom.identities import Party, PublicIdentity, format_fingerprint  # noqa: PLC0415

    party: Party | None = None
    if owner is not None and identity_file is None:
        party = load_party(owner)
        identity = party.identity
    elif identity_file is not None and owner is None:
        identity = PublicIdentity.load(identity_file)
    else:
        raise typer.BadParameter("give exactly one of --owner or --identity")
    if rows and party is None:
        raise typer.BadParameter("--rows needs --owner (only the owner can decrypt)")
    manifest = load_manifest(dataset, identity)
    preview = open_dataset(dataset, party).slice(0, rows) if rows and party is not None else None
    if as_json:
        emit_json(
            {
                "name": manifest.name,
                "owner": manifest.owner_name,
                "owner_fingerprint": manifest.owner_fingerprint,
                "rows": manifest.rows,
                "created_at": manifest.created_at,
                "size": manifest.size,
                "sha256": manifest.sha256,
                "signature": "ok",
                "schema": manifest.schema.to_json(),
                "preview": preview.to_pylist() if preview is not None else None,
            }
        )
        return
    console.print(
        f"[bold]{manifest.name}[/] by {manifest.owner_name} "
        f"({format_fingerprint(manifest.owner_fingerprint)[:19]}...), "
        f"{manifest.rows:,} rows, created {manifest.created_at}  [green]signature ok[/]"
    )
    console.print(f"ciphertext: {manifest.size:,} bytes, sha256 {manifest.sha256}")
    columns = table("column", "type", "nullable", "constraints", title="schema")
    for column in manifest.schema.columns:
        constraints = []
        if column.name == manifest.schema.identity_column:
            constraints.append("identity")
        if column.allowed is not None:
            constraints.append(f"in {list(column.allowed)}")
        if column.minimum is not None:
            constraints.append(f">= {column.minimum}")
        if column.maximum is not None:
            constraints.append(f"<= {column.maximum}")
        columns.add_row(
            column.name, column.type, "yes" if column.nullable else "no", ", ".join(constraints)
        )
    console.print(columns)
    if preview is not None:
        shown = table(*preview.schema.names, title=f"first {preview.num_rows} rows")
        for record in preview.to_pylist():
            shown.add_row(*("" if v is None else str(v) for v in record.values()))
        console.print(shown)


# -- audit ------------------------------------------------------------------


def _verified(export: Path, service_key: Path, known_heads: Path | None) -> VerifiedLedger:
    from cleanroom.identities import PublicIdentity  # noqa: PLC0415
    from cleanroom.ledger import (  # noqa: PLC0415
        FileHeadStore,
        TreeHeadTracker,
        load_export,
        verify_export,
    )

    service = PublicIdentity.load(service_key)
    verified = verify_export(load_export(export), service)
    if known_heads is not None:
        TreeHeadTracker(service, FileHeadStore(known_heads)).observe_verified(verified)
    return verified


@audit_app.command("export")
def audit_export(
    room: str = typer.Option(
        ...,
        "--room",
        help="The room: its name, id or a unique id prefix (full id with --data-dir).",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="The export file to write."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Export from a ledger data directory (the operator's side)."
    ),
    service: str | None = typer.Option(
        None, "--service", envvar="CLEANROOM_SERVICE", help="Or from a service, as a member."
    ),
    keystore: Path | None = typer.Option(
        None, "--as", envvar="CLEANROOM_KEYSTORE", help="Your keystore, with --service."
    ),
    database_url: str | None = typer.Option(
        None, "--database", envvar="CLEANROOM_DATABASE_URL", help="postgresql://... store."
    ),
) -> None:
    """Write a portable export of a room's ledger: every entry and signed tree head.

    From a service, the export is verified (and checked against the tree heads
    you saw before) before it is written. The file verifies on any machine with
    only cleanroom installed.

    Example: cleanroom audit export --room offers -o room.ledger.json --service
    http://127.0.0.1:8321 --as keys/bank
    """
    if service is not None and keystore is not None and data_dir is None:
        count = rooms.audit_export_from_service(room, service, keystore, output)
    elif data_dir is not None and service is None:
        from cleanroom.fs import write_file  # noqa: PLC0415
        from cleanroom.ledger import open_ledger  # noqa: PLC0415
        from cleanroom.ledger.local import service_identity_file  # noqa: PLC0415
        from cleanroom.wire import pretty_json  # noqa: PLC0415

        document = open_ledger(data_dir, database_url=database_url).export(room)
        write_file(output, pretty_json(document))
        count = len(document["entries"])
        console.print(f"service key: {service_identity_file(data_dir)}")
    else:
        raise typer.BadParameter("give --data-dir, or --service with --as")
    console.print(f"Exported {count} entries of room {room} to {output}")


def _state_json(verified: VerifiedLedger) -> dict[str, Any]:
    state = verified.state
    return {
        "entries": len(verified.entries),
        "tree_heads": len(verified.tree_heads),
        "root": verified.head.root.hex(),
        "room": state.room,
        "name": state.name,
        "status": state.status,
        "contract_version": state.contract_version,
        "state_digest": state.digest(),
        "members": [
            {
                "name": m.identity.name,
                "fingerprint": m.fingerprint,
                "roles": sorted(m.roles),
                "status": m.status,
            }
            for m in state.members.values()
        ],
        "datasets": [
            {
                "name": d.name,
                "owner": d.owner,
                "versions": len(d.versions),
                "consent": bool(d.consent),
            }
            for d in state.datasets.values()
        ],
        "analyses": [
            {"name": a.name, "inputs": list(a.inputs), "status": a.status}
            for a in state.analyses.values()
        ],
    }


@audit_app.command("verify")
def audit_verify(
    export: Path = typer.Argument(..., help="A ledger export file."),
    service_key: Path = typer.Option(
        ..., "--service-key", "-k", help="The ledger service's public identity file."
    ),
    known_heads: Path | None = typer.Option(
        None, "--known-heads", help="File of tree heads seen before: detects rollback and forks."
    ),
    as_json: bool = JSON,
) -> None:
    """Re-check every signature, proof and tree head, and re-derive the room state.

    Example: cleanroom audit verify room.ledger.json --service-key ledger.identity.json
    """
    verified = _verified(export, service_key, known_heads)
    if as_json:
        emit_json(_state_json(verified))
        return
    state = verified.state
    console.print(
        f"[green]verified[/]: {len(verified.entries)} entries, {len(verified.tree_heads)} "
        f"signed tree heads, root {verified.head.root.hex()[:16]}..."
    )
    console.print(
        f"room [bold]{state.name}[/] ({state.room}): {state.status}, "
        f"contract version {state.contract_version}, state digest {state.digest()[:16]}..."
    )
    members = table("member", "fingerprint", "roles", "status", title="members")
    for m in state.members.values():
        members.add_row(m.identity.name, short(m.fingerprint), ", ".join(sorted(m.roles)), m.status)
    console.print(members)
    if state.datasets:
        datasets = table("dataset", "owner", "versions", "consent", title="datasets")
        for d in state.datasets.values():
            datasets.add_row(
                d.name,
                state.members[d.owner].identity.name,
                str(len(d.versions)),
                "yes" if d.consent else "[red]revoked[/]",
            )
        console.print(datasets)
    if state.analyses:
        analyses = table("analysis", "inputs", "status", title="analyses")
        for a in state.analyses.values():
            analyses.add_row(a.name, ", ".join(a.inputs), a.status)
        console.print(analyses)


def _describe(statement: Statement) -> str:
    body = statement.body
    if statement.kind == "proposal.create":
        action = body.action
        target = getattr(action, "name", None) or getattr(action, "dataset", None) or ""
        return f"{action.type} {target}".strip()
    if statement.kind == "ballot":
        return f"{body.vote} {body.proposal[:12]}"
    if statement.kind == "proposal.withdraw":
        return f"withdraw {body.proposal[:12]}"
    if statement.kind == "consent.revoke":
        return f"revoke consent for {body.dataset}"
    if statement.kind == "room.create":
        return f"create room {body.name!r} with {len(body.members)} members"
    return _describe_job(statement)


_JOB_ACTS: dict[str, Callable[[Any], str]] = {
    "key.deposit": lambda b: f"deposit key for {b.dataset} (to {', '.join(b.policy.platforms)})",
    "job.request": lambda b: f"run {b.analysis}",
    "key.release": lambda b: (
        f"release {', '.join(i.dataset for i in b.inputs)} to the enclave of job {b.job[:12]} "
        f"({b.evidence['format']})"
    ),
    "key.deny": lambda b: f"deny job {b.job[:12]}: {b.reason}",
    "job.complete": lambda b: (
        f"job {b.job[:12]}: up to {b.output.rows} rows sealed to {len(b.sealed_keys)} recipient(s)"
    ),
    "job.fail": lambda b: f"job {b.job[:12]} failed: {b.reason}",
}


def _describe_job(statement: Statement) -> str:
    describe = _JOB_ACTS.get(statement.kind)
    return describe(statement.body) if describe else ""


def _author_name(state: RoomState, fingerprint: str) -> str:
    if fingerprint in state.members:
        return state.members[fingerprint].identity.name
    if state.service is not None and fingerprint == state.service.fingerprint:
        return "(service)"
    if state.enclave_job(fingerprint) is not None:
        return "(enclave)"
    return "?"


@audit_app.command("log")
def audit_log(
    export: Path = typer.Argument(..., help="A ledger export file."),
    service_key: Path = typer.Option(
        ..., "--service-key", "-k", help="The ledger service's public identity file."
    ),
    as_json: bool = JSON,
) -> None:
    """Print the room's verified history, one line per entry.

    Example: cleanroom audit log room.ledger.json --service-key ledger.identity.json
    """
    from datetime import UTC, datetime  # noqa: PLC0415

    verified = _verified(export, service_key, None)
    rows: list[dict[str, Any]] = []
    for entry, statement in zip(verified.entries, verified.statements, strict=True):
        rows.append(
            {
                "seq": entry.seq,
                "time": entry.time,
                "author": statement.author,
                "author_name": _author_name(verified.state, statement.author),
                "kind": statement.kind,
                "detail": _describe(statement),
            }
        )
    if as_json:
        emit_json(rows)
        return
    log = table("seq", "time (UTC)", "author", "act", "detail", title=f"room {verified.state.name}")
    for row in rows:
        when = datetime.fromtimestamp(row["time"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        log.add_row(str(row["seq"]), when, row["author_name"], row["kind"], row["detail"])
    console.print(log)


# -- serve -------------------------------------------------------------------


@app.command("serve")
def serve_command(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Ledger, blobs and service key (created on first start)."
    ),
    database_url: str | None = typer.Option(
        None, "--database", help="postgresql://... keeps the ledger in PostgreSQL."
    ),
    host: str | None = typer.Option(None, "--host", help="Address to listen on."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on."),
    config: Path | None = typer.Option(
        None, "--config", help="A TOML file of settings; see docs/service.md."
    ),
) -> None:
    """Run the clean room service (FastAPI + uvicorn).

    Settings come from --config, then CLEANROOM_* environment variables, then
    these options. The service's public identity is served at /v1/service and
    written to DATA_DIR/service/identity.json.

    Example: cleanroom serve --data-dir data --port 8321
    """
    from cleanroom.service.server import load_settings, serve  # noqa: PLC0415 - heavy imports

    settings = load_settings(
        config, data_dir=data_dir, database_url=database_url, host=host, port=port
    )
    console.print(
        f"cleanroom service on http://{settings.host}:{settings.port} (data in {settings.data_dir})"
    )
    serve(settings)


@app.command("broker")
def broker_command(
    platform: str = typer.Option(
        "insecure-virtual",
        "--platform",
        help="How the broker attests: insecure-virtual (development; no hardware protects "
        "its key) or configfs-tsm (a confidential VM).",
    ),
) -> None:
    """Run the attested key broker (the service starts it itself; see docs/jobs.md).

    Its key pair is made in memory at start and never written. It reads the
    service's identity, then one JSON request per line, on standard input.
    """
    from cleanroom.broker.__main__ import main as broker_main  # noqa: PLC0415

    raise typer.Exit(broker_main(["--platform", platform]))


@app.command("version")
def version() -> None:
    """Print the cleanroom version."""
    sys.stdout.write(f"cleanroom {__version__}\n")


# -- the entry point ------------------------------------------------------------


def _params(argv: Sequence[str]) -> dict[str, str]:
    """Each option, argument and environment variable of the command ``argv``
    names, with the value it was given (to say which one named a bad path)."""
    # Typer vendors Click as typer._click (its commands and contexts are those)
    from typer._click.core import Context, ParameterSource  # noqa: PLC0415
    from typer.core import TyperGroup, TyperOption  # noqa: PLC0415

    found: dict[str, str] = {}
    command = typer.main.get_command(app)
    args = list(argv)
    parent: Context | None = None
    name: str | None = "cleanroom"
    while True:
        ctx = command.make_context(name, args, parent=parent, resilient_parsing=True)
        for param in command.params:
            value = ctx.params.get(param.name or "")
            if value is None or isinstance(value, bool):
                continue
            if isinstance(param, TyperOption):
                label = max(param.opts, key=len)
                if ctx.get_parameter_source(param.name or "") == ParameterSource.ENVIRONMENT:
                    label = f"{param.envvar} ({label})"
            else:
                label = (param.name or "").upper()
            values = value if isinstance(value, list | tuple) else [value]
            for i, item in enumerate(values):
                found[label if i == 0 else f"{label} #{i + 1}"] = str(item)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not isinstance(command, TyperGroup) or not rest:
            return found
        name, sub, args = command.resolve_command(ctx, rest)
        if sub is None:
            return found
        command, parent = sub, ctx


def _report(exc: BaseException, argv: Sequence[str]) -> int:
    from rich.markup import escape  # noqa: PLC0415

    try:
        params = _params(argv)
    except Exception:  # noqa: BLE001 - naming the option is a courtesy, never a second failure
        params = {}
    failure = explain(exc, params)
    if debugging():
        traceback.print_exception(exc)
    # messages carry names, paths and service text: never read as Rich markup
    err_console.print(
        f"[bold red]error:[/] {escape(failure.message)}", highlight=False, soft_wrap=True
    )
    if failure.hint:
        err_console.print(f"[dim]hint: {escape(failure.hint)}[/]", highlight=False, soft_wrap=True)
    return failure.code


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns its exit status."""
    from typer._click.exceptions import ClickException  # noqa: PLC0415

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args, prog_name="cleanroom", standalone_mode=False)
    except typer.Abort:
        err_console.print("interrupted", highlight=False)
        return INTERRUPTED
    except ClickException as exc:
        from typer import rich_utils  # noqa: PLC0415

        rich_utils.rich_format_error(exc)
        return exc.exit_code if exc.exit_code else USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure gets one line
        return _report(exc, args)
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
