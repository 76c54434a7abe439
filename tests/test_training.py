"""Training analyses in the enclave: the kind over sealed inputs (the same model as
the same code on the plaintext; bad data and limits as fixed categories), local runs
on mock data, and jobs end to end through a real service and the command line. The
pure check is in tests/test_training_rules.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from examples.clinical_data import FEATURES, OUTCOMES_SCHEMA, outcomes

from cleanroom import Party
from cleanroom.errors import CleanroomError, GovernanceError, PolicyError
from cleanroom.policy.score import ScoreSpec
from cleanroom.policy.train import TrainSpec
from tests.test_jobs import (  # the jobs suite's clients and key agents
    _approve_if_needed,
    _client,
    _close_clients,  # noqa: F401 - an autouse fixture
    start_agent,
)
from tests.test_scoring_rules import _model_manifest
from tests.test_training_rules import COLUMNS, RULE, SCHEMA, SQL, _spec

pytest.importorskip("lightgbm", reason="training needs the [ml] extra")


# -- the kind, over sealed inputs ----------------------------------------------------------

ROWS = 3000


def _inputs(tmp: Path, rows: int = ROWS) -> list[Any]:
    from cleanroom.datasets.seal import seal_dataset, unseal_key  # noqa: PLC0415
    from cleanroom.enclave.sql import Input  # noqa: PLC0415

    owner = Party.create("hospital")
    sealed = seal_dataset(outcomes(rows), schema=SCHEMA, owner=owner, output=tmp / "t", name="t")
    key = unseal_key(tmp / "t", sealed.manifest, owner)
    return [Input("trial", tmp / "t" / "data.parquet", key, rows=rows)]


def _run(tmp: Path, spec: TrainSpec, **limits: Any) -> Any:
    from cleanroom.enclave.sql import Limits  # noqa: PLC0415
    from cleanroom.enclave.train import run_train  # noqa: PLC0415

    work = tmp / "work"
    work.mkdir(parents=True)
    settings = {"time_s": 60.0, "threads": 2, **limits}
    return run_train(spec.text(), _inputs(tmp), Limits(**settings), work)


def _plaintext(sql: str, rows: int = ROWS) -> pa.Table:
    """The training set on the plaintext: the same SQL in a plain DuckDB."""
    con = duckdb.connect()
    con.register("trial", outcomes(rows))
    table = con.execute(sql).to_arrow_table()
    con.close()
    return table


def _predict(model_bytes: bytes, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    matrix = np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in FEATURES])
    label, probabilities = session.run(["label", "probabilities"], {"features": matrix})
    return np.asarray(label), np.asarray(probabilities)


@pytest.mark.parametrize(
    "spec",
    [_spec(), _spec(algorithm="logistic_regression", params={"C": 0.5, "max_iter": 500})],
    ids=["gradient_boosting", "logistic_regression"],
)
def test_the_enclave_trains_the_model_the_same_code_trains_on_the_plaintext(
    tmp_path: Path, spec: TrainSpec
) -> None:
    from cleanroom.models.train import train  # noqa: PLC0415

    result = _run(tmp_path, spec).table
    assert result.column_names == [
        "model",
        "onnx",
        "train_rows",
        "test_rows",
        "classes",
        "accuracy",
        "log_loss",
        "roc_auc",
    ]
    assert result.num_rows == 1
    row = result.to_pylist()[0]
    assert row["model"] == "response"
    assert (row["train_rows"], row["test_rows"], row["classes"]) == (2400, 600, 2)
    reference = train(_plaintext(SQL), spec, threads=2)
    assert row["accuracy"] == pytest.approx(reference.metrics.accuracy)
    assert row["roc_auc"] == pytest.approx(reference.metrics.roc_auc)
    assert row["log_loss"] == pytest.approx(reference.metrics.log_loss)
    assert 0.6 < row["accuracy"] <= 1.0
    records = outcomes(500, seed=99)  # new people: the models agree on them too
    ours, theirs = _predict(row["onnx"], records), _predict(reference.onnx, records)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-6)


def test_a_metrics_only_analysis_releases_no_model(tmp_path: Path) -> None:
    result = _run(tmp_path, _spec(deliver="metrics")).table
    assert "onnx" not in result.column_names
    assert result.column("test_rows").to_pylist() == [600]
    assert all(not pa.types.is_binary(f.type) for f in result.schema)


@pytest.mark.parametrize(
    ("sql", "features", "category"),
    [
        # one class only: nothing to learn
        (
            f"SELECT {COLUMNS.replace('responded', '0 AS responded')} FROM trial",
            FEATURES,
            "conversion error",
        ),
        # a missing label
        (
            f"SELECT {', '.join(FEATURES)}, CASE WHEN bmi > 30 THEN NULL ELSE responded END "
            "AS responded FROM trial",
            FEATURES,
            "conversion error",
        ),
        # text is no feature
        ("SELECT patient_id, responded FROM trial", ("patient_id",), "conversion error"),
        # a label that is not classes
        ("SELECT bmi, hba1c AS responded FROM trial", ("bmi",), "conversion error"),
        # too few rows to hold some out
        ("SELECT bmi, responded FROM trial LIMIT 3", ("bmi",), "conversion error"),
        # a value the engine cannot compute
        (
            "SELECT bmi, CAST(patient_id AS INTEGER) AS responded FROM trial",
            ("bmi",),
            "conversion error",
        ),
    ],
)
def test_training_data_that_cannot_train_fails_with_a_fixed_category(
    tmp_path: Path, sql: str, features: tuple[str, ...], category: str
) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415

    spec = _spec(training=sql, features=list(features))
    with pytest.raises(Exception) as failed:  # noqa: PT011 - the category is the assertion
        _run(tmp_path, spec)
    assert category_of(failed.value) == category


def test_a_logistic_regression_refuses_missing_feature_values(tmp_path: Path) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415

    sql = "SELECT CASE WHEN bmi > 30 THEN NULL ELSE bmi END AS bmi, responded FROM trial"
    spec = _spec(training=sql, features=["bmi"], algorithm="logistic_regression", params={})
    with pytest.raises(Exception) as failed:  # noqa: PT011
        _run(tmp_path, spec)
    assert category_of(failed.value) == "conversion error"
    # gradient boosting learns from missing values
    assert _run(tmp_path / "gbm", _spec(training=sql, features=["bmi"])).table.num_rows == 1


def test_training_stops_at_the_time_limit_and_at_the_byte_limit(tmp_path: Path) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415

    slow = _spec(params={"n_estimators": 2000, "num_leaves": 1024, "min_child_samples": 1})
    with pytest.raises(Exception) as failed:  # noqa: PT011
        _run(tmp_path / "a", slow, time_s=0.5)
    assert category_of(failed.value) == "time limit"
    with pytest.raises(Exception) as failed:  # noqa: PT011
        _run(tmp_path / "b", _spec(), max_result_bytes=1000)
    assert category_of(failed.value) == "result too large"


# -- one job end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from cleanroom.service.local import local_service  # noqa: PLC0415

    with local_service(tmp_path_factory.mktemp("training") / "data") as url:
        yield url


def _outcomes_room(
    service: str, tmp: Path, rows: int, *, sponsor_state: Path | None = None
) -> tuple[dict[str, Party], dict[str, Any], Any]:
    """A hospital (its outcomes published under RULE, its key agent's vault under
    ``tmp``) and a sponsor (analyst, recipient, model publisher) in a room that
    trusts the insecure virtual platform. Returns the parties, rooms and agree()."""
    from cleanroom import Client  # noqa: PLC0415
    from cleanroom.attestation import measure  # noqa: PLC0415
    from tests.test_jobs import OPEN  # noqa: PLC0415

    parties = {n: Party.create(n) for n in ("hospital", "sponsor")}
    roles = {
        "hospital": ["data_provider"],
        "sponsor": ["analyst", "result_recipient", "data_provider"],
    }
    sponsor = (
        _client(service, parties["sponsor"], tmp)
        if sponsor_state is None
        else Client(service, parties["sponsor"], state_dir=sponsor_state)
    )
    if sponsor_state is not None:
        OPEN.append(sponsor)
    clients = {"hospital": _client(service, parties["hospital"], tmp), "sponsor": sponsor}
    created = clients["hospital"].create_room(
        "outcomes", [(parties[n].identity_document(), roles[n]) for n in parties]
    )
    rooms = {n: clients[n].room(created.id) for n in parties}
    rooms["sponsor"].accept()

    def agree(pid: str) -> None:
        for approver in rooms.values():
            _approve_if_needed(approver, pid)

    agree(
        rooms["hospital"].propose(
            {
                "type": "set_measurements",
                "measurements": [{"platform": "insecure-virtual", "value": measure()}],
                "allow_insecure_virtual": True,
            }
        )
    )
    agree(
        rooms["hospital"].publish_dataset(
            outcomes(rows),
            schema=OUTCOMES_SCHEMA,
            name="trial",
            rule=RULE.model_dump(mode="json", exclude_none=True),
            release_to=["insecure-virtual"],
        )
    )
    return parties, rooms, agree


def test_a_sponsor_trains_on_a_hospitals_outcomes_and_publishes_the_model(
    service: str, tmp_path: Path
) -> None:
    from cleanroom.models.train import train  # noqa: PLC0415

    parties, rooms, agree = _outcomes_room(service, tmp_path, ROWS)
    created = rooms["hospital"]
    spec = _spec()
    # before proposing, the sponsor trains the same spec here, on mock rows of the inputs
    tried = rooms["sponsor"].try_analysis("train", spec.text(), ["trial"], rows=500).to_pylist()
    assert (tried[0]["train_rows"], tried[0]["test_rows"]) == (400, 100)
    assert tried[0]["model"] == "response"
    with pytest.raises(PolicyError, match="postcode may never be output"):
        rooms["sponsor"].try_analysis(
            "train", _spec(training="SELECT * FROM trial").text(), ["trial"]
        )
    agree(
        rooms["sponsor"].propose_training(
            "response",
            training_sql=spec.training,
            label=spec.label,
            features=spec.features,
            params=spec.params,
            seed=spec.seed,
            inputs=["trial"],
            recipients=["sponsor"],
        )
    )
    start_agent(service, parties["hospital"], created.id, tmp_path)
    job = rooms["sponsor"].run_job("response")
    view = rooms["sponsor"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    row = rooms["sponsor"].job_result(job).to_pylist()[0]
    reference = train(_plaintext(SQL), spec, threads=os.cpu_count() or 1)
    assert row["accuracy"] == pytest.approx(reference.metrics.accuracy)
    records = outcomes(300, seed=42)
    np.testing.assert_array_equal(
        _predict(row["onnx"], records)[0], _predict(reference.onnx, records)[0]
    )
    # the model is the sponsor's now: it publishes it as a sealed model asset of its own
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    assert describe(row["onnx"]).inputs[0].shape[1] == len(FEATURES)
    published = rooms["sponsor"].publish_model(
        row["onnx"],
        _model_manifest(parties["sponsor"], row["onnx"]),
        name="response-model",
        release_to=["insecure-virtual"],
    )
    agree(published)
    state = rooms["hospital"].audit.verify().state
    assert state.datasets["response-model"].versions[-1].manifest.model is not None
    # and tries scoring the hospital's (mock) records with it, holding the bytes itself
    model = state.datasets["response-model"].versions[-1].manifest.model
    scoring = ScoreSpec(
        model="response-model",
        model_digest=model.digest(),
        records="trial",
        id="patient_id",
        outputs=["label"],
    ).text()
    scored = rooms["sponsor"].try_analysis(
        "score", scoring, ["response-model", "trial"], models={"response-model": row["onnx"]}
    )
    assert scored.column_names == ["patient_id", "label"]
    assert set(scored.column("label").to_pylist()) <= {0, 1}
    with pytest.raises(GovernanceError, match="is a model: pass its bytes"):
        rooms["sponsor"].try_analysis("score", scoring, ["response-model", "trial"])
    with pytest.raises(CleanroomError, match="not the ones the model manifest describes"):
        rooms["sponsor"].try_analysis(
            "score", scoring, ["response-model", "trial"], models={"response-model": b"x" * 64}
        )
    # the hospital, not a recipient, holds no key to the result
    with pytest.raises(CleanroomError, match=r"recipient|sealed|key"):
        rooms["hospital"].job_result(job)


def test_the_command_line_tries_proposes_and_saves_a_trained_model(
    service: str, tmp_path: Path
) -> None:
    from tests.test_cli import run  # noqa: PLC0415

    parties, rooms, agree = _outcomes_room(
        service, tmp_path, 400, sponsor_state=tmp_path / "keys/sponsor/state"
    )
    parties["sponsor"].save(tmp_path / "keys" / "sponsor")
    created = rooms["hospital"]
    (tmp_path / "train.sql").write_text(SQL)

    def sponsor(*args: str, ok: bool = True) -> Any:
        env = {"CLEANROOM_SERVICE": service, "CLEANROOM_KEYSTORE": "keys/sponsor"}
        return run(*args, "--room", created.id, cwd=tmp_path, env=env, ok=ok)

    features = [a for f in FEATURES for a in ("-f", f)]
    base = ["analysis", "propose-training", "response", "--sql", "train.sql", "--label"]
    common = [*base, "responded", *features, "-i", "trial", "--recipient", "sponsor"]
    tried = sponsor(*common, "--param", "n_estimators=20", "--dry-run", "--mock-rows", "300")
    assert "trained on mock rows" in tried.stdout
    assert "'train_rows': 240" in tried.stdout

    def analyses() -> list[dict[str, Any]]:
        found = rooms["sponsor"].proposals()
        return [p for p in found if p["action"]["type"] == "add_analysis"]

    assert not analyses()  # nothing proposed
    bad = sponsor(*common, "--param", "n_estimators", ok=False)
    assert bad.returncode != 0
    assert "NAME=VALUE" in bad.stderr
    out_of_range = sponsor(*common, "--param", "n_estimators=0", ok=False)
    assert "'n_estimators' must be within [1, 2000]" in out_of_range.stderr
    proposed = sponsor(*common, "--param", "n_estimators=20")
    assert proposed.returncode == 0
    [analysis] = analyses()
    assert analysis["action"]["language"] == "train"
    pid = analysis["id"]
    agree(pid)
    start_agent(service, parties["hospital"], created.id, tmp_path)
    job = rooms["sponsor"].run_job("response")
    assert rooms["sponsor"].wait_job(job, timeout=120)["status"] == "succeeded"
    saved = sponsor("job", "result", job[:12], "-o", "metrics.parquet", "--model-out", "m.onnx")
    assert "Wrote the model" in saved.stdout
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    assert describe((tmp_path / "m.onnx").read_bytes()).outputs[0].name == "label"
    csv = sponsor("job", "result", job[:12], "-o", "m.csv", "--model-out", "n.onnx", ok=False)
    assert "needs the result as .parquet" in csv.stderr
    assert not (tmp_path / "n.onnx").exists()


def test_a_result_without_a_model_writes_no_model_file(tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # noqa: PLC0415

    from cleanroom.cli.jobs import _write_model  # noqa: PLC0415
    from cleanroom.errors import InvalidInputError  # noqa: PLC0415

    pq.write_table(pa.table({"segment": ["a"], "n": [3]}), tmp_path / "r.parquet")
    with pytest.raises(InvalidInputError, match="holds no model"):
        _write_model(tmp_path / "r.parquet", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_data_a_library_chokes_on_is_trained_or_a_conversion_error(tmp_path: Path) -> None:
    """Found by red-teaming: one row decided between success and "internal error"."""
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415
    from cleanroom.models.train import split  # noqa: PLC0415

    # a class that only a held-out row has: evaluated, not a crash
    _, held_out = split(ROWS, 0.2, 5)
    rare = f"P{int(held_out[0]):07d}"
    sql = (
        f"SELECT bmi, hba1c, CASE WHEN patient_id = '{rare}' THEN 2 ELSE responded END "
        "AS responded FROM trial ORDER BY patient_id"
    )
    row = _run(tmp_path / "a", _spec(training=sql, features=["bmi", "hba1c"])).table.to_pylist()[0]
    assert row["classes"] == 2
    assert row["roc_auc"] is None  # not two classes among the held-out rows
    assert row["log_loss"] > 0
    # an integer feature past 2**53 rounds, as float32 would round it anyway
    big = "SELECT CAST(bmi AS BIGINT) * 9007199254740993 AS big, responded FROM trial"
    assert _run(tmp_path / "b", _spec(training=big, features=["big"])).table.num_rows == 1
    # a class past the int64 range is refused by category
    huge = "SELECT bmi, CAST(responded AS UBIGINT) + 18446744073709551000 AS responded FROM trial"
    with pytest.raises(Exception) as failed:  # noqa: PT011 - the category is the assertion
        _run(tmp_path / "c", _spec(training=huge, features=["bmi"]))
    assert category_of(failed.value) == "conversion error"


def test_a_training_set_over_its_share_of_memory_is_a_memory_limit(tmp_path: Path) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415

    sql = "SELECT a.bmi, b.responded FROM trial AS a CROSS JOIN trial AS b LIMIT 200000"
    with pytest.raises(Exception) as failed:  # noqa: PT011
        _run(tmp_path, _spec(training=sql, features=["bmi"]), memory="4MB")
    assert category_of(failed.value) == "memory limit"


def test_the_training_child_loads_only_the_installed_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``lightgbm.py`` on PYTHONPATH or in the working directory is not imported:
    the child runs isolated (``-I``), in the job's own directory."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "imported"
    (evil / "lightgbm.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setenv("PYTHONPATH", str(evil))
    monkeypatch.chdir(evil)
    assert _run(tmp_path / "job", _spec()).table.num_rows == 1
    assert not marker.exists()
