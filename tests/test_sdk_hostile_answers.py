"""A hostile or broken service cannot crash the SDK with a stray exception.

A real HTTP server (stdlib, in a thread) answers fixed bodies; each SDK call
that reads an answer is driven against a table of malformed answers and must
raise the project's error for it (DeserializationError for a malformed answer,
IntegrityError where a check of the service's word fails), naming what is
wrong, never KeyError/TypeError/ValueError/IndexError/AttributeError.
"""

# ruff: noqa: E501 - the table of cases reads best one case a line

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from cleanroom import Party
from cleanroom.client import Client, Room
from cleanroom.errors import (
    CleanroomError,
    DeserializationError,
    IntegrityError,
    NotFoundError,
    OperationalError,
)

ROOM = "e" * 32  # full ids (hex): used as given, without a look-up by name
JOB = "d" * 64


@dataclass
class Answers:
    """What the fake service answers, by (method, path): status and raw body."""

    table: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)

    def answer(self, method: str, path: str) -> tuple[int, bytes]:
        return self.table.get((method, path), (404, b'{"detail": "no such route"}'))


def _handler(answers: Answers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, body = answers.answer(self.command, urlsplit(self.path).path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _reply  # noqa: N815 - the stdlib's handler names

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[str, Answers]]:
    answers = Answers()
    ledger = Party.create("ledger")
    answers.table["GET", "/v1/service"] = (200, json.dumps(ledger.identity_document()).encode())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answers))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def room(service: tuple[str, Answers]) -> Iterator[Room]:
    url, _ = service
    with Client(url, Party.create("bank")) as client:
        yield client.room(ROOM)


def _body(document: Any) -> bytes:
    return document if isinstance(document, bytes) else json.dumps(document).encode()


Call = Callable[[Room], object]

R = f"/v1/rooms/{ROOM}"
CASES: list[tuple[str, str, str, Call, Any, type[CleanroomError], str]] = [
    # (case, method, path, call, body, error, words the message holds)
    ("rooms: not JSON", "GET", "/v1/rooms", lambda r: r.client.rooms(), b"<html>", DeserializationError, "not valid JSON"),
    ("rooms: an object", "GET", "/v1/rooms", lambda r: r.client.rooms(), {}, DeserializationError, "not a JSON array"),
    ("rooms: a field missing", "GET", "/v1/rooms", lambda r: r.client.rooms(), [{"room": "x"}], DeserializationError, "room 0 is invalid at name"),
    ("rooms: a wrong type", "GET", "/v1/rooms", lambda r: r.client.rooms(), [{"room": "x", "name": "n", "status": "active", "contract_version": "1", "you": "active"}], DeserializationError, "contract_version"),
    ("tree head: missing", "GET", f"{R}/tree-head", lambda r: r.tree_head(), {}, DeserializationError, "tree_head: Field required"),
    ("tree head: a number", "GET", f"{R}/tree-head", lambda r: r.tree_head(), {"tree_head": 5}, DeserializationError, "tree_head"),
    ("tree head: a list", "GET", f"{R}/tree-head", lambda r: r.tree_head(), [], DeserializationError, "tree-head is invalid"),
    ("tree head: not a JWS", "GET", f"{R}/tree-head", lambda r: r.tree_head(), {"tree_head": "x.y.z"}, IntegrityError, ""),
    ("tree head: truncated", "GET", f"{R}/tree-head", lambda r: r.tree_head(), b'{"tree_head": "ey', DeserializationError, "not valid JSON"),
    ("state: a list", "GET", R, lambda r: r.state(), [], DeserializationError, "not a JSON object"),
    ("members: not a list", "GET", R, lambda r: r.members, {"members": "all", "datasets": []}, DeserializationError, "members"),
    ("budgets: missing", "GET", R, lambda r: r.budgets(), {"members": [], "datasets": [{"name": "d"}]}, DeserializationError, "dataset 0 is invalid at budget"),
    ("budgets: a string", "GET", R, lambda r: r.budgets(), {"members": [], "datasets": [{"name": "d", "budget": {"epsilon": "1"}}]}, DeserializationError, "budget.epsilon"),
    ("proposals: an object", "GET", f"{R}/proposals", lambda r: r.proposals(), {"id": "p"}, DeserializationError, "not a JSON array"),
    ("proposals: no action", "GET", f"{R}/proposals", lambda r: r.invitation(), [{"id": "p", "status": "accepted"}], DeserializationError, "proposal 0 is invalid at action"),
    ("proposals: action a list", "GET", f"{R}/proposals", lambda r: r.proposals(), [{"id": "p", "status": "open", "action": []}], DeserializationError, "action"),
    ("jobs: an object", "GET", f"{R}/jobs", lambda r: r.jobs(), {}, DeserializationError, "not a JSON array"),
    ("jobs: no status", "GET", f"{R}/jobs", lambda r: r.jobs(), [{"id": JOB}], DeserializationError, "job 0 is invalid at status"),
    ("job: status a number", "GET", f"{R}/jobs/{JOB}", lambda r: r.job(JOB), {"id": JOB, "status": 3}, DeserializationError, "status"),
    ("job: another job", "GET", f"{R}/jobs/{JOB}", lambda r: r.job(JOB), {"id": "k" * 64, "status": "failed"}, IntegrityError, "another job"),
    ("job: waiting_for a string", "GET", f"{R}/jobs/{JOB}", lambda r: r.wait_job(JOB, timeout=0), {"id": JOB, "status": "requested", "waiting_for": "bank"}, DeserializationError, "waiting_for"),
    ("job: null", "GET", f"{R}/jobs/{JOB}", lambda r: r.job(JOB), None, DeserializationError, "not a JSON object"),
    ("export: a list", "GET", f"{R}/export", lambda r: r.audit.export(), [], DeserializationError, "not a JSON object"),
    ("export: garbage", "GET", f"{R}/export", lambda r: r.audit.verify(), {"format": 1}, DeserializationError, "ledger export"),
    ("broker: a list", "GET", "/v1/broker", lambda r: r._broker_offer("n" * 24), [], DeserializationError, "/v1/broker"),
    ("broker: nonce a number", "GET", "/v1/broker", lambda r: r._broker_offer("n" * 24), {"nonce": 5, "identity": {}}, DeserializationError, "nonce"),
    ("submit: nothing", "POST", f"{R}/statements", lambda r: r.withdraw("a" * 64), {}, DeserializationError, "entries: Field required"),
    ("submit: empty lists", "POST", f"{R}/statements", lambda r: r.withdraw("a" * 64), {"entries": [], "receipts": []}, DeserializationError, "at least 1"),
    ("submit: a receipt too many", "POST", f"{R}/statements", lambda r: r.withdraw("a" * 64), {"entries": [{}], "receipts": [{}, {}]}, IntegrityError, "2 receipts"),
    ("submit: a malformed receipt", "POST", f"{R}/statements", lambda r: r.withdraw("a" * 64), {"entries": [{}], "receipts": [{}]}, IntegrityError, "malformed receipt"),
    ("submit: a bad proof", "POST", f"{R}/statements", lambda r: r.withdraw("a" * 64), {"entries": [{}], "receipts": [{}], "consistency": {"old": 0, "new": 1, "proof": ["zz"]}}, DeserializationError, "consistency.proof.0"),
    ("create: another room", "POST", "/v1/rooms", lambda r: r.client.create_room("x", [(r.client.party.identity_document(), ["data_provider"])]), {"room": "other", "seq": 0, "status": "forming"}, IntegrityError, "another room"),
    ("create: seq a string", "POST", "/v1/rooms", lambda r: r.client.create_room("x", [(r.client.party.identity_document(), ["data_provider"])]), {"room": "other", "seq": "0", "status": "forming"}, DeserializationError, "seq"),
    ("error: a list as problem", "GET", f"{R}/jobs", lambda r: r.jobs(), (404, [1, 2]), NotFoundError, "Not Found"),
    ("error: HTML on 500", "GET", f"{R}/jobs", lambda r: r.jobs(), (500, b"<html>oops"), OperationalError, "500"),
    ("error: detail kept", "GET", f"{R}/jobs", lambda r: r.jobs(), (404, {"detail": "no room here"}), NotFoundError, "no room here"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "call", "body", "error", "words"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_a_malformed_answer_raises_the_projects_error(
    service: tuple[str, Answers],
    room: Room,
    method: str,
    path: str,
    call: Call,
    body: Any,
    error: type[CleanroomError],
    words: str,
) -> None:
    _, answers = service
    status, document = body if isinstance(body, tuple) else (200, body)
    answers.table[method, path] = (status, _body(document))
    try:
        with pytest.raises(error) as raised:
            call(room)
    finally:
        del answers.table[method, path]
    assert type(raised.value) is error
    assert words in str(raised.value)


def test_a_service_identity_that_is_not_an_object_is_refused(
    service: tuple[str, Answers],
) -> None:
    url, answers = service
    good = answers.table["GET", "/v1/service"]
    for body in (b"[]", b"not json", b'"ledger"'):
        answers.table["GET", "/v1/service"] = (200, body)
        try:
            with pytest.raises(DeserializationError, match="/v1/service"):
                Client(url, Party.create("bank"))
        finally:
            answers.table["GET", "/v1/service"] = good
