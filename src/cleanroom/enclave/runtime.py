"""The enclave runtime: one process per job, the only place data is plaintext.

In production this process runs inside a confidential VM or container; here
it runs wherever the job runner starts it, attesting with the platform it is
given. For one job it:

1. creates an ephemeral identity (Ed25519 + X25519) that dies with it;
2. asks the key broker for a nonce and sends evidence binding
   ``{job, nonce, tee_pubkey}``; receives the input keys sealed to itself;
3. fetches the room's ledger and verifies it in full (signatures, Merkle
   tree, governance): the job must be running with *this* enclave's key,
   the analysis text must hash to the approved digest, and each input's
   ciphertext digest is taken from the owner-signed manifest on it;
4. downloads each input, refuses any byte that does not match its digest,
   opens its key and checks the key id against the manifest;
5. runs the job kind (``sql``, ``score``, ``python`` and ``train``, one module
   each in :mod:`cleanroom.enclave`) in its sandbox with the room's limits;
6. seals the result as encrypted Parquet under a fresh key, that key sealed
   (HPKE) to each result recipient, uploads the ciphertext and reports a
   ``job.complete`` statement signed by its attested key; on any failure
   after the keys arrived, a ``job.fail`` statement with the failure's
   category.

What it publishes is narrow on purpose (:mod:`cleanroom.governance.outcomes`):
a failure is a category decided by the exception's type
(:func:`cleanroom.enclave.failures.category_of`), never the exception's text,
which may quote data; durations, phases, result rows and bytes on
``job.complete`` are rounded up to coarse buckets. The exact timings go only to
the process's standard output, which the operator's job log keeps: the
operator sees the enclave's timing anyway (its downloads and uploads).

New job kinds (Python, training, inference, aggregation) add an entry to
:data:`KINDS`; attestation, key release, inputs and result sealing are shared.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from cleanroom.attestation import binding
from cleanroom.attestation.evidence import Attester
from cleanroom.client import Client, Room
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.crypto.hpke import seal
from cleanroom.datasets.manifest import key_id_of
from cleanroom.datasets.parquet import connect, write_encrypted
from cleanroom.datasets.seal import sha256_file
from cleanroom.enclave.failures import JobFailedError, category_of
from cleanroom.enclave.python import run_python
from cleanroom.enclave.score import run_score
from cleanroom.enclave.sql import Input, JobResult, Limits, memory_mb, run_sql
from cleanroom.enclave.train import run_train
from cleanroom.errors import (
    AuthorizationError,
    GovernanceError,
    IntegrityError,
    MissingExtraError,
)
from cleanroom.governance.model import Job
from cleanroom.governance.outcomes import bytes_bucket, rows_bucket, time_bucket
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import SetLimits, sign_statement
from cleanroom.identities.keystore import Party
from cleanroom.policy.rules import DpSpec
from cleanroom.protocol.sealing import open_released, result_context

JobKind = Callable[[str, list[Input], Limits, Path], JobResult]
DP_EXTRA_MISSING = (
    "DP analyses need OpenDP where the enclave runs: "
    "pip install 'confidential-cleanroom[dp]' (the [server] extra includes it)"
)
KINDS: dict[str, JobKind] = {
    "sql": run_sql,
    "score": run_score,
    "python": run_python,
    "train": run_train,
}


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, int] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round((now - self.last) * 1000)
        self.last = now

    @property
    def total_ms(self) -> int:
        return round((time.perf_counter() - self.start) * 1000)


@dataclass(frozen=True)
class JobRun:
    """A finished job: the ``job.complete`` body recorded (buckets only), and the
    exact timings, which stay with the operator's log."""

    body: dict[str, Any]
    timings: dict[str, Any]


JOB_ID = re.compile(r"[0-9a-f]{64}")


def run_job(
    service_url: str,
    room_id: str,
    job_id: str,
    *,
    launch_token: str,
    attester: Attester,
    limits: Limits | None = None,
) -> JobRun:
    """Run one job end to end; returns what it recorded. Raises on failure, after
    recording ``job.fail`` with the failure's category once the keys arrived."""
    if not JOB_ID.fullmatch(job_id):  # evidence binds this job: never anything else
        raise IntegrityError("a job id is 64 lowercase hex digits")
    clock = _Clock()
    party = Party.create("enclave")
    sealer = _warm_sealer()
    with sealer, Client(service_url, party) as client:
        clock.lap("start_ms")
        base = f"/v1/rooms/{room_id}/jobs/{job_id}"
        nonce = client._call(
            "POST", f"{base}/challenge", json_body={"launch_token": launch_token}, auth=False
        )["nonce"]
        evidence = attester.attest(
            binding(nonce=nonce, tee_pubkey=party.fingerprint, job=job_id), host_data=job_id
        )
        try:
            client._call(
                "POST",
                f"{base}/keys",
                json_body={
                    "launch_token": launch_token,
                    "nonce": nonce,
                    "enclave": party.identity_document(),
                    "evidence": evidence,
                },
                auth=False,
            )
        except AuthorizationError as exc:  # the broker recorded key.deny with its reason
            raise JobFailedError(str(exc), category="key release denied") from exc
        _await_releases(client, base, launch_token, (limits or Limits()).release_wait_s)
        clock.lap("attest_and_release_ms")
        room = client.room(room_id)
        try:
            body = _execute(
                room,
                job_id,
                limits=limits or Limits(),
                clock=clock,
                sealer=sealer,
            )
        except Exception as exc:
            # the category only: the exception's text may quote the data
            failed = {"job": job_id, "reason": category_of(exc)}
            failure = sign_statement(party, room_id, "job.fail", failed)
            client._call("POST", f"{base}/report", json_body={"statement": failure})
            raise
        total_ms = clock.total_ms
        timings = {"duration_ms": total_ms, "phases": dict(clock.phases)}
        body["duration_ms"] = time_bucket(total_ms)
        body["phases"] = {name: time_bucket(ms) for name, ms in clock.phases.items()}
        statement = sign_statement(party, room_id, "job.complete", body)
        client._call("POST", f"{base}/report", json_body={"statement": statement})
        return JobRun(body, timings)


def _await_releases(client: Client, base: str, launch_token: str, limit_s: float) -> None:
    """Wait until every input's key is released: by the broker at once, by each
    owner's key agent when it has checked the request. Never falls back to
    another release path: a denial or the time limit ends the job."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            status = client._call(
                "POST", f"{base}/key-status", json_body={"launch_token": launch_token}, auth=False
            )
        except AuthorizationError as exc:  # the broker's denial, recorded as key.deny
            raise JobFailedError(str(exc), category="key release denied") from exc
        if status["status"] != "requested":
            if status["status"] != "running":
                raise JobFailedError(
                    "the job ended before its keys arrived", category="key release denied"
                )
            return
        if time.monotonic() >= deadline:
            waiting = ", ".join(status["waiting_for"]) or "nobody"
            raise JobFailedError(
                f"no key release from {waiting} within {limit_s:g} s",
                category="key release timed out",
            )
        time.sleep(0.02)  # a cheap route: the job starts as soon as the last owner releases


def dp_kind(spec: DpSpec) -> JobKind:
    """The DP variant of the SQL kind: bounded, clamped aggregates, then noise."""
    try:
        from cleanroom.policy import dp  # noqa: PLC0415 - OpenDP loads only for DP jobs (0.2 s)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "opendp":
            raise
        # OpenDP is an extra: an owner's or auditor's install has no use for it
        raise MissingExtraError(DP_EXTRA_MISSING) from exc

    def run(text: str, inputs: list[Input], limits: Limits, work: Path) -> JobResult:
        exact = run_sql(dp.aggregate_sql(text, spec), inputs, limits, work)
        return JobResult(dp.release(exact.table, spec), {})

    # only the noisy release may depend on the data: its duration is a bucket too
    return padded(run)


def padded(kind: JobKind) -> JobKind:
    """``kind``, its run padded to the end of its time bucket and its phases withheld,
    so the ledger's timings say nothing finer than a bucket about the data. For the
    kinds whose running time the data steers in ways no reader of the text can
    bound: DP (only the noise may depend on the data), scoring (a vendor's model
    could time itself on one record), Python (opaque code) and training (how trees
    grow and when a fit converges depend on every row)."""

    def run(text: str, inputs: list[Input], limits: Limits, work: Path) -> JobResult:
        started = time.perf_counter()
        try:
            result = kind(text, inputs, limits, work)
        finally:  # a failure waits for its bucket too: its time says nothing either
            elapsed_ms = (time.perf_counter() - started) * 1000
            time.sleep(max(0.0, time_bucket(math.ceil(elapsed_ms)) - elapsed_ms) / 1000)
        return JobResult(result.table, {}, result.confinement)

    return run


def room_limits(service: Limits, room: SetLimits | None) -> Limits:
    """The stricter of the service's limits and the room's."""
    if room is None:
        return service
    return replace(
        service,
        time_s=min(service.time_s, float(room.time_s)),
        memory=f"{min(memory_mb(service.memory), room.memory_mb)}MB",
        max_result_rows=min(service.max_result_rows, room.max_result_rows),
    )


def _warm_sealer() -> Any:
    """A connection for sealing the result, opened and used once at start-up, so
    that engine start-up (extension load, lazy imports) is not counted as sealing."""
    sealer = connect()
    with tempfile.TemporaryDirectory(prefix="cleanroom-warm-") as tmp:
        write_encrypted(sealer, pa.table({"x": [0]}).to_reader(), Path(tmp) / "w", os.urandom(32))
    return sealer


def _verified_job(room: Room, job_id: str) -> tuple[RoomState, Job]:
    state = room.audit.verify().state
    job = state.jobs.get(job_id)
    party = room.client.party
    if job is None or job.status != "running" or job.enclave is None:
        raise IntegrityError("the ledger records no key release for this job")
    if job.enclave.fingerprint != party.fingerprint:
        raise IntegrityError("the ledger released this job's keys to another enclave")
    return state, job


def _execute(
    room: Room,
    job_id: str,
    *,
    limits: Limits,
    clock: _Clock,
    sealer: Any,
) -> dict[str, Any]:
    state, job = _verified_job(room, job_id)
    analysis = state.analyses[job.analysis]
    if hashlib.sha256(analysis.text.encode("utf-8")).hexdigest() != job.analysis_digest:
        raise IntegrityError("the analysis text does not match the approved digest")
    kind = KINDS.get(analysis.language)
    if kind is None:
        raise IntegrityError(f"this runtime cannot run {analysis.language!r} analyses")
    # the enclave trusts no check done outside it: the rules come from the verified ledger
    try:
        text = state.check_policy(
            analysis.text,
            analysis.inputs,
            analysis.recipients,
            analysis.dp,
            analysis.approved_by,
            language=analysis.language,
        )
    except GovernanceError as exc:
        raise JobFailedError(str(exc), category="query refused") from exc
    if analysis.dp is not None:
        kind = dp_kind(analysis.dp)
    elif analysis.language != "sql":  # every kind but plain SQL, a later one too: padded()
        kind = padded(kind)
    limits = room_limits(limits, state.limits)
    clock.lap("ledger_verify_ms")
    # every input's key, sealed to this enclave, is on the verified ledger
    sealed = job.input_keys
    with tempfile.TemporaryDirectory(prefix="cleanroom-enclave-") as tmp:
        work = Path(tmp)
        inputs = []
        digests = []
        for index, (name, manifest_digest) in enumerate(job.released):
            manifest = state.version(name, manifest_digest).manifest
            path = work / f"input-{index}.parquet"
            room.download(manifest.sha256, path)  # refused unless the digest matches
            key = open_released(
                room.client.party,
                sealed.get(manifest_digest, ""),
                room=room.id,
                job=job_id,
                dataset=name,
                manifest=manifest_digest,
            )
            if key_id_of(key) != manifest.key_id:
                raise IntegrityError(f"the key released for {name!r} is not its manifest's key")
            inputs.append(Input(name, path, key, manifest.model, manifest.rows))
            digests.append({"dataset": name, "sha256": manifest.sha256})
        clock.lap("inputs_ms")
        result = kind(text, inputs, limits, work)
        clock.lap("run_ms")
        clock.phases.update(result.phases)
        confinement = result.confinement
        output, sealed_keys, result_path = _seal_result(state, job, result.table, work, sealer)
        clock.lap("seal_ms")
        room.put_file(result_path, f"/v1/rooms/{room.id}/jobs/{job_id}/result/{output['sha256']}")
        clock.lap("upload_ms")
    # the timings are added (as buckets) by run_job, once the clock has stopped
    body = {"job": job_id, "output": output, "sealed_keys": sealed_keys, "inputs": digests}
    if confinement is not None:
        body["confinement"] = confinement
    return body


def _seal_result(
    state: RoomState, job: Job, table: pa.Table, work: Path, sealer: Any
) -> tuple[dict[str, Any], list[dict[str, str]], Path]:
    key = os.urandom(32)
    path = work / "result.parquet"
    write_encrypted(sealer, table.to_reader(), path, key)
    digest, size = sha256_file(path)
    key_id = key_id_of(key)
    context = result_context(state.room, job.id, digest, key_id)
    sealed_keys = [
        {
            "recipient": fingerprint,
            "sealed": b64url_encode(
                seal(key, state.members[fingerprint].identity.encryption_key, context)
            ),
        }
        for fingerprint in sorted(set(job.recipients))
    ]
    output = {
        "sha256": digest,  # binds the exact ciphertext; its size and rows are upper bounds
        "bytes": bytes_bucket(size),
        "rows": rows_bucket(table.num_rows),
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "key_id": key_id,
    }
    return output, sealed_keys, path
