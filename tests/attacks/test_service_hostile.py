"""A hostile outsider, a member of another room and a malicious member against a
real ``cleanroom serve``: each test is one attack, asserting what the attacker
gets (nothing) and that honest requests still work."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyarrow as pa
import pytest

from cleanroom import Party, Schema, seal_dataset
from cleanroom.client import Client, Room
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.governance.statements import STATEMENT_TYP
from cleanroom.protocol.requests import sign_request
from cleanroom.service.local import local_service
from tests.test_jobs import _close_clients, _room  # noqa: F401 - the fixture closes agents

BODY_TIMEOUT_S = 2
MiB = 1 << 20


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    with local_service(data, env={"CLEANROOM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}) as url:
        yield url, data


@pytest.fixture
def members(service: tuple[str, Path], tmp_path: Path) -> Iterator[dict[str, Room]]:
    url, _ = service
    parties = {n: Party.create(n) for n in ("bank", "merchant")}
    clients = {n: Client(url, p, state_dir=tmp_path / n) for n, p in parties.items()}
    created = clients["bank"].create_room(
        "hostile",
        [
            (parties["bank"].identity_document(), ["data_provider", "result_recipient"]),
            (parties["merchant"].identity_document(), ["data_provider", "analyst"]),
        ],
    )
    rooms = {n: c.room(created.id) for n, c in clients.items()}
    rooms["merchant"].accept()
    yield rooms
    for opened in clients.values():
        opened.close()


def _signed(url: str, party: Party, method: str, path: str, body: bytes = b"") -> httpx.Request:
    request = httpx.Request(
        method, f"{url}{path}", content=body, headers={"Content-Type": "application/json"}
    )
    sign_request(request, body, party)
    return request


def _service_pid(data: Path) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(data).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no service process for {data}")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket) -> int | None:
    """The status of the answer on ``sock``, or None if it was closed without one."""
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, TimeoutError, OSError):
        return None
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def _flood(sock: socket.socket, total: int, *, chunked: bool) -> int:
    """Send up to ``total`` body bytes; returns how many went out before the
    service closed the connection."""
    sent, chunk = 0, b"[" * MiB
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
    try:
        while sent < total:
            sock.sendall(frame)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
        pass
    return sent


def _signature_headers(url: str, party: Party, method: str, path: str) -> dict[str, str]:
    request = httpx.Request(method, f"{url}{path}")
    sign_request(request, None, party, body_sha256="00" * 32)
    return {
        k: v for k, v in request.headers.items() if k.lower().startswith(("signature", "content-d"))
    }


def test_huge_bodies_are_refused_before_they_are_read(
    service: tuple[str, Path], members: dict[str, Room]
) -> None:
    url, data = service
    pid = _service_pid(data)
    before = _rss_mib(pid)
    path = f"/v1/rooms/{members['bank'].id}/statements"
    huge = 300 * MiB
    started = time.monotonic()
    # an outsider announces 300 MiB: 413 before a byte of it is read
    with _connect(url) as sock:
        sock.sendall(_head("POST", path, {"Content-Length": str(huge)}))
        assert _status(sock) == 413
        assert _flood(sock, huge, chunked=False) < huge
    # an outsider streams 300 MiB chunked, unsigned: 401, connection closed
    with _connect(url) as sock:
        sock.sendall(_head("POST", path, {"Transfer-Encoding": "chunked"}))
        assert _flood(sock, huge, chunked=True) < huge
        assert _status(sock) in (401, None)
    # a member signs the headers and streams 300 MiB: cut off at the route's limit
    signed = _signature_headers(url, members["merchant"].client.party, "POST", path)
    with _connect(url) as sock:
        sock.sendall(_head("POST", path, {**signed, "Transfer-Encoding": "chunked"}))
        assert _flood(sock, huge, chunked=True) < huge
        assert _status(sock) in (413, None)
    assert time.monotonic() - started < 30
    assert _rss_mib(pid) - before < 64, "the service buffered an attacker's body"
    assert members["bank"].state()["status"] == "active"  # honest requests still work


def test_slow_bodies_are_cut_off(service: tuple[str, Path], members: dict[str, Room]) -> None:
    url, _ = service
    path = f"/v1/rooms/{members['bank'].id}/statements"
    signed = _signature_headers(url, members["merchant"].client.party, "POST", path)
    for headers, expected in (({}, 401), (signed, 408)):
        with _connect(url) as sock:
            sock.sendall(_head("POST", path, {**headers, "Content-Length": "1000"}))
            sock.settimeout(0.5)
            started, status, closed = time.monotonic(), None, False
            while time.monotonic() - started < 5 * BODY_TIMEOUT_S + 10:
                try:
                    sock.sendall(b"[")  # one byte every half second
                except OSError:
                    closed = True
                    break
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
                if answer.startswith(b"HTTP/1.1 "):
                    status = int(answer.split(b" ", 2)[1])
                    assert b"connection: close" in answer.lower()
                if not answer or status is not None:
                    closed = True
                    break
            elapsed = time.monotonic() - started
        assert closed, "a slow body held the connection open"
        assert status in (expected, None)
        assert elapsed < 3 * BODY_TIMEOUT_S + 5
    assert members["merchant"].state()["status"] == "active"


def test_a_percent_encoded_path_verifies_as_signed(
    service: tuple[str, Path], members: dict[str, Room]
) -> None:
    url, _ = service
    bank = members["bank"].client.party
    room = members["bank"].id
    encoded = "".join(f"%{ord(c):02X}" for c in room)
    with httpx.Client() as http:
        answer = http.send(_signed(url, bank, "GET", f"/v1/rooms/{encoded}"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["room"] == room
        query = http.send(_signed(url, bank, "GET", f"/v1/rooms/{room}/entries?start=%30&limit=1"))
        assert query.status_code == 200, query.text
        assert len(query.json()["entries"]) == 1
        # a signature over one spelling does not authorize another
        moved = _signed(url, bank, "GET", f"/v1/rooms/{room}")
        respelled = httpx.Request("GET", f"{url}/v1/rooms/{encoded}", headers=moved.headers)
        assert http.send(respelled).status_code == 401
        # an outsider's correctly signed, encoded request is still only a stranger's
        stranger = Party.create("stranger")
        refused = http.send(_signed(url, stranger, "GET", f"/v1/rooms/{encoded}"))
        assert refused.status_code == 401


def test_a_request_captured_before_a_restart_is_not_replayable_after_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    bank = Party.create("bank")
    with local_service(data) as url:
        with Client(url, bank, state_dir=tmp_path / "bank") as client:
            room = client.create_room("r", [(bank.identity_document(), ["analyst"])]).id
        captured = _signed(url, bank, "GET", f"/v1/rooms/{room}")
        with httpx.Client() as http:
            assert http.send(captured).status_code == 200
    with local_service(data) as url:  # a new process, maybe a new port: same path, same headers
        replay = httpx.Request("GET", f"{url}/v1/rooms/{room}", headers=captured.headers)
        with httpx.Client() as http:
            answer = http.send(replay)
            assert answer.status_code == 401
            assert "replayed" in answer.json()["detail"]
            assert http.send(_signed(url, bank, "GET", f"/v1/rooms/{room}")).status_code == 200


def _bait(party: Party, digest: str, tmp: Path) -> dict[str, object]:
    """A validly signed manifest for a dataset named ``bait`` whose ciphertext
    claims to be ``digest`` (someone else's blob)."""
    schema = Schema.from_json(
        {"identity_column": "id", "columns": [{"name": "id", "type": "string", "nullable": False}]}
    )
    sealed = seal_dataset(
        pa.table({"id": ["x"]}), schema=schema, owner=party, output=tmp / "bait", name="bait"
    )
    payload = json.loads(json.dumps(sealed.manifest.payload()))
    payload["ciphertext"]["sha256"] = digest
    return party.sign_document(payload, typ="cleanroom-dataset-manifest+jws")


def test_a_bait_manifest_does_not_open_someone_elses_result(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = service
    rooms = _room(url, tmp_path)
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    result = view["output"]["sha256"]  # on the ledger for every member to see
    merchant = rooms["merchant"]  # a member, not a recipient of the result
    blob = f"/v1/rooms/{merchant.id}/blobs/{result}"

    def fetch(room: Room, path: str) -> httpx.Response:
        return room.client._transport.http.get(path, auth=room.client._transport.auth)

    assert fetch(merchant, blob).status_code == 404  # before any bait
    bait = merchant.propose(
        {"type": "register_dataset", "manifest": _bait(merchant.client.party, result, tmp_path)}
    )
    answer = fetch(merchant, blob)  # the open proposal names the result's digest
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    for room in rooms.values():  # even once the room accepts the bait, a result stays a result
        view_ = next(p for p in room.proposals() if p["id"] == bait)
        me = room.client.party.name
        if view_["status"] == "open" and me in view_["approvers"] and me not in view_["approvals"]:
            room.approve(bait)
    assert fetch(merchant, blob).status_code in (404, 403)
    # a room of its own, where the attacker alone approves the bait
    own = merchant.client.create_room(
        "own", [(merchant.client.party.identity_document(), ["data_provider", "analyst"])]
    )
    own.approve(
        own.propose(
            {
                "type": "register_dataset",
                "manifest": _bait(merchant.client.party, result, tmp_path / "o"),
            }
        )
    )
    assert fetch(own, f"/v1/rooms/{own.id}/blobs/{result}").status_code in (404, 403)
    # the recipient still gets its result, members still get registered datasets
    out = tmp_path / "result.csv"
    rooms["bank"].download_result(job, out)
    assert out.exists()
    datasets = {d["name"]: d for d in rooms["bank"].state()["datasets"]}
    assert "bait" in datasets  # accepted, and still it opens nothing
    cards = datasets["transactions"]["versions"][0]["sha256"]
    merchant.download(cards, tmp_path / "cards.parquet")
    assert hashlib.sha256((tmp_path / "cards.parquet").read_bytes()).hexdigest() == cards


def test_deeply_nested_json_is_a_problem_not_a_crash(
    service: tuple[str, Path], members: dict[str, Room]
) -> None:
    url, _ = service
    deep = b"[" * 100_000 + b"]" * 100_000
    merchant = members["merchant"].client.party
    room = members["bank"].id
    job = "0" * 64
    targets = [
        ("POST", "/v1/rooms", merchant),
        ("POST", f"/v1/rooms/{room}/statements", merchant),
        ("POST", f"/v1/rooms/{room}/jobs/{job}/report", merchant),
        ("POST", f"/v1/rooms/{room}/jobs/{job}/challenge", None),
        ("POST", f"/v1/rooms/{room}/jobs/{job}/keys", None),
        ("POST", f"/v1/rooms/{room}/jobs/{job}/key-status", None),
    ]
    with httpx.Client() as http:
        for method, path, party in targets:
            for body in (deep, b'{"statements": ' + deep + b"}"):
                if party is None:
                    request = httpx.Request(
                        method,
                        f"{url}{path}",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                else:
                    request = _signed(url, party, method, path, body)
                answer = http.send(request)
                assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
        # the same nesting inside a statement the member signed itself
        statement = _token(merchant, deep)
        for path, body in (
            (f"/v1/rooms/{room}/statements", {"statements": [statement]}),
            ("/v1/rooms", {"statement": statement}),
        ):
            answer = http.send(_signed(url, merchant, "POST", path, json.dumps(body).encode()))
            assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
        assert http.send(_signed(url, merchant, "GET", f"/v1/rooms/{room}")).status_code == 200


def _token(party: Party, payload: bytes) -> str:
    """A statement JWS signed by ``party`` over arbitrary payload bytes."""
    header = json.dumps({"alg": "EdDSA", "kid": party.fingerprint, "typ": STATEMENT_TYP})
    signing_input = f"{b64url_encode(header.encode())}.{b64url_encode(payload)}"
    signature = party.signing_private.sign(signing_input.encode())
    return f"{signing_input}.{b64url_encode(signature)}"


HEADER_TIMEOUT_S = 2


def _trickle_head(url: str, *, first: bytes = b"", interval_s: float = 1.0) -> tuple[str, float]:
    """Open a connection, send ``first`` (whole requests, answered) and then a
    request head one byte every ``interval_s``, never finishing it. Returns how
    the service ended it (``408``, ``closed``, or ``open`` if it did not within
    five times the bound) and after how many seconds of trickling."""
    head = _head("POST", "/v1/rooms", {"Content-Length": "2", "X-Slow": "a" * 64})
    with _connect(url) as sock:
        if first:
            sock.sendall(first)
            assert _whole_answer(sock).startswith(b"HTTP/1.1 200 ")
        sock.settimeout(interval_s)
        started = time.monotonic()
        for byte in head[:-4]:  # the blank line that ends the head never comes
            if time.monotonic() - started > 5 * HEADER_TIMEOUT_S:
                return "open", time.monotonic() - started
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                answer = None
            except OSError:
                return "closed", time.monotonic() - started
            if answer is not None:
                outcome = answer.split(b" ", 2)[1].decode() if answer else "closed"
                return outcome, time.monotonic() - started
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return "closed", time.monotonic() - started
    return "open", time.monotonic() - started


def _whole_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, read to its last byte."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def test_slow_request_heads_are_cut_off(tmp_path: Path) -> None:
    """A request line and headers must arrive within ``header_timeout_s`` of the
    connection opening or of the previous answer: uvicorn itself sets no bound
    (its keep-alive timer starts only after an answer and stops at the first
    byte of the next request), so a client sending one byte a second held a
    connection, and a server task, for as long as it liked."""
    env = {"CLEANROOM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    with local_service(tmp_path / "data", env=env) as url:
        health = _head("GET", "/v1/health", {})
        cases = {
            "silent": lambda: _trickle_head(url, interval_s=5 * HEADER_TIMEOUT_S + 1),
            "fresh": lambda: _trickle_head(url),
            "keep-alive": lambda: _trickle_head(url, first=health),
        }
        with ThreadPoolExecutor(len(cases)) as pool:
            running = {name: pool.submit(case) for name, case in cases.items()}
            # meanwhile a head that arrives in pieces within the bound is served
            with _connect(url) as sock:
                for piece in (health[:5], health[5:12], health[12:]):
                    sock.sendall(piece)
                    time.sleep(HEADER_TIMEOUT_S / 4)
                assert _whole_answer(sock).startswith(b"HTTP/1.1 200 ")
            ended = {name: future.result() for name, future in running.items()}
        for name, (outcome, seconds) in ended.items():
            assert outcome in ("408", "closed"), (name, outcome, seconds)
            assert seconds < HEADER_TIMEOUT_S + 1.5, (name, outcome, seconds)
        # a connection that sent part of a request is told why; an idle one just closes
        assert ended["fresh"][0] == "408"
        assert ended["keep-alive"][0] == "408"
        assert ended["silent"][0] == "closed"
        assert httpx.get(f"{url}/v1/health").status_code == 200
