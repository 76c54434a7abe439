"""The service as a real subprocess over HTTP, driven by three parties through
the SDK, and attacked with raw requests."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from cleanroom import Party, Schema, seal_dataset
from cleanroom.client import Client, Room
from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    GovernanceError,
    InvalidInputError,
    OperationalError,
    RollbackError,
)
from cleanroom.protocol.requests import sign_request
from cleanroom.service.app import ROUTES
from cleanroom.service.local import local_service
from tests.service_fixture import postgres_schema

SCHEMA = Schema.from_json(
    {
        "identity_column": "card_id",
        "columns": [
            {"name": "card_id", "type": "string", "nullable": False},
            {"name": "amount", "type": "int64", "min": 0},
        ],
    }
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The service on the embedded store, then on PostgreSQL (a fresh schema)."""
    data = tmp_path_factory.mktemp(request.param) / "data"
    if request.param == "sqlite":
        with local_service(data) as url:
            yield url, data
        return
    with (
        postgres_schema() as (database_url, schema),
        local_service(
            data, database_url=database_url, env={"CLEANROOM_DATABASE_SCHEMA": schema}
        ) as url,
    ):
        yield url, data


@pytest.fixture
def parties() -> dict[str, Party]:
    return {n: Party.create(n) for n in ("bank", "merchant", "analyst")}


OPEN: list[Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def client(url: str, party: Party, state_dir: Path | None = None) -> Client:
    opened = Client(url, party, state_dir=state_dir)
    OPEN.append(opened)
    return opened


def make_room(url: str, parties: dict[str, Party], tmp: Path) -> dict[str, Room]:
    clients = {n: client(url, p, tmp / n) for n, p in parties.items()}
    roles = {
        "bank": ["data_provider", "result_recipient"],
        "merchant": ["data_provider"],
        "analyst": ["analyst"],
    }
    room = clients["bank"].create_room(
        "offers", [(parties[n].identity_document(), roles[n]) for n in parties]
    )
    rooms = {n: clients[n].room(room.id) for n in parties}
    rooms["merchant"].accept()
    rooms["analyst"].accept()
    return rooms


def table(rows: int) -> pa.Table:
    return pa.table({"card_id": [f"card-{i}" for i in range(rows)], "amount": list(range(rows))})


def test_three_parties_govern_a_room(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    url, _ = service
    rooms = make_room(url, parties, tmp_path)
    assert rooms["bank"].state()["status"] == "active"
    # each owner publishes: sealed locally, proposed, ciphertext uploaded
    cards = rooms["bank"].publish_dataset(table(50), schema=SCHEMA, name="cards")
    rooms["bank"].approve(cards)
    customers = rooms["merchant"].publish_dataset(table(20), schema=SCHEMA, name="customers")
    rooms["merchant"].approve(customers)
    rooms["bank"].approve(customers)
    state = rooms["analyst"].state()
    assert [d["name"] for d in state["datasets"]] == ["cards", "customers"]
    # the ciphertext downloads intact; it is not readable without the key
    digest = state["datasets"][0]["versions"][0]["sha256"]
    rooms["analyst"].download(digest, tmp_path / "cards.parquet")
    assert b"card-1" not in (tmp_path / "cards.parquet").read_bytes()
    # an analysis: both owners and the recipient approve; then a veto on a second one
    analysis = {
        "type": "add_analysis",
        "name": "segments",
        "language": "sql",
        "text": "SELECT count(*) FROM cards JOIN customers USING (card_id)",
        "inputs": ["cards", "customers"],
        "recipients": [parties["bank"].fingerprint],
    }
    pid = rooms["analyst"].propose(analysis)
    rooms["bank"].approve(pid)
    rooms["merchant"].approve(pid)
    vetoed = rooms["analyst"].propose({**analysis, "name": "rows"})
    rooms["merchant"].reject(vetoed)
    with pytest.raises(GovernanceError, match="rejected, not open"):
        rooms["bank"].approve(vetoed)
    # any owner stops its data being used at once
    rooms["merchant"].revoke_consent("customers")
    state = rooms["bank"].state()
    assert [d["consent"] for d in state["datasets"]] == [True, False]
    assert state["proposals"] == {
        "open": 0,
        "accepted": 3,
        "rejected": 1,
        "withdrawn": 0,
        "expired": 0,
    }
    # every member re-derives the same state from the ledger, offline
    digests = {n: r.audit.verify().state.digest() for n, r in rooms.items()}
    assert len(set(digests.values())) == 1


def test_members_see_only_their_rooms(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    url, _ = service
    rooms = make_room(url, parties, tmp_path)
    outsider = client(url, Party.create("outsider"), tmp_path / "o")
    other = outsider.create_room("own", [(outsider.party.identity_document(), ["analyst"])])
    assert [r.room for r in outsider.rooms()] == [other.id]
    assert rooms["bank"].id not in [r.room for r in outsider.rooms()]
    with pytest.raises(AuthorizationError, match="not a member"):
        outsider.room(rooms["bank"].id).state()
    with pytest.raises(AuthorizationError, match="not a member"):
        outsider.room("0" * 32).state()  # a room that does not exist looks the same
    with pytest.raises(AuthorizationError, match="not a member"):
        rooms["bank"].client.room(other.id).state()


def _raw(
    url: str, party: Party | None, method: str, path: str, body: bytes = b"", **sign: object
) -> httpx.Request:
    request = httpx.Request(
        method, f"{url}{path}", content=body, headers={"Content-Type": "application/json"}
    )
    if party is not None:
        sign_request(request, body, party, **sign)  # type: ignore[arg-type]
    return request


def test_request_attacks(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    url, _ = service
    rooms = make_room(url, parties, tmp_path)
    bank = parties["bank"]
    path = f"/v1/rooms/{rooms['bank'].id}"
    with httpx.Client() as http:

        def send(request: httpx.Request) -> httpx.Response:
            return http.send(request)

        ok = _raw(url, bank, "GET", path)
        assert send(ok).status_code == 200
        replayed = send(ok)  # the very same signed request again
        assert replayed.status_code == 401
        assert "replayed" in replayed.json()["detail"]
        unsigned = send(_raw(url, None, "GET", path))
        assert unsigned.status_code == 401
        assert unsigned.headers["content-type"] == "application/problem+json"
        stale = send(_raw(url, bank, "GET", path, now=lambda: time.time() - 3600))
        assert "stale" in stale.json()["detail"]
        future = send(_raw(url, bank, "GET", path, now=lambda: time.time() + 3600))
        assert future.status_code == 401
        # a stranger signs, claiming the bank's key id
        forged = _raw(
            url,
            Party("bank", Party.create("x").signing_private, bank.encryption_private),
            "GET",
            path,
        )
        forged.headers["Signature-Input"] = forged.headers["Signature-Input"].replace(
            forged.headers["Signature-Input"].split('keyid="')[1].split('"')[0], bank.fingerprint
        )
        assert send(forged).status_code == 401
        # the body is swapped after signing
        body = json.dumps({"statements": ["x" * 20]}).encode()
        swapped = _raw(url, bank, "POST", f"{path}/statements", body)
        swapped = httpx.Request(
            "POST", swapped.url, headers=swapped.headers, content=body.replace(b"x", b"y")
        )
        assert send(swapped).status_code == 401
        # signed for another path
        moved = _raw(url, bank, "GET", path)
        moved = httpx.Request("GET", f"{url}/v1/rooms", headers=moved.headers)
        assert send(moved).status_code == 401
        # an unknown key
        assert send(_raw(url, Party.create("nobody"), "GET", "/v1/rooms")).status_code == 401
        # no stack traces or internal paths, ever
        for response in (unsigned, stale, replayed):
            text = response.text
            assert "Traceback" not in text
            assert "/work/" not in text
            assert "site-packages" not in text


def test_statements_must_be_the_callers_own(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    url, _ = service
    rooms = make_room(url, parties, tmp_path)
    from cleanroom.governance import propose  # noqa: PLC0415

    token = propose(
        parties["merchant"], rooms["bank"].id, {"type": "set_measurements", "measurements": []}
    )
    with pytest.raises(AuthorizationError, match="signed yourself"):
        rooms["bank"]._submit(token)


def test_uploads_are_checked_and_atomic(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    url, data = service
    rooms = make_room(url, parties, tmp_path)
    bank = rooms["bank"]
    sealed = seal_dataset(
        table(30), schema=SCHEMA, owner=parties["bank"], output=tmp_path / "sealed", name="cards"
    )
    manifest = json.loads((sealed.directory / "manifest.json").read_text())
    bank.propose({"type": "register_dataset", "manifest": manifest})
    digest, size = sealed.manifest.sha256, sealed.manifest.size
    blob = data / "blobs" / digest

    def put(party: Party, content: bytes, announced: str = digest) -> httpx.Response:
        request = httpx.Request(
            "PUT", f"{url}/v1/rooms/{bank.id}/blobs/{announced}", content=content
        )
        sign_request(request, None, party, body_sha256=announced)
        with httpx.Client() as http:
            return http.send(request)

    good = (sealed.directory / "data.parquet").read_bytes()
    wrong = bytes([good[0] ^ 1]) + good[1:]
    cases = [
        (parties["bank"], wrong, 400, "do not match"),  # same size, other bytes
        (parties["bank"], good[:-5], 400, "ended after"),  # truncated
        (parties["bank"], good + b"x", 400, "longer than"),  # extended
        (parties["merchant"], good, 403, "manifest you proposed"),  # not the owner
        (parties["bank"], good, 403, "manifest you proposed", "b" * 64),  # unknown digest
    ]
    for case in cases:
        party, content, status, message = case[:4]
        response = put(party, content, *case[4:])  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
        assert not blob.exists()
        assert not [p for p in (data / "blobs").iterdir() if p.name.startswith(".")]
    assert put(parties["bank"], good).status_code == 201
    assert blob.stat().st_size == size
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"not a dataset")
    with pytest.raises(AuthorizationError, match="manifest you proposed"):
        bank.upload(stray)


def test_invalid_input_gets_problem_details(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    url, _ = service
    rooms = make_room(url, parties, tmp_path)
    bank = parties["bank"]
    with httpx.Client() as http:
        for body in (
            b"{",
            b'{"statements": []}',
            b'{"statements": ["short"]}',
            b"[]",
            b'{"statements": ["' + b"A" * 40 + b'"]}',
        ):
            request = _raw(url, bank, "POST", f"/v1/rooms/{rooms['bank'].id}/statements", body)
            response = http.send(request)
            assert 400 <= response.status_code < 500, body
            assert response.json()["status"] == response.status_code
    with pytest.raises(InvalidInputError):
        rooms["bank"].propose({"type": "no_such_action"})


def test_route_table_is_complete_and_pinned(service: tuple[str, Path]) -> None:
    url, _ = service
    spec = httpx.get(f"{url}/openapi.json").json()
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    listed = {(m, p) for m, p, _ in ROUTES if p not in ("/openapi.json", "/docs")}
    assert served == listed
    public = {(m, p) for m, p, who in ROUTES if who == "anyone"}
    assert public == {
        ("GET", "/v1/health"),
        ("GET", "/v1/service"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
    }
    operator = {(m, p) for m, p, who in ROUTES if who.startswith("the operator")}
    assert operator == {("GET", "/metrics")}  # 404 here: this service set no token
    launched = {(m, p) for m, p, who in ROUTES if who == "the enclave launched for the job"}
    wrong_token = {"launch_token": "x" * 16, "nonce": "n" * 43, "enclave": {}, "evidence": {}}
    for method, path in sorted(listed - public - operator):
        concrete = path.format(room="0" * 32, seq=0, digest="0" * 64, job="0" * 64)
        body = None
        if (method, path) in launched:  # no signature: a launch token proves the caller
            body = {
                k: v for k, v in wrong_token.items() if path.endswith("keys") or k == "launch_token"
            }
        response = httpx.request(method, f"{url}{concrete}", params={"old": 0, "new": 0}, json=body)
        assert response.status_code == 401, (method, path, response.text)


def test_restart_keeps_everything_and_rollback_is_caught(
    tmp_path: Path, parties: dict[str, Party]
) -> None:
    data = tmp_path / "data"
    with local_service(data) as url:
        rooms = make_room(url, parties, tmp_path)
        room_id = rooms["bank"].id
    snapshot = tmp_path / "snapshot"
    shutil.copytree(data, snapshot)
    with local_service(data) as url:
        bank = client(url, parties["bank"], tmp_path / "bank")
        room = bank.room(room_id)
        assert room.state()["status"] == "active"
        pid = room.propose({"type": "set_measurements", "measurements": []})
        room.approve(pid)
        room.audit.verify()
    # the operator restores yesterday's data directory
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)
    with local_service(data) as url:
        bank = client(url, parties["bank"], tmp_path / "bank")
        with pytest.raises(RollbackError, match="rolled back"):
            bank.room(room_id).tree_head()
        with pytest.raises(AuthenticationError):
            client(url, Party.create("x")).rooms()


def test_regression_huge_positions_are_refused_not_500(
    service: tuple[str, Path], parties: dict[str, Party], tmp_path: Path
) -> None:
    """Found by schemathesis: ?start=2**62 overflowed SQLite and answered 500."""
    url, _ = service
    rooms = make_room(url, parties, tmp_path)
    with httpx.Client() as http:
        for path in (
            f"/v1/rooms/{rooms['bank'].id}/entries?start={2**62}",
            f"/v1/rooms/{rooms['bank'].id}/receipts/{2**62}",
            f"/v1/rooms/{rooms['bank'].id}/consistency?old=0&new={2**62}",
        ):
            response = http.send(_raw(url, parties["bank"], "GET", path))
            assert response.status_code == 422, (path, response.text)
    assert rooms["bank"].client._call(
        "GET", f"/v1/rooms/{rooms['bank'].id}/entries", params={"start": 2**53 - 1}
    ) == {"entries": []}


def test_a_service_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("a file where the data directory should be")
    with (
        pytest.raises(OperationalError, match="the service exited") as caught,
        local_service(not_a_directory, timeout_s=30),
    ):
        pass
    assert "cannot create data directory" in str(caught.value)  # the log came with it
