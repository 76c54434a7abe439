"""Scoring with a protected model end to end: a real service, real enclave processes,
each owner's own key agent, and the attacks a hospital or a vendor would try."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from examples.clinical_data import (
    FEATURES,
    PATIENTS_RULE,
    PATIENTS_SCHEMA,
    eligible,
    patients,
    vendor_model,
)

from cleanroom import Party
from cleanroom.errors import AuthorizationError, CleanroomError, GovernanceError, NotFoundError
from cleanroom.governance.outcomes import TIME_BUCKET_MS, is_bucket
from cleanroom.policy.score import ScoreSpec
from cleanroom.service.local import local_service
from tests.test_jobs import (  # the jobs suite's clients and key agents
    _approve_if_needed,
    _client,
    _close_clients,  # noqa: F401 - an autouse fixture
    start_agent,
)
from tests.test_scoring_rules import SPEC, _model_manifest, _pin

pytest.importorskip("onnxruntime", reason="scoring needs the [server] extra")
pytest.importorskip("skl2onnx", reason="the vendor's conversion needs the [ml] extra")


@pytest.fixture(scope="module")
def asset() -> tuple[Any, bytes]:
    """The vendor's model and its ONNX bytes."""
    return vendor_model()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_service(tmp_path_factory.mktemp("scoring") / "data") as url:
        yield url


# -- the job, end to end ---------------------------------------------------------------

ROWS = 400


def _scoring_room(
    url: str,
    tmp: Path,
    model_bytes: bytes,
    *,
    spec: ScoreSpec = SPEC,
    limits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A hospital (records, recipient, analyst) and a model vendor, each with its key
    agent; the vendor's model and the hospital's records published; ``spec`` approved."""
    parties = {n: Party.create(n) for n in ("hospital", "vendor")}
    roles = {
        "hospital": ["data_provider", "result_recipient", "analyst"],
        "vendor": ["data_provider"],
    }
    clients = {n: _client(url, p, tmp) for n, p in parties.items()}
    created = clients["hospital"].create_room(
        "trial", [(parties[n].identity_document(), roles[n]) for n in parties]
    )
    rooms = {n: clients[n].room(created.id) for n in parties}
    rooms["vendor"].accept()

    def agree(pid: str) -> None:
        for approver in rooms.values():
            _approve_if_needed(approver, pid)

    from cleanroom.attestation import measure  # noqa: PLC0415

    agree(
        rooms["hospital"].propose(
            {
                "type": "set_measurements",
                "measurements": [{"platform": "insecure-virtual", "value": measure()}],
                "allow_insecure_virtual": True,
            }
        )
    )
    if limits is not None:
        agree(
            rooms["hospital"].set_limits(
                time_s=600, memory_mb=2048, max_result_rows=10_000, **limits
            )
        )
    platforms = ["insecure-virtual"]
    agree(
        rooms["vendor"].publish_model(
            model_bytes,
            _model_manifest(parties["vendor"], model_bytes),
            name="triage",
            release_to=platforms,
        )
    )
    agree(
        rooms["hospital"].publish_dataset(
            patients(ROWS),
            schema=PATIENTS_SCHEMA,
            name="patients",
            rule=PATIENTS_RULE,
            release_to=platforms,
        )
    )
    keep = (spec.keep.output, spec.keep.equals) if spec.keep is not None else None
    agree(
        rooms["hospital"].propose_scoring(
            "candidates",
            model=spec.model,
            records=spec.records,
            id_column=spec.id,
            outputs=spec.outputs,
            keep=keep,
            recipients=["hospital"],
        )
    )
    for party in parties.values():
        start_agent(url, party, created.id, tmp)
    return {"rooms": rooms, "parties": parties, "room": created.id}


def _plain_predictions(model_bytes: bytes) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The same model over the same plaintext, with plain onnxruntime."""
    import onnxruntime as ort  # noqa: PLC0415

    table = patients(ROWS)
    matrix = np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in FEATURES])
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {"features": matrix})
    return table, labels, probabilities


def test_the_enclave_scores_every_record_and_only_the_hospital_gets_its_candidates(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    model, model_bytes = asset
    room = _scoring_room(service, tmp_path, model_bytes)
    hospital, vendor = room["rooms"]["hospital"], room["rooms"]["vendor"]
    job = hospital.run_job("candidates")
    view = hospital.wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    assert [c["name"] for c in view["output"]["columns"]] == ["patient_id"]
    # a vendor's model could time itself on one record: the run is padded to its time
    # bucket and the kind's own phases are withheld from the ledger
    assert not {"read_ms", "load_ms", "score_ms"} & set(view["output"]["phases"])
    assert is_bucket(view["output"]["phases"]["run_ms"], TIME_BUCKET_MS)
    result = hospital.job_result(job)
    table, labels, _ = _plain_predictions(model_bytes)
    expected = sorted(np.asarray(table.column("patient_id"))[labels == 1].tolist())
    assert result.column_names == ["patient_id"]  # no feature, no score, no postcode
    assert sorted(result.column("patient_id").to_pylist()) == expected
    assert 0 < len(expected) < ROWS
    # the vendor's own sklearn model agrees with the enclave (same bytes, same criteria)
    matrix = np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in FEATURES])
    assert (model.predict(matrix) == labels).all()
    assert (labels == eligible({f: table.column(f).to_numpy() for f in FEATURES})).mean() > 0.9
    # the vendor is no recipient: it never sees records or scores
    with pytest.raises(AuthorizationError, match="not its recipient"):
        vendor.download_result(job, tmp_path / "stolen.parquet")
    # each owner's own agent released its own key: the model is an input like any other
    entries = hospital.audit.verify().statements
    releases = {
        s.author: [i.dataset for i in s.body.inputs] for s in entries if s.kind == "key.release"
    }
    parties = room["parties"]
    assert releases == {
        parties["hospital"].fingerprint: ["patients"],
        parties["vendor"].fingerprint: ["triage"],
    }


def test_probabilities_leave_only_when_declared_and_match_plain_onnxruntime(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    _, model_bytes = asset
    spec = SPEC.model_copy(update={"keep": None, "outputs": ["label", "probabilities"]})
    room = _scoring_room(service, tmp_path, model_bytes, spec=spec)
    hospital = room["rooms"]["hospital"]
    job = hospital.run_job("candidates")
    assert hospital.wait_job(job, timeout=120)["status"] == "succeeded"
    out = tmp_path / "scores.parquet"
    hospital.download_result(job, out)
    result = pq.read_table(out)
    assert result.column_names == ["patient_id", "label", "probabilities"]
    table, labels, probabilities = _plain_predictions(model_bytes)
    assert result.column("patient_id").to_pylist() == table.column("patient_id").to_pylist()
    assert result.column("label").to_pylist() == labels.tolist()
    got = np.array(result.column("probabilities").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, probabilities, rtol=1e-6, atol=1e-7)


def test_the_hospital_cannot_obtain_the_model(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    _, model_bytes = asset
    room = _scoring_room(service, tmp_path, model_bytes)
    hospital, vendor = room["rooms"]["hospital"], room["rooms"]["vendor"]
    state = hospital.audit.verify().state
    model_digest = state.datasets["triage"].versions[-1].manifest.sha256
    # no route serves the model's ciphertext to a member other than its owner
    with pytest.raises(AuthorizationError, match="model's ciphertext goes only to its owner"):
        hospital.download(model_digest, tmp_path / "model.parquet")
    assert not (tmp_path / "model.parquet").exists()
    vendor.download(model_digest, tmp_path / "own.parquet")  # its owner may
    # no SQL analysis may read it, even one the vendor would approve
    with pytest.raises(GovernanceError, match="'triage' is a model: SQL cannot read a model"):
        hospital.propose_analysis(
            "weights", "SELECT onnx FROM triage", inputs=["triage"], recipients=["hospital"]
        )
    # no scoring analysis may put a feature or the model in its output
    with pytest.raises(GovernanceError, match="has no output 'onnx'"):
        hospital.propose_scoring(
            "steal",
            model="triage",
            records="patients",
            id_column="patient_id",
            outputs=["onnx"],
            recipients=["hospital"],
        )


def test_the_vendors_revocation_stops_the_next_scoring_job(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    _, model_bytes = asset
    room = _scoring_room(service, tmp_path, model_bytes)
    hospital, vendor = room["rooms"]["hospital"], room["rooms"]["vendor"]
    vendor.revoke_consent("triage")
    with pytest.raises(GovernanceError, match="revoked consent"):
        hospital.run_job("candidates")


def test_the_rooms_caps_on_scoring_are_kept_on_the_ledger(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    _, model_bytes = asset
    room = _scoring_room(
        service, tmp_path, model_bytes, limits={"max_scoring_jobs": 2, "max_scored_rows": 2 * ROWS}
    )
    hospital = room["rooms"]["hospital"]
    first = hospital.run_job("candidates")
    assert hospital.wait_job(first, timeout=120)["status"] == "succeeded"
    hospital.run_job("candidates")
    with pytest.raises(GovernanceError, match="allows 2 scoring jobs"):
        hospital.run_job("candidates")
    state = hospital.audit.verify().state  # every verifier folds the same counts
    assert (state.scoring_jobs, state.scored_rows) == (2, 2 * ROWS)


def test_the_row_cap_refuses_a_job_that_would_pass_it(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    _, model_bytes = asset
    room = _scoring_room(service, tmp_path, model_bytes, limits={"max_scored_rows": ROWS + 1})
    hospital = room["rooms"]["hospital"]
    hospital.run_job("candidates")
    with pytest.raises(GovernanceError, match=f"caps scored rows at {ROWS + 1}"):
        hospital.run_job("candidates")


def test_the_clinical_demo_runs_end_to_end(tmp_path: Path) -> None:
    """`make demo SCENARIO=clinical`, on fewer records: every step, every refusal."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    script = Path(__file__).resolve().parent.parent / "examples" / "scenarios.py"
    env = {**os.environ, "CLEANROOM_DEMO_RECORDS": "20000", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, str(script), "clinical"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "scored 20,000 records" in out
    assert out.count("refused: ") == 6  # four attempts, the weights scan, the revocation
    assert "audit verify: ok" in out
    assert "insecure virtual platform" in out
    candidates = (tmp_path / "demo-output" / "candidates.csv").read_text().splitlines()
    assert candidates[0] == '"patient_id"'
    assert 0 < len(candidates) - 1 < 20_000


def test_the_command_line_publishes_a_model_and_proposes_scoring(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    from tests.test_cli import run  # noqa: PLC0415

    _, model_bytes = asset
    parties = {n: Party.create(n) for n in ("hospital", "vendor")}
    for name, party in parties.items():
        party.save(tmp_path / "keys" / name)
    clients = {
        n: _client_at(service, p, tmp_path / "keys" / n / "state") for n, p in parties.items()
    }
    created = clients["hospital"].create_room(
        "trial",
        [
            (
                parties["hospital"].identity_document(),
                ["data_provider", "result_recipient", "analyst"],
            ),
            (parties["vendor"].identity_document(), ["data_provider"]),
        ],
    )
    rooms = {n: c.room(created.id) for n, c in clients.items()}
    rooms["vendor"].accept()
    (tmp_path / "triage.onnx").write_bytes(model_bytes)
    (tmp_path / "triage.pkl").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle

    def as_(name: str, *args: str, ok: bool = True) -> Any:
        env = {"CLEANROOM_SERVICE": service, "CLEANROOM_KEYSTORE": f"keys/{name}"}
        return run(*args, "--room", created.id, cwd=tmp_path, env=env, ok=ok)

    features = ",".join(FEATURES)
    refused = as_(
        "vendor",
        "model",
        "publish",
        "triage.pkl",
        "--name",
        "triage",
        "--version",
        "1.0.0",
        "--features",
        features,
        ok=False,
    )
    assert refused.returncode != 0
    assert "pickle" in refused.stderr
    published = as_(
        "vendor",
        "model",
        "publish",
        "triage.onnx",
        "--name",
        "triage",
        "--version",
        "1.0.0",
        "--features",
        features,
        "--allow-insecure-virtual",
    )
    assert "Published model triage" in published.stdout
    pid = next(p["id"] for p in rooms["vendor"].proposals() if p["status"] == "open")
    for room in rooms.values():
        _approve_if_needed(room, pid)
    state = rooms["hospital"].audit.verify().state
    assert state.datasets["triage"].versions[-1].manifest.model is not None
    records = rooms["hospital"].publish_dataset(
        patients(40),
        schema=PATIENTS_SCHEMA,
        name="patients",
        rule=PATIENTS_RULE,
        release_to=["insecure-virtual"],
    )
    for room in rooms.values():
        _approve_if_needed(room, records)
    bad_keep = as_(
        "hospital",
        "analysis",
        "propose-scoring",
        "c",
        "--model",
        "triage",
        "--records",
        "patients",
        "--id",
        "patient_id",
        "--keep",
        "label",
        "--recipient",
        "hospital",
        ok=False,
    )
    assert bad_keep.returncode != 0
    assert "OUTPUT=VALUE" in bad_keep.stderr
    leak = as_(
        "hospital",
        "analysis",
        "propose-scoring",
        "c",
        "--model",
        "triage",
        "--records",
        "patients",
        "--id",
        "postcode",
        "--recipient",
        "hospital",
        ok=False,
    )
    assert "never lets 'postcode' be output" in leak.stderr
    ok = as_(
        "hospital",
        "analysis",
        "propose-scoring",
        "candidates",
        "--model",
        "triage",
        "--records",
        "patients",
        "--id",
        "patient_id",
        "--keep",
        "label=1",
        "--recipient",
        "hospital",
    )
    assert ok.returncode == 0
    analysis = next(
        p["action"] for p in rooms["vendor"].proposals() if p["action"]["type"] == "add_analysis"
    )
    assert analysis["language"] == "score"
    model = rooms["hospital"].audit.verify().state.datasets["triage"].versions[-1].manifest.model
    assert model is not None
    assert analysis["text"] == _pin(SPEC, model)  # pinned to the model published


def _client_at(url: str, party: Party, state: Path) -> Any:
    from cleanroom import Client  # noqa: PLC0415
    from tests.test_jobs import OPEN  # noqa: PLC0415

    client = Client(url, party, state_dir=state)
    OPEN.append(client)
    return client


def test_no_member_reaches_the_models_ciphertext_through_a_decoy_manifest(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    """The hospital signs a manifest naming the model's ciphertext digest (read on the
    ledger), in this room and in a room of its own: neither opens the blob route."""
    _, model_bytes = asset
    room = _scoring_room(service, tmp_path, model_bytes)
    hospital = room["rooms"]["hospital"]
    state = hospital.audit.verify().state
    model = state.datasets["triage"].versions[-1].manifest
    payload = {**state.datasets["patients"].versions[-1].manifest.payload(), "name": "decoy"}
    payload["ciphertext"] = model.payload()["ciphertext"]
    party = room["parties"]["hospital"]
    decoy = party.sign_document(payload, typ="cleanroom-dataset-manifest+jws")
    # (1) in the room: the ledger refuses a second dataset over the same ciphertext
    with pytest.raises(GovernanceError, match="already registered as 'triage'"):
        hospital.propose({"type": "register_dataset", "manifest": decoy})
    # (2) in a room of its own, where it alone approves: registered, but never uploaded
    # there, so that room holds no such blob
    alone = _client(service, party, tmp_path / "alone").create_room(
        "alone", [(party.identity_document(), ["data_provider", "result_recipient"])]
    )
    own = _client(service, party, tmp_path / "alone2").room(alone.id)
    pid = own.propose({"type": "register_dataset", "manifest": decoy})
    _approve_if_needed(own, pid)
    assert "decoy" in own.audit.verify().state.datasets
    with pytest.raises(NotFoundError, match="no registered dataset in this room"):
        own.download(model.sha256, tmp_path / "stolen.parquet")
    assert not (tmp_path / "stolen.parquet").exists()
    # and uploading needs the bytes themselves: other bytes under the digest claim nothing
    (tmp_path / "guess.bin").write_bytes(b"\x00" * model.size)
    with pytest.raises(CleanroomError, match=r"Content-Digest|do not match"):
        own.put_file(tmp_path / "guess.bin", f"/v1/rooms/{alone.id}/blobs/{model.sha256}")
    with pytest.raises(NotFoundError):
        own.download(model.sha256, tmp_path / "stolen.parquet")


def test_a_later_set_limits_keeps_the_scoring_caps(
    service: str, tmp_path: Path, asset: tuple[Any, bytes]
) -> None:
    _, model_bytes = asset
    room = _scoring_room(service, tmp_path, model_bytes, limits={"max_scoring_jobs": 3})
    hospital = room["rooms"]["hospital"]
    pid = hospital.set_limits(time_s=900, memory_mb=4096, max_result_rows=10_000)
    action = next(p["action"] for p in hospital.proposals() if p["id"] == pid)
    assert action["max_scoring_jobs"] == 3  # kept, not silently dropped
    assert action.get("max_scored_rows") is None
