"""What the operator gets: access logs with nothing secret in them, Prometheus
metrics behind the operator's token, an offline /docs page, and configuration
errors as one readable line.

The service is the real app built from settings (:func:`build_app`), served by
uvicorn on a socket and driven through the SDK, whose every request is recorded
on its way out: the test then knows each signature, digest header and body the
service saw, and looks for them in the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import uvicorn

from cleanroom import Party, Schema
from cleanroom.client import Client
from cleanroom.protocol.requests import sign_request
from cleanroom.service.app import ROUTES, Service
from cleanroom.service.local import local_service
from cleanroom.service.metrics import BUCKETS, UNMATCHED
from cleanroom.service.observe import ACCESS_LOGGER, TEXT_FORMAT, JsonFormatter
from cleanroom.service.server import build_app
from cleanroom.service.settings import ConfigurationError, load_settings

TOKEN = "operator-" + "m" * 40
SCHEMA = Schema.from_json(
    {
        "identity_column": "card_id",
        "columns": [
            {"name": "card_id", "type": "string", "nullable": False},
            {"name": "amount", "type": "int64", "min": 0},
        ],
    }
)
SECRET_NONCE = "QUERYNONCE" + "Zq9" * 10  # sent only in a query string


class Recorder(httpx.HTTPTransport):
    """An httpx transport that keeps every secret-bearing part of what it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.signatures = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.signatures += "signature" in request.headers
        for name in ("signature", "signature-input", "content-digest", "authorization"):
            if name in request.headers:
                self.secrets.append(request.headers[name])
        if request.url.query:
            self.secrets.append(request.url.query.decode())
        if isinstance(request.stream, httpx.ByteStream):
            self.secrets.extend(_strings(request.read()))
        return super().handle_request(request)


def _strings(body: bytes) -> list[str]:
    """The long strings of a JSON body (statements, tokens), or the body itself."""
    try:
        document = json.loads(body)
    except ValueError:
        return [body.decode("latin-1")] if len(body) >= 16 else []
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 16:
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
    return found


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Running:
    url: str
    service: Service
    log: Captured
    recorder: Recorder = field(default_factory=Recorder)
    room: str = ""
    bank: Party = field(default_factory=lambda: Party.create("bank"))
    merchant: Party = field(default_factory=lambda: Party.create("merchant"))

    def lines(self) -> list[str]:
        """Every access record, formatted both ways the service can log it."""
        text, as_json = logging.Formatter(TEXT_FORMAT), JsonFormatter()
        return [f(r) for r in self.log.records for f in (text.format, as_json.format)]


@contextmanager
def serving(data: Path, **overrides: Any) -> Iterator[tuple[str, Service]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = load_settings(
        None, data_dir=data, port=port, key_broker=False, metrics_token=TOKEN, **overrides
    )
    app = build_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.service
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("ops")
    log = Captured()
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(log)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        with serving(tmp / "data") as (url, service):
            world = Running(url, service, log)
            _drive(world, tmp)
            yield world
    finally:
        logger.removeHandler(log)
        logger.setLevel(previous)


def _drive(world: Running, tmp: Path) -> None:
    """A room with two members, a dataset (statement, manifest, ciphertext upload,
    download), and raw requests with a query nonce and a forged signature."""
    clients = [
        Client(world.url, p, state_dir=tmp / p.name, transport=world.recorder)
        for p in (world.bank, world.merchant)
    ]
    try:
        bank, merchant = clients
        room = bank.create_room(
            "offers",
            [
                (world.bank.identity_document(), ["data_provider", "result_recipient"]),
                (world.merchant.identity_document(), ["analyst"]),
            ],
        )
        world.room = room.id
        merchant.room(room.id).accept()
        rows = pa.table({"card_id": [f"c{i}" for i in range(20)], "amount": list(range(20))})
        pid = room.publish_dataset(rows, schema=SCHEMA, name="cards")
        room.approve(pid)
        digest = room.state()["datasets"][0]["versions"][0]["sha256"]
        room.download(digest, tmp / "cards.bin")
        room.audit.verify()
        # the ciphertext itself, as it would look base64-encoded in a careless log
        ciphertext = (tmp / "cards.bin").read_bytes()
        world.recorder.secrets.append(ciphertext[:64].hex())
    finally:
        for opened in clients:
            opened.close()
    with httpx.Client(transport=world.recorder) as http:
        request = httpx.Request("GET", f"{world.url}/v1/broker", params={"nonce": SECRET_NONCE})
        sign_request(request, b"", world.bank)
        http.send(request)
        forged = httpx.Request("GET", f"{world.url}/v1/rooms/{world.room}")
        sign_request(forged, b"", Party.create("stranger"))
        http.send(forged)
        http.get(f"{world.url}/v1/rooms/not-a-room/../secret-path?token=abcdefabcdefabcdef")
        http.request("BREW", f"{world.url}/coffee")


ROUTE_TEMPLATES = {p for _, p, _ in ROUTES} | {UNMATCHED}
# a run of base64 or base64url characters long enough to be a signature, a
# statement or a body, that is not plain hex (ids and fingerprints are hex)
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{24,}")


def test_every_request_is_one_line_with_its_route_template(running: Running) -> None:
    records = running.log.records
    fields = [r.access for r in records]  # type: ignore[attr-defined]
    assert len(fields) >= 15
    assert {f["route"] for f in fields} <= ROUTE_TEMPLATES
    assert UNMATCHED in {f["route"] for f in fields}  # the odd paths, named by no template
    upload = next(f for f in fields if f["method"] == "PUT")
    assert upload["route"] == "/v1/rooms/{room}/blobs/{digest}"
    assert upload["status"] == 201
    assert upload["bytes_in"] > 0
    assert upload["room"] == running.room
    assert upload["party"] == running.bank.fingerprint
    assert upload["duration_ms"] >= 0
    download = next(
        f for f in fields if f["method"] == "GET" and f["route"].endswith("/blobs/{digest}")
    )
    assert download["bytes_out"] > 0
    forged = [f for f in fields if f["status"] == 401]
    assert forged
    assert all(f["party"] is None for f in forged)  # no signer without a valid signature
    assert any(f["method"] == "OTHER" for f in fields)  # BREW: an unknown method
    text = logging.Formatter(TEXT_FORMAT).format(records[0])
    assert "route" not in text
    assert " /v1/" in text or f" {UNMATCHED} " in text
    json.loads(JsonFormatter().format(records[0]))  # one JSON object per line


def test_no_signature_body_query_or_token_is_logged(running: Running) -> None:
    lines = running.lines()
    assert lines
    secrets = [s for s in running.recorder.secrets if len(s) >= 16]
    assert running.recorder.signatures >= 10  # signatures were recorded: the check bites
    assert any(s.count(".") == 2 for s in secrets)  # and statements (compact JWS)
    for line in lines:
        for secret in secrets:
            assert secret not in line
            for part in re.split(r"[:;,=\s\"()]+", secret):
                # hex parts are ids and fingerprints (keyid="..."): public, and logged
                if len(part) >= 24 and not re.fullmatch(r"[0-9a-f]+", part):
                    assert part not in line
        assert SECRET_NONCE not in line
        assert "secret-path" not in line
        assert "abcdefabcdefabcdef" not in line
        for run in BASE64_RUN.findall(line):
            assert re.fullmatch(r"[0-9a-f]+", run), (run, line)


def _metrics(url: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{url}/metrics", headers=headers)


SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-z_]+="[^"\\\n]*"(,[a-z_]+="[^"\\\n]*")*)\})?'
    r" (?P<value>[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|Inf|NaN))$"
)


def _parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The text exposition format, checked line by line: every sample of a family
    after its # TYPE line."""
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    typed: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, line
        name = match["name"]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, line
        labels = tuple(re.findall(r'([a-z_]+)="([^"]*)"', match["labels"] or ""))
        families.setdefault(name, {})[labels] = float(match["value"])
    return families


def test_metrics_need_the_operator_token(running: Running) -> None:
    for token in (None, "-", "m" * len(TOKEN), TOKEN + "x"):
        answer = _metrics(running.url, token)
        assert answer.status_code == 401, token
        assert answer.headers["content-type"] == "application/problem+json"
    signed = httpx.Request("GET", f"{running.url}/metrics")
    sign_request(signed, b"", running.bank)  # a member's signature is not the token
    with httpx.Client() as http:
        assert http.send(signed).status_code == 401


def test_metrics_count_by_route_and_never_name_a_room(running: Running) -> None:
    answer = _metrics(running.url)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert running.room not in answer.text
    assert "secret-path" not in answer.text
    families = _parse(answer.text)
    requests = families["cleanroom_http_requests_total"]
    routes = {dict(k)["route"] for k in requests}
    assert routes <= ROUTE_TEMPLATES
    key = (("method", "PUT"), ("route", "/v1/rooms/{room}/blobs/{digest}"), ("status", "201"))
    assert requests[key] == 1
    assert requests[(("method", "OTHER"), ("route", UNMATCHED), ("status", "404"))] >= 1
    assert families["cleanroom_rooms"][(("status", "active"),)] == 1
    assert families["cleanroom_ledger_entries"][()] >= 5
    assert set(families["cleanroom_jobs"]) == {
        (("state", s),) for s in ("requested", "running", "succeeded", "failed")
    }
    assert families["cleanroom_job_runner_jobs"][(("state", "queued"),)] == 0
    # histograms: cumulative buckets, +Inf equal to the count
    buckets = families["cleanroom_http_request_duration_seconds_bucket"]
    counts = families["cleanroom_http_request_duration_seconds_count"]
    for series, count in counts.items():
        values = [buckets[(*series, ("le", le))] for le in [*map(_le, BUCKETS), "+Inf"]]
        assert values == sorted(values)
        assert values[-1] == count


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def test_per_room_ledger_sizes_only_when_the_operator_asks(running: Running) -> None:
    running.service.metrics_per_room = True
    try:
        families = _parse(_metrics(running.url).text)
    finally:
        running.service.metrics_per_room = False
    sizes = families["cleanroom_room_ledger_entries"]
    assert sizes[(("room", running.room),)] == families["cleanroom_ledger_entries"][()]


def test_without_a_token_setting_metrics_are_off_for_everyone(running: Running) -> None:
    running.service.metrics_token = None
    try:
        for token in (None, TOKEN):
            answer = _metrics(running.url, token)
            assert answer.status_code == 404
            assert "metrics_token" in answer.json()["detail"]
    finally:
        running.service.metrics_token = TOKEN


def test_docs_page_needs_nothing_from_outside(running: Running) -> None:
    answer = httpx.get(f"{running.url}/docs")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    page = answer.text
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page, re.IGNORECASE)
    spec = httpx.get(f"{running.url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}".replace("{", "{") in page.replace("&#x27;", "'")
    assert "member or removed member" in page  # who may call each route


# -- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        ({"CLEANROOM_PORT": "eighty"}, {}, "port (CLEANROOM_PORT): not a whole number"),
        (
            {"CLEANROOM_PROT": "8000"},
            {},
            "CLEANROOM_PROT is not a setting (did you mean CLEANROOM_PORT?)",
        ),
        ({}, {"port": 70000}, "port (--port): must be <= 65535"),
        ({"CLEANROOM_MAX_SKEW_S": "1"}, {}, "max_skew_s (CLEANROOM_MAX_SKEW_S): must be >= 5"),
        (
            {"CLEANROOM_LOG_FORMAT": "yaml"},
            {},
            "log_format (CLEANROOM_LOG_FORMAT): must be 'text' or 'json'",
        ),
        (
            {"CLEANROOM_METRICS_TOKEN": "hunter2"},
            {},
            "metrics_token (CLEANROOM_METRICS_TOKEN): must be at least 32 characters long",
        ),
        (
            {"CLEANROOM_ROOM_CREATORS": "abc"},
            {},
            "room_creators (CLEANROOM_ROOM_CREATORS): not a list",
        ),
    ],
)
def test_a_bad_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], overrides: dict[str, Any], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(None, **overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert "pydantic" not in message
    assert "http" not in message
    assert "hunter2" not in message  # a value is never echoed: it may be a secret
    assert caught.value.__cause__ is None


def test_a_typo_in_the_config_file_is_named_with_the_file(tmp_path: Path) -> None:
    config = tmp_path / "cleanroom.toml"
    config.write_text('prot = 8000\njob_memory_limit = "lots"\n')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert f"prot in {config} is not a setting (did you mean port?)" in message
    assert f"job_memory_limit (in {config}): must match" in message
    config.write_text("port = \n")
    with pytest.raises(ConfigurationError, match="is not valid TOML"):
        load_settings(config)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_client_variables_are_not_taken_for_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVICE", "SERVICE_KEY", "KEYSTORE", "PASSPHRASE", "REQUIRE_POSTGRES", "DEBUG"):
        monkeypatch.setenv(f"CLEANROOM_{name}", "x")
    assert load_settings(None).port == 8321


def _serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")}
    return {**env, "COLUMNS": "200", **extra}


def test_cleanroom_serve_with_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "cleanroom", "serve", "--data-dir", str(data)],
        env=_serve_env(CLEANROOM_PORT="eighty"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "error: invalid service configuration: port (CLEANROOM_PORT): not a whole number"
    ]
    assert "pydantic" not in done.stderr + done.stdout
    assert done.returncode == 2
    assert not data.exists()  # nothing was created


def test_cleanroom_serve_logs_json_lines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    with local_service(data, env={"CLEANROOM_LOG_FORMAT": "json"}, log=log) as url:
        httpx.get(f"{url}/v1/health?probe=1")
        httpx.get(f"{url}/docs")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == ACCESS_LOGGER]
    assert {(r["method"], r["route"], r["status"]) for r in access} >= {
        ("GET", "/v1/health", 200),
        ("GET", "/docs", 200),
    }
    assert all("probe" not in json.dumps(r) for r in records)
    assert all({"time", "level", "logger"} <= set(r) for r in records)
