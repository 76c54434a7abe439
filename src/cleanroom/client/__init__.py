"""The Python SDK: ``cleanroom.Client``.

The client does all cryptography itself: it signs every request (RFC 9421)
and every statement, seals datasets before uploading them, verifies every
receipt it is given and checks that every tree head it sees extends the last
one it saw, so a service that rolls back or forks its ledger is caught by each
member on its next call.

It trusts one ledger service key per service URL, pinned on first use or given
out of band (``service_key=``), and refuses any other key unless the pinned
one signed a rotation to it (:mod:`cleanroom.client.trust`). Pins and the last
tree head of each room persist in the party's state directory
(:mod:`cleanroom.client.state`): ``KEYSTORE/state`` when the client is given a
keystore directory, or ``state_dir=``.

    client = Client("http://127.0.0.1:8321", Path("keys/bank"))
    room = client.create_room("offers", members=[(bank_id, ["data_provider"]), ...])
    pid = room.propose({"type": "set_measurements", "measurements": []})
    room.approve(pid)
    room.audit.verify()
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, StrictStr

from cleanroom.broker import seal_deposit
from cleanroom.client.state import HEADS_FILE, PIN_FILE, ClientState
from cleanroom.client.trust import (
    SERVICE_IDENTITY_FILE,
    Pin,
    ServiceIdentityError,
    ServiceRotation,
    parse_service_key,
    sign_service_rotation,
)
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.crypto.hpke import SealContext
from cleanroom.datasets.manifest import DATA_FILE, MANIFEST_FILE, key_id_of
from cleanroom.datasets.parquet import read_encrypted
from cleanroom.datasets.schema import Schema
from cleanroom.datasets.seal import seal_dataset, sha256_file, unseal_key
from cleanroom.datasets.sources import plain_format, write_plain
from cleanroom.errors import (
    AttestationError,
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    DeserializationError,
    GovernanceError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    OperationalError,
    RateLimitedError,
    RollbackError,
)
from cleanroom.fs import atomic_path
from cleanroom.governance import statements as st
from cleanroom.governance.outcomes import rows_bucket
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party
from cleanroom.ledger.entries import Entry, TreeHead, verify_receipt
from cleanroom.ledger.merkle import MerkleTree, verify_consistency
from cleanroom.ledger.verify import VerifiedLedger, verify_entries, verify_export
from cleanroom.progress import NoProgress, Progress
from cleanroom.service.auth import sign_request
from cleanroom.wire import WireModel, parse_model, read_json_file

__all__ = [
    "HEADS_FILE",
    "PIN_FILE",
    "SERVICE_IDENTITY_FILE",
    "STATE_DIR",
    "Audit",
    "Client",
    "Room",
    "RoomInfo",
    "ServiceIdentityError",
    "ServiceRotation",
    "sign_service_rotation",
    "verify_prefix_export",
]

STATE_DIR = "state"  # inside a keystore directory

ServiceKey = PublicIdentity | ServiceRotation | dict[str, Any] | Path

_ERRORS: dict[int, type[CleanroomError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: AuthorizationError,
    404: NotFoundError,
    409: GovernanceError,
    429: RateLimitedError,
    422: DeserializationError,
}


class _Signer(httpx.Auth):
    requires_request_body = True

    def __init__(self, party: Party) -> None:
        self.party = party

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sign_request(request, request.content, self.party)
        yield request


class Client:
    """One party's connection to one service.

    ``party`` is a keystore directory (loaded with ``passphrase``; the client's
    state is then kept in ``KEYSTORE/state``) or a loaded :class:`Party`
    (give ``state_dir`` to keep state across runs; without it the client
    remembers pins and tree heads only while it lives). ``service_key`` is the
    service's identity given out of band (a ``service.identity.json`` document,
    or a rotation statement from the pinned key); without it the key the
    service presents is pinned on first use.
    """

    def __init__(
        self,
        url: str,
        party: Party | str | os.PathLike[str],
        *,
        state_dir: Path | None = None,
        service_key: ServiceKey | None = None,
        passphrase: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(party, Party):
            keystore = Path(party)
            party = Party.load(keystore, passphrase=passphrase)
            state_dir = state_dir if state_dir is not None else keystore / STATE_DIR
        self.url = url.rstrip("/")
        self.party = party
        self.state_dir = state_dir
        self.known = ClientState(party, state_dir)
        given, rotations = _service_key(service_key)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._auth = _Signer(party)
        try:
            presented = self._call("GET", "/v1/service", auth=False)
            self.pin: Pin = self.known.trust(self.url, presented, given=given, rotations=rotations)
        except BaseException:
            self._http.close()
            raise
        self.service = self.pin.identity

    def __repr__(self) -> str:
        return f"Client({self.url!r}, as {self.party.name})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        auth: bool = True,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method, path, json=json_body, params=params, auth=self._auth if auth else None
            )
        except httpx.HTTPError as exc:
            raise OperationalError(f"cannot reach the service at {self.url}: {exc}") from exc
        return _result(response)

    # -- rooms ------------------------------------------------------------------------

    def rooms(self) -> list[RoomInfo]:
        return [RoomInfo(**r) for r in self._call("GET", "/v1/rooms")]

    def room(self, room_id: str) -> Room:
        """A handle on a room; refused at once if the room was last seen under a
        service key this service's pin does not cover."""
        self.known.check_room(room_id, self.pin, self.url)
        return Room(self, room_id)

    def create_room(
        self,
        name: str,
        members: Sequence[tuple[dict[str, Any] | Path, Sequence[str]]],
        constitution: dict[str, Any] | None = None,
    ) -> Room:
        """Create a room; ``members`` are (identity document or file, roles), yourself included."""
        room_id = st.new_room_id()
        documents = [(_identity_document(m), list(roles)) for m, roles in members]
        token = st.room_create(
            self.party, room_id, name=name, members=documents, constitution=constitution
        )
        self._call("POST", "/v1/rooms", json_body={"statement": token})
        room = Room(self, room_id)
        room.tree_head()
        return room


def _service_key(key: ServiceKey | None) -> tuple[PublicIdentity | None, list[ServiceRotation]]:
    """An out-of-band service key: an identity (to pin or match), or a rotation."""
    if key is None:
        return None, []
    parsed: PublicIdentity | ServiceRotation
    if isinstance(key, Path):
        parsed = parse_service_key(read_json_file(key, what="service key file"))
    elif isinstance(key, dict):
        parsed = parse_service_key(key)
    else:
        parsed = key
    if isinstance(parsed, ServiceRotation):
        return None, [parsed]
    return parsed, []


def _identity_document(member: dict[str, Any] | Path) -> dict[str, Any]:
    """A member's self-signed identity document (its signature goes on the ledger)."""
    if isinstance(member, Path):
        document: dict[str, Any] = json.loads(member.read_text())
        PublicIdentity.from_document(document)
        return document
    return member


def _result(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json() if response.content else None
    try:
        problem = response.json()
        detail = problem.get("detail") or problem.get("title") or response.reason_phrase
    except ValueError:
        detail = response.reason_phrase
    error = _ERRORS.get(response.status_code)
    if error is None:
        raise OperationalError(f"the service answered {response.status_code}: {detail}")
    raise error(str(detail))


@dataclass(frozen=True)
class RoomInfo:
    room: str
    name: str
    status: str
    contract_version: int
    you: str


class Room:
    """One room, seen by one party. Every write is a statement this party signs."""

    def __init__(self, client: Client, room_id: str) -> None:
        self.client = client
        self.id = room_id
        self.audit = Audit(self)

    def __repr__(self) -> str:
        return f"Room({self.id}, as {self.client.party.name})"

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.client._call("GET", f"/v1/rooms/{self.id}")
        return state

    def proposals(self) -> list[dict[str, Any]]:
        proposals: list[dict[str, Any]] = self.client._call("GET", f"/v1/rooms/{self.id}/proposals")
        return proposals

    @property
    def members(self) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = self.state()["members"]
        return members

    def _submit(self, *tokens: str) -> list[dict[str, Any]]:
        last = self.client.known.last(self.id)
        result = self.client._call(
            "POST",
            f"/v1/rooms/{self.id}/statements",
            json_body={"statements": list(tokens)},
            params={"known": last.size} if last is not None else None,
        )
        receipts = [verify_receipt(r, self.client.service) for r in result["receipts"]]
        for receipt, token in zip(receipts, tokens, strict=True):
            if receipt.entry.statement != token or receipt.room != self.id:
                raise IntegrityError("the service's receipt is for another statement")
        self._observe(receipts[-1].tree_head, result.get("consistency"))
        entries: list[dict[str, Any]] = result["entries"]
        return entries

    def _observe(self, head: TreeHead, given: dict[str, Any] | None = None) -> None:
        """Accept ``head`` only if it extends the last head seen; a proof the
        service sent along is used when it is for exactly these sizes."""

        def proof(old: int, new: int) -> list[bytes]:
            if given is not None and (given.get("old"), given.get("new")) == (old, new):
                return [bytes.fromhex(h) for h in given["proof"]]
            answer = self.client._call(
                "GET", f"/v1/rooms/{self.id}/consistency", params={"old": old, "new": new}
            )
            return [bytes.fromhex(h) for h in answer["proof"]]

        self.client.known.observe(head, self.client.pin, self.client.url, proof)

    def tree_head(self) -> TreeHead:
        token = self.client._call("GET", f"/v1/rooms/{self.id}/tree-head")["tree_head"]
        head = TreeHead.verify(token, self.client.service, room=self.id)
        self._observe(head)
        return head

    def accept(self, invitation: str | None = None) -> None:
        """Accept membership (of the room, or of the add_member proposal ``invitation``;
        by default this party's own invitation)."""
        invitation = invitation or self.invitation()
        self._submit(st.member_accept(self.client.party, self.id, invitation))

    def decline(self, invitation: str | None = None) -> None:
        """Turn this party's invitation down (a signed ``member.decline``). The room
        then no longer lists it, no statement of the room can use this party, and a
        room still being formed can never become active."""
        invitation = invitation or self.invitation()
        self._submit(st.member_decline(self.client.party, self.id, invitation))

    def invitation(self) -> str:
        """The digest of the statement that invited this party: the latest accepted
        add_member proposal naming it, or else the room's ``room.create``."""
        me = self.client.party.fingerprint
        for proposal in reversed(self.proposals()):
            action = proposal["action"]
            if proposal["status"] != "accepted" or action.get("type") != "add_member":
                continue
            try:
                named = PublicIdentity.from_document(action.get("identity")).fingerprint
            except CleanroomError:
                continue
            if named == me:
                found: str = proposal["id"]
                return found
        first = self.client._call(
            "GET", f"/v1/rooms/{self.id}/entries", params={"start": 0, "limit": 1}
        )["entries"][0]
        return st.statement_digest(first["statement"])

    def propose(self, action: dict[str, Any]) -> str:
        token = st.propose(self.client.party, self.id, action)
        self._submit(token)
        return st.statement_digest(token)

    def approve(self, proposal: str) -> None:
        self._submit(st.vote(self.client.party, self.id, proposal, approve=True))

    def reject(self, proposal: str) -> None:
        self._submit(st.vote(self.client.party, self.id, proposal, approve=False))

    def withdraw(self, proposal: str) -> None:
        self._submit(st.withdraw(self.client.party, self.id, proposal))

    def revoke_consent(self, dataset: str) -> None:
        self._submit(st.revoke_consent(self.client.party, self.id, dataset))

    def publish_dataset(
        self,
        source: Any,
        *,
        schema: Schema | Path,
        name: str,
        progress: Progress | None = None,
        release_to: Sequence[str] = ("sev-snp", "tdx"),
        measurements: Sequence[str] | None = None,
        rule: dict[str, Any] | None = None,
        release: Literal["owner", "broker"] = "owner",
        key_vault: Path | None = None,
    ) -> str:
        """Seal ``source`` locally, propose its registration, upload the ciphertext,
        and record how its data key is released.

        Returns the proposal id; the dataset is registered once its approvers
        approve. ``release="owner"`` (the default): the data key stays on this
        machine, in the key vault (``key_vault``, by default ``data-keys`` in
        the client's state directory), and this owner's key agent
        (``cleanroom keys serve``) releases it to each attested enclave itself.
        ``release="broker"``: the key is deposited sealed to the service's
        attested key broker, once its evidence checks out against the room's
        contract (so the contract must already approve a measurement), and the
        broker releases it on the owner's behalf; a copy stays in the vault (if
        this client has one) to re-deposit when the broker restarts with a new
        key (:meth:`redeposit`). Either way keys go only to
        enclaves on the ``release_to`` platforms (add ``"insecure-virtual"``
        explicitly for development rooms) whose measurement the room approved
        (and, if given, is in ``measurements``). ``rule`` is the dataset's
        analysis rule (see docs/privacy.md); without one, only analyses its
        owner approves by vote may read it.
        """
        vault = (
            self._vault(key_vault)
            if release == "owner" or key_vault is not None or self.client.state_dir is not None
            else None
        )
        declared = schema if isinstance(schema, Schema) else Schema.load(schema)
        policy = {
            "platforms": list(release_to),
            "measurements": list(measurements) if measurements is not None else None,
        }
        if release == "broker":  # refused before anything is sealed, proposed or uploaded
            self._checked_broker(policy)
        with tempfile.TemporaryDirectory(prefix="cleanroom-publish-") as work:
            sealed = seal_dataset(
                source,
                schema=declared,
                owner=self.client.party,
                output=Path(work) / "sealed",
                name=name,
                progress=progress,
            )
            manifest = json.loads((sealed.directory / MANIFEST_FILE).read_text())
            key = unseal_key(sealed.directory, sealed.manifest, self.client.party)
            action: dict[str, Any] = {"type": "register_dataset", "manifest": manifest}
            if rule is not None:
                action["rule"] = rule
            if vault is not None:  # kept before anything is proposed: never a dataset without key
                vault.keep(self.id, name, canonical_digest(manifest), key)
            proposal = self.propose(action)
            self.upload(sealed.directory / DATA_FILE, progress=progress)
            if release == "broker":
                self._deposit(name, canonical_digest(manifest), key, policy)
            else:
                self.keep_key_at_home(name, manifest, release_to, measurements)
        return proposal

    def _vault(self, directory: Path | None) -> KeyVault:
        if directory is not None:
            return KeyVault(self.client.party, directory)
        if self.client.state_dir is None:
            raise ValueError(
                "owner-held release keeps the data key on this machine: give key_vault=, "
                "or open the client from a keystore directory"
            )
        return KeyVault(self.client.party, self.client.state_dir / VAULT_DIR)

    def keep_key_at_home(
        self,
        dataset: str,
        manifest: dict[str, Any],
        platforms: Sequence[str],
        measurements: Sequence[str] | None = None,
    ) -> None:
        """Record that this owner's key agent releases the key of a dataset version
        itself (a ``key.deposit`` statement with no key), with its release policy."""
        body = {
            "dataset": dataset,
            "manifest": canonical_digest(manifest),
            "release": "owner",
            "policy": {
                "platforms": list(platforms),
                "measurements": list(measurements) if measurements is not None else None,
            },
        }
        self._submit(st.sign_statement(self.client.party, self.id, "key.deposit", body))

    def deposit_key(
        self,
        dataset: str,
        manifest: dict[str, Any],
        key: bytes,
        platforms: Sequence[str],
        measurements: Sequence[str] | None = None,
    ) -> None:
        """Deposit a dataset version's data key with the service's attested key
        broker, with a release policy (a ``key.deposit`` statement; a new one
        replaces it). The broker's evidence must bind a nonce chosen here and
        pass the room's contract (from the verified ledger) and this policy;
        only then is the key sealed to the broker's key."""
        policy = {
            "platforms": list(platforms),
            "measurements": list(measurements) if measurements is not None else None,
        }
        self._deposit(dataset, canonical_digest(manifest), key, policy)

    def _deposit(self, dataset: str, digest: str, key: bytes, policy: dict[str, Any]) -> None:
        offer, broker = self._checked_broker(policy)
        body = {
            "dataset": dataset,
            "manifest": digest,
            "release": "broker",
            "sealed_key": seal_deposit(key, broker, room=self.id, dataset=dataset, manifest=digest),
            "broker": offer,
            "policy": policy,
        }
        self._submit(st.sign_statement(self.client.party, self.id, "key.deposit", body))

    def _checked_broker(self, policy: dict[str, Any]) -> tuple[dict[str, Any], PublicIdentity]:
        """The service's key broker, with evidence binding a nonce chosen here, checked
        against the room's contract (from the verified ledger) and ``policy``."""
        state = self.audit.verify().state
        nonce = b64url_encode(os.urandom(24))
        offer = self.client._call("GET", "/v1/broker", params={"nonce": nonce})
        if not isinstance(offer, dict) or offer.get("nonce") != nonce:
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

    def stale_deposits(self) -> list[str]:
        """This owner's datasets whose current version is deposited with a key broker
        that is no longer the service's (it restarted, with a new key)."""
        return [d for d, _ in self._stale()]

    def _stale(self) -> list[tuple[str, str]]:
        state = self.audit.verify().state
        nonce = b64url_encode(os.urandom(24))
        current = PublicIdentity.from_document(
            self.client._call("GET", "/v1/broker", params={"nonce": nonce}).get("identity")
        ).fingerprint
        me = self.client.party.fingerprint
        return [
            (name, dataset.versions[-1].digest)
            for name, dataset in state.datasets.items()
            if dataset.owner == me
            and dataset.versions
            and (deposit := state.deposits.get(dataset.versions[-1].digest)) is not None
            and deposit.broker is not None
            and deposit.broker.fingerprint != current
        ]

    def redeposit(self, *, key_vault: Path | None = None) -> list[str]:
        """Deposit again, with the broker now running, every key of this owner's
        datasets still sealed to a broker that restarted (its old key is gone, so
        those deposits are stale and jobs on them wait). The keys come from this
        owner's vault; the release policy stays. Returns the datasets re-deposited."""
        vault = self._vault(key_vault)
        state = self.audit.verify().state
        done = []
        for name, digest in self._stale():
            deposit = state.deposits[digest]
            policy = {
                "platforms": sorted(deposit.platforms),
                "measurements": sorted(deposit.measurements)
                if deposit.measurements is not None
                else None,
            }
            self._deposit(name, digest, vault.open(self.id, name, digest), policy)
            done.append(name)
        return done

    def upload(self, path: Path, progress: Progress | None = None) -> None:
        """Stream a sealed dataset's ciphertext; the service checks it against the manifest."""
        self.put_file(path, f"/v1/rooms/{self.id}/blobs/{{digest}}", progress)

    def put_file(self, path: Path, route: str, progress: Progress | None = None) -> None:
        """Stream ``path`` to ``route`` (``{digest}`` is replaced by its SHA-256)."""
        digest, size = sha256_file(path)
        progress = progress or NoProgress()
        progress.start(f"Uploading {path.name}", size, "bytes")
        with path.open("rb") as fh:
            request = self.client._http.build_request(
                "PUT",
                route.replace("{digest}", digest),
                content=_chunks(fh, progress),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            sign_request(request, None, self.client.party, body_sha256=digest)
            try:
                response = self.client._http.send(request)
            except httpx.HTTPError as exc:
                raise OperationalError(f"upload failed: {exc}") from exc
        _result(response)

    def download(
        self,
        digest: str,
        target: Path,
        progress: Progress | None = None,
        *,
        route: str | None = None,
    ) -> None:
        """Stream a dataset's ciphertext to ``target``; it appears only if its digest matches."""
        progress = progress or NoProgress()
        request = self.client._http.build_request(
            "GET", route or f"/v1/rooms/{self.id}/blobs/{digest}"
        )
        with atomic_path(Path(target)) as tmp:
            try:
                response = self.client._http.send(request, auth=self.client._auth, stream=True)
            except httpx.HTTPError as exc:
                raise OperationalError(f"download failed: {exc}") from exc
            try:
                if not response.is_success:
                    response.read()
                    _result(response)
                size = int(response.headers.get("Content-Length", "0")) or None
                progress.start(f"Downloading {digest[:12]}", size, "bytes")
                with tmp.open("wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                        progress.advance(len(chunk))
            except httpx.HTTPError as exc:
                raise OperationalError(f"download failed: {exc}") from exc
            finally:
                response.close()
            if sha256_file(tmp)[0] != digest:
                raise IntegrityError("the downloaded ciphertext does not match its digest")

    def budgets(self) -> dict[str, dict[str, float] | None]:
        """Each dataset's privacy budget: epsilon, delta, spent, remaining (None: no budget)."""
        return {d["name"]: d["budget"] for d in self.state()["datasets"]}

    # -- jobs ----------------------------------------------------------------------------

    def run_job(self, analysis: str) -> str:
        """Ask for an accepted analysis to run; returns the job id. The service's job
        runner starts an enclave, which must attest before it gets any key."""
        # the digest signed is the one the verified ledger approved, never the service's word
        found = self.audit.verify().state.analyses.get(analysis)
        if found is None:
            raise NotFoundError(f"no analysis {analysis!r} in this room")
        token = st.request_job(self.client.party, self.id, analysis, found.digest)
        self._submit(token)
        return st.statement_digest(token)

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.client._call("GET", f"/v1/rooms/{self.id}/jobs")
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.client._call("GET", f"/v1/rooms/{self.id}/jobs/{job_id}")
        return job

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.2,
        on_update: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """The job's view once it succeeded or failed; raises if ``timeout`` passes.
        ``on_update`` sees each view while it waits (``waiting_for`` names the data
        owners whose key agents have not released yet)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed"):
                return job
            if on_update is not None:
                on_update(job)
            if time.monotonic() > deadline:
                waiting = job.get("waiting_for") or []
                detail = f", waiting for {', '.join(waiting)}" if waiting else ""
                raise OperationalError(f"job {job_id[:12]}... is still {job['status']}{detail}")
            time.sleep(poll)

    def job_result(
        self, job_id: str, output: Path, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Fetch, verify and decrypt a job's result into ``output`` (.csv or .parquet).

        Everything is checked against the verified ledger, never the service's
        word: the job's ``job.complete`` statement signed by the attested
        enclave names the ciphertext digest and the key sealed to this party.
        Returns the job's verified view (``assurance`` says whether hardware
        protected the run), with ``rows``: the exact row count decrypted (the
        ledger's ``output.rows`` is a bucket)."""
        output = Path(output)
        file_format = plain_format(output)
        state = self.audit.verify().state
        job = state.jobs.get(job_id)
        if job is None or job.status != "succeeded" or job.output is None:
            raise NotFoundError(f"job {job_id[:12]}... has no result on the ledger")
        me = self.client.party
        sealed = job.sealed_keys.get(me.fingerprint)
        if sealed is None:
            raise AuthorizationError("the result is not sealed to you: you are not its recipient")
        digest, key_id = job.output["sha256"], job.output["key_id"]
        context = result_context(self.id, job_id, digest, key_id)
        key = me.open_sealed(b64url_decode(sealed, what="sealed result key"), context)
        if key_id_of(key) != key_id:
            raise IntegrityError("the result key is not the one the enclave recorded")
        with tempfile.TemporaryDirectory(prefix="cleanroom-result-") as work:
            ciphertext = Path(work) / "result.parquet"
            route = f"/v1/rooms/{self.id}/jobs/{job_id}/result"
            self.download(digest, ciphertext, progress, route=route)
            table = read_encrypted(ciphertext, key)
        if rows_bucket(table.num_rows) != job.output["rows"]:  # the ledger shows a bucket
            raise IntegrityError("the decrypted result does not match the enclave's record")
        # a Parquet result carries where it came from, the assurance included
        marked = table.replace_schema_metadata(
            {
                "cleanroom.room": self.id,
                "cleanroom.job": job_id,
                "cleanroom.analysis": job.analysis,
                "cleanroom.assurance": job.assurance,
                "cleanroom.measurement": job.measurement,
            }
        )
        with atomic_path(output) as tmp:
            write_plain(marked, tmp, file_format)
        names = {fp: m.identity.name for fp, m in state.members.items()}
        return {**job.view(names), "rows": table.num_rows}


RESULT_PURPOSE = "cleanroom job result"


def result_context(room: str, job: str, sha256: str, key_id: str) -> SealContext:
    """What a job result's key is sealed to: this room, job, ciphertext and key."""
    return SealContext(
        RESULT_PURPOSE, {"room": room, "job": job, "ciphertext_sha256": sha256, "key_id": key_id}
    )


def _chunks(fh: Any, progress: Progress) -> Iterator[bytes]:
    while chunk := fh.read(1 << 20):
        progress.advance(len(chunk))
        yield chunk


class Audit:
    def __init__(self, room: Room) -> None:
        self.room = room

    def export(self) -> dict[str, Any]:
        export: dict[str, Any] = self.room.client._call("GET", f"/v1/rooms/{self.room.id}/export")
        return export

    def verify(self, document: dict[str, Any] | None = None) -> VerifiedLedger:
        """Verify the whole ledger offline (downloading it unless given) and check it
        extends what this party saw before (a rollback or fork raises).

        A removed member is given the ledger up to and including its removal (a
        ``prefix`` export, see :func:`verify_prefix_export`): that prefix is verified,
        and the later head it is proven consistent with must extend the heads seen."""
        document = document if document is not None else self.export()
        client = self.room.client
        if isinstance(document, dict) and "prefix" in document:
            verified, head, proof = verify_prefix_export(document, client.service)
            given = {"old": len(verified.entries), "new": head.size, "proof": proof}
            self.room._observe(head, given)
            return verified
        verified = verify_export(document, client.service, room=self.room.id)
        client.known.observe_verified(verified, client.pin, client.url)
        return verified


class _Prefix(WireModel):
    tree_head: StrictStr
    consistency: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(max_length=128)


class _PrefixExport(WireModel):
    format: Literal["cleanroom-ledger-export"]
    version: Literal[1]
    room: StrictStr
    service: dict[str, Any]
    entries: list[dict[str, Any]] = Field(min_length=1)
    tree_heads: list[StrictStr]
    prefix: _Prefix


def verify_prefix_export(
    document: Any, service: PublicIdentity
) -> tuple[VerifiedLedger, TreeHead, list[str]]:
    """Verify offline the ledger a removed member reads: its first entries (up to
    and including the member's removal) and a later signed tree head they are a
    prefix of. Returns the verified prefix, that head and the consistency proof.

    (1) the document is well formed and names the expected service; (2), (3) and
    (5) of :func:`cleanroom.ledger.verify_export` hold for the entries and the
    tree heads among them; (4) instead of a head covering exactly the entries,
    the RFC 9162 consistency proof from the entries' own root to the later head
    (signed by the service for this room, no older than the heads before it)
    verifies. So nothing in the prefix can be edited, dropped or reordered."""
    wire = parse_model(_PrefixExport, document, what="ledger export")  # (1)
    try:
        named = PublicIdentity.from_document(wire.service)
    except CleanroomError as exc:
        raise IntegrityError(f"the export's service identity is invalid: {exc}") from exc
    if named.fingerprint != service.fingerprint:
        raise IntegrityError("the export was made by a different ledger service than the key given")
    entries = [Entry.from_json(e) for e in wire.entries]
    verified = verify_entries(  # (2), (3), (5); (4) below
        wire.room, entries, wire.tree_heads, service, require_covered=False
    )
    head = TreeHead.verify(wire.prefix.tree_head, service, room=wire.room)  # (4)
    if head.time < verified.head.time:
        raise RollbackError("the export's latest tree head is older than the heads it holds")
    root = MerkleTree([e.leaf_hash for e in entries]).root()
    proof = [bytes.fromhex(h) for h in wire.prefix.consistency]
    verify_consistency(len(entries), head.size, root, head.root, proof)
    return verified, head, wire.prefix.consistency
