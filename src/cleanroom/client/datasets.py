"""Publishing datasets and their keys, and fetching job results, for a :class:`Room`.

An owner seals a dataset on its own machine, proposes its registration,
uploads only the ciphertext, and records how its data key is released: kept
at home (its key agent releases it) or deposited sealed to the service's
attested key broker, once the broker's evidence for a nonce chosen here passes
the room's verified contract. A result is opened only as the verified ledger
describes it.

DuckDB and pyarrow load only when a dataset is sealed or a result decrypted
(the imports are inside those functions), so ``import cleanroom.client``
stays light for code that only governs or audits.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.datasets.manifest import DATA_FILE, MANIFEST_FILE, key_id_of
from cleanroom.datasets.schema import Schema
from cleanroom.errors import (
    AttestationError,
    AuthorizationError,
    CleanroomError,
    GovernanceError,
    IntegrityError,
    NotFoundError,
)
from cleanroom.fs import atomic_path
from cleanroom.governance import statements as st
from cleanroom.governance.outcomes import rows_bucket
from cleanroom.governance.views import job_view
from cleanroom.identities.identity import PublicIdentity
from cleanroom.models.manifest import ModelManifest
from cleanroom.progress import Progress
from cleanroom.protocol.sealing import result_context, seal_deposit

if TYPE_CHECKING:
    import pyarrow as pa

    from cleanroom.client.room import Room


def publish(
    room: Room,
    source: Any,
    *,
    schema: Schema | Path,
    name: str,
    progress: Progress | None,
    release_to: Sequence[str],
    measurements: Sequence[str] | None,
    rule: dict[str, Any] | None,
    release: Literal["owner", "broker"],
    key_vault: Path | None,
    model: ModelManifest | None = None,
) -> str:
    """:meth:`Room.publish_dataset` (and :meth:`Room.publish_model`, with ``model``)."""
    # sealing runs DuckDB: loaded only by those who seal
    from cleanroom.datasets.seal import seal_dataset, unseal_key  # noqa: PLC0415

    client = room.client
    vault = (
        _vault(room, key_vault)
        if release == "owner" or key_vault is not None or client.state_dir is not None
        else None
    )
    declared = schema if isinstance(schema, Schema) else Schema.load(schema)
    policy = {
        "platforms": list(release_to),
        "measurements": list(measurements) if measurements is not None else None,
    }
    if release == "broker":  # refused before anything is sealed, proposed or uploaded
        _checked_broker(room, policy)
    with tempfile.TemporaryDirectory(prefix="cleanroom-publish-") as work:
        sealed = seal_dataset(
            source,
            schema=declared,
            owner=client.party,
            output=Path(work) / "sealed",
            name=name,
            progress=progress,
            model=model,
        )
        manifest = json.loads((sealed.directory / MANIFEST_FILE).read_text())
        key = unseal_key(sealed.directory, sealed.manifest, client.party)
        action: dict[str, Any] = {"type": "register_dataset", "manifest": manifest}
        if rule is not None:
            action["rule"] = rule
        if vault is not None:  # kept before anything is proposed: never a dataset without key
            vault.keep(room.id, name, canonical_digest(manifest), key)
        proposal = room.propose(action)
        room.upload(sealed.directory / DATA_FILE, progress=progress)
        if release == "broker":
            _deposit(room, name, canonical_digest(manifest), key, policy)
        else:
            keep_key_at_home(room, name, manifest, release_to, measurements)
    return proposal


def _vault(room: Room, directory: Path | None) -> KeyVault:
    client = room.client
    if directory is not None:
        return KeyVault(client.party, directory)
    if client.state_dir is None:
        raise ValueError(
            "owner-held release keeps the data key on this machine: give key_vault=, "
            "or open the client from a keystore directory"
        )
    return KeyVault(client.party, client.state_dir / VAULT_DIR)


def keep_key_at_home(
    room: Room,
    dataset: str,
    manifest: dict[str, Any],
    platforms: Sequence[str],
    measurements: Sequence[str] | None = None,
) -> None:
    """:meth:`Room.keep_key_at_home`."""
    body = {
        "dataset": dataset,
        "manifest": canonical_digest(manifest),
        "release": "owner",
        "policy": {
            "platforms": list(platforms),
            "measurements": list(measurements) if measurements is not None else None,
        },
    }
    room._submit(st.sign_statement(room.client.party, room.id, "key.deposit", body))


def deposit_key(
    room: Room,
    dataset: str,
    manifest: dict[str, Any],
    key: bytes,
    *,
    platforms: Sequence[str],
    measurements: Sequence[str] | None = None,
) -> None:
    """:meth:`Room.deposit_key`."""
    policy = {
        "platforms": list(platforms),
        "measurements": list(measurements) if measurements is not None else None,
    }
    _deposit(room, dataset, canonical_digest(manifest), key, policy)


def _deposit(room: Room, dataset: str, digest: str, key: bytes, policy: dict[str, Any]) -> None:
    offer, broker = _checked_broker(room, policy)
    body = {
        "dataset": dataset,
        "manifest": digest,
        "release": "broker",
        "sealed_key": seal_deposit(key, broker, room=room.id, dataset=dataset, manifest=digest),
        "broker": offer,
        "policy": policy,
    }
    room._submit(st.sign_statement(room.client.party, room.id, "key.deposit", body))


def _checked_broker(room: Room, policy: dict[str, Any]) -> tuple[dict[str, Any], PublicIdentity]:
    """The service's key broker, with evidence binding a nonce chosen here, checked
    against the room's contract (from the verified ledger) and ``policy``."""
    state = room.audit.verify().state
    nonce = b64url_encode(os.urandom(24))
    offer, parsed = room._broker_offer(nonce)
    if parsed.nonce != nonce:
        raise AttestationError("the key broker's evidence does not answer this nonce")
    measurements = policy["measurements"]
    try:
        identity, _ = state.check_broker(
            offer,
            time.time_ns() // 1_000_000,
            frozenset(policy["platforms"]),
            frozenset(measurements) if measurements is not None else None,
        )
    except GovernanceError as exc:
        raise AttestationError(str(exc)) from exc
    return offer, identity


def stale(room: Room) -> list[tuple[str, str]]:
    """(dataset, manifest digest) of this owner's current versions deposited with a
    key broker that is no longer the service's."""
    state = room.audit.verify().state
    nonce = b64url_encode(os.urandom(24))
    _, offer = room._broker_offer(nonce)
    try:
        current = PublicIdentity.from_document(offer.identity).fingerprint
    except CleanroomError as exc:
        raise AttestationError(f"the key broker's identity is invalid: {exc}") from exc
    me = room.client.party.fingerprint
    return [
        (name, dataset.versions[-1].digest)
        for name, dataset in state.datasets.items()
        if dataset.owner == me
        and dataset.versions
        and (deposit := state.deposits.get(dataset.versions[-1].digest)) is not None
        and deposit.broker is not None
        and deposit.broker.fingerprint != current
    ]


def redeposit(room: Room, *, key_vault: Path | None = None) -> list[str]:
    """:meth:`Room.redeposit`."""
    vault = _vault(room, key_vault)
    state = room.audit.verify().state
    done = []
    for name, digest in stale(room):
        deposit = state.deposits[digest]
        policy = {
            "platforms": sorted(deposit.platforms),
            "measurements": sorted(deposit.measurements)
            if deposit.measurements is not None
            else None,
        }
        _deposit(room, name, digest, vault.open(room.id, name, digest), policy)
        done.append(name)
    return done


Decimals = Literal["exact", "float"]


def job_result(
    room: Room, job_id: str, progress: Progress | None = None, *, decimals: Decimals = "exact"
) -> pa.Table:
    """:meth:`Room.job_result`: the decrypted result, marked with where it came from."""
    if decimals not in ("exact", "float"):
        raise ValueError(f"decimals is 'exact' or 'float', not {decimals!r}")
    table, _ = _result(room, job_id, progress)
    return _floats(table) if decimals == "float" else table


def download_result(
    room: Room, job_id: str, output: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """:meth:`Room.download_result`: the result written to a .csv or .parquet file."""
    from cleanroom.datasets.sources import plain_format, write_plain  # noqa: PLC0415

    output = Path(output)
    file_format = plain_format(output)  # refused before anything is fetched
    table, view = _result(room, job_id, progress)
    with atomic_path(output) as tmp:
        write_plain(table, tmp, file_format)
    return view


def _result(room: Room, job_id: str, progress: Progress | None) -> tuple[pa.Table, dict[str, Any]]:
    """A job's result and its verified view: every step checked against the verified ledger."""
    # decrypting a result runs DuckDB and pyarrow: loaded only here
    from cleanroom.datasets.parquet import read_encrypted  # noqa: PLC0415

    state = room.audit.verify().state
    job = state.jobs.get(job_id)
    if job is None or job.status != "succeeded" or job.output is None:
        raise NotFoundError(f"job {job_id[:12]}... has no result on the ledger")
    me = room.client.party
    sealed = job.sealed_keys.get(me.fingerprint)
    if sealed is None:
        raise AuthorizationError("the result is not sealed to you: you are not its recipient")
    digest, key_id = job.output["sha256"], job.output["key_id"]
    context = result_context(room.id, job_id, digest, key_id)
    key = me.open_sealed(b64url_decode(sealed, what="sealed result key"), context)
    if key_id_of(key) != key_id:
        raise IntegrityError("the result key is not the one the enclave recorded")
    with tempfile.TemporaryDirectory(prefix="cleanroom-result-") as work:
        ciphertext = Path(work) / "result.parquet"
        route = f"/v1/rooms/{room.id}/jobs/{job_id}/result"
        room.download(digest, ciphertext, progress or False, route=route)
        table = read_encrypted(ciphertext, key)
    if rows_bucket(table.num_rows) != job.output["rows"]:  # the ledger shows a bucket
        raise IntegrityError("the decrypted result does not match the enclave's record")
    # the result carries where it came from, the assurance included
    marked = table.replace_schema_metadata(
        {
            "cleanroom.room": room.id,
            "cleanroom.job": job_id,
            "cleanroom.analysis": job.analysis,
            "cleanroom.assurance": job.assurance,
            "cleanroom.measurement": job.measurement,
        }
    )
    names = {fp: m.identity.name for fp, m in state.members.items()}
    return marked, {**job_view(job, names), "rows": table.num_rows}


def _floats(table: pa.Table) -> pa.Table:
    """``table`` with every decimal, nested ones included, as float64."""
    import pyarrow as pa  # noqa: PLC0415

    def convert(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_decimal(kind):
            return pa.float64()
        if pa.types.is_large_list(kind):
            return pa.large_list(field(kind.value_field))
        if pa.types.is_list(kind):
            return pa.list_(field(kind.value_field))
        if pa.types.is_struct(kind):
            return pa.struct([field(kind.field(i)) for i in range(kind.num_fields)])
        return kind

    def field(f: pa.Field) -> pa.Field:
        return pa.field(f.name, convert(f.type), f.nullable, f.metadata)

    schema = pa.schema([field(f) for f in table.schema], metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)
