"""Scoring with a protected model, without a service: the model as a sealed asset,
the pure check of a scoring analysis (one refusal per check), and the state
machine's caps on scoring (the mutation runner's tests for these modules)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from examples.clinical_data import (
    FEATURES,
    PATIENTS_RULE,
    PATIENTS_SCHEMA,
    patients,
    vendor_model,
)

from cleanroom import Party
from cleanroom.datasets.manifest import MANIFEST_FILE, Manifest
from cleanroom.datasets.schema import MODEL_SCHEMA, Schema
from cleanroom.errors import (
    DeserializationError,
    PolicyError,
    ValidationError,
)
from cleanroom.models.manifest import ModelManifest
from cleanroom.policy.check import Source, check_query
from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule
from cleanroom.policy.score import Keep, ScoreSpec, check_score, parse_spec
from tests.test_mutation_kills_state import World, refused

pytest.importorskip("onnxruntime", reason="scoring needs the [server] extra")
pytest.importorskip("skl2onnx", reason="the vendor's conversion needs the [ml] extra")

CREATED = "2026-11-26T00:00:00Z"


PLACEHOLDER = "0" * 64  # the pinned model's digest, filled in by _pin
SPEC = ScoreSpec(
    model="triage",
    model_digest=PLACEHOLDER,
    records="patients",
    id="patient_id",
    keep=Keep(output="label", equals=1),
)


def _pin(spec: ScoreSpec, manifest: ModelManifest | None) -> str:
    """The spec's text, pinned to ``manifest``: what a proposal holds."""
    assert manifest is not None
    return spec.model_copy(update={"model_digest": manifest.digest()}).text()


PATIENTS = Schema.from_json(PATIENTS_SCHEMA)


@pytest.fixture(scope="module")
def vendor_asset() -> tuple[Any, bytes]:
    return vendor_model()


def _model_manifest(
    vendor: Party, model_bytes: bytes, features: tuple[str, ...] = FEATURES
) -> ModelManifest:
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    return ModelManifest(
        name="triage",
        version="1.0.0",
        vendor_name=vendor.name,
        vendor_fingerprint=vendor.fingerprint,
        features=features,
        model=describe(model_bytes),
        created_at=CREATED,
    )


def _sources(
    manifest: ModelManifest,
    *,
    rule: Any = None,
    records_approved: bool = True,
    model_approved: bool = True,
    schema: Schema = PATIENTS,
) -> dict[str, Source]:
    return {
        "triage": Source("triage", MODEL_SCHEMA, None, model_approved, manifest),
        "patients": Source(
            "patients",
            schema,
            rule if rule is not None else CustomRule.model_validate(PATIENTS_RULE),
            records_approved,
        ),
    }


# -- the model as a sealed asset ------------------------------------------------------


def test_a_model_is_sealed_in_the_dataset_format_and_opens_as_its_bytes(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    from cleanroom.datasets.seal import open_dataset, seal_model  # noqa: PLC0415

    vendor = Party.create("vendor")
    _, model_bytes = vendor_asset
    manifest = _model_manifest(vendor, model_bytes)
    sealed = seal_model(model_bytes, manifest, owner=vendor, output=tmp_path / "m", name="triage")
    assert sealed.manifest.model == manifest
    assert sealed.manifest.schema == MODEL_SCHEMA
    # the ciphertext does not carry the weights in the clear
    assert model_bytes[-64:] not in (tmp_path / "m" / "data.parquet").read_bytes()
    document = json.loads((tmp_path / "m" / MANIFEST_FILE).read_text())
    assert Manifest.verify(document, vendor.identity).model == manifest
    assert open_dataset(tmp_path / "m", vendor).column("onnx")[0].as_py() == model_bytes


def test_sealing_refuses_bytes_the_model_manifest_does_not_describe(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    from cleanroom.datasets.seal import seal_model  # noqa: PLC0415

    vendor = Party.create("vendor")
    _, model_bytes = vendor_asset
    manifest = _model_manifest(vendor, model_bytes)
    with pytest.raises(ValidationError, match="not the ones the model manifest describes"):
        seal_model(model_bytes + b"\x00", manifest, owner=vendor, output=tmp_path / "m", name="t")
    assert not (tmp_path / "m").exists()


def _signed(owner: Party, payload: dict[str, Any]) -> Any:
    return owner.sign_document(payload, typ="cleanroom-dataset-manifest+jws")


def _asset_payload(vendor: Party, manifest: ModelManifest) -> dict[str, Any]:
    return Manifest(
        name="triage",
        owner_name=vendor.name,
        owner_fingerprint=vendor.fingerprint,
        schema=MODEL_SCHEMA,
        rows=1,
        sha256="ab" * 32,
        size=100,
        key_id="cd" * 16,
        created_at=CREATED,
        model=manifest,
    ).payload()


def test_a_dataset_manifest_is_a_model_asset_exactly_when_it_carries_a_model(
    vendor_asset: tuple[Any, bytes],
) -> None:
    vendor = Party.create("vendor")
    manifest = _model_manifest(vendor, vendor_asset[1])
    payload = _asset_payload(vendor, manifest)
    assert Manifest.verify(_signed(vendor, payload), vendor.identity).model == manifest
    # a model in a manifest whose schema is not the model schema
    wrong_schema = {**payload, "schema": PATIENTS.to_json()}
    with pytest.raises(DeserializationError, match="must be the model schema"):
        Manifest.verify(_signed(vendor, wrong_schema), vendor.identity)
    # the model schema without a model: binary columns carry model assets only
    no_model = {k: v for k, v in payload.items() if k != "model"}
    with pytest.raises(DeserializationError, match="binary columns carry model assets only"):
        Manifest.verify(_signed(vendor, no_model), vendor.identity)
    # another vendor's model, republished under this owner's signature
    other = Party.create("other")
    stolen = {**payload, "model": _model_manifest(other, vendor_asset[1]).payload()}
    with pytest.raises(DeserializationError, match="vendor must be the dataset's owner"):
        Manifest.verify(_signed(vendor, stolen), vendor.identity)
    # a malformed model manifest inside
    broken = {**payload, "model": {**manifest.payload(), "features": "age"}}
    with pytest.raises(DeserializationError, match="model manifest"):
        Manifest.verify(_signed(vendor, broken), vendor.identity)


def test_a_binary_column_in_ordinary_data_is_refused_before_sealing(tmp_path: Path) -> None:
    from cleanroom.datasets.seal import seal_dataset  # noqa: PLC0415

    owner = Party.create("owner")
    schema = Schema.from_json(
        {
            "identity_column": "id",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "blob", "type": "binary"},
            ],
        }
    )
    table = pa.table({"id": ["a"], "blob": [b"x"]})
    with pytest.raises(ValidationError, match="binary columns carry model assets only"):
        seal_dataset(table, schema=schema, owner=owner, output=tmp_path / "d", name="d")
    assert not (tmp_path / "d").exists()


# -- the check of a scoring analysis --------------------------------------------------


def test_a_canonical_scoring_spec_passes_and_names_its_columns(
    vendor_asset: tuple[Any, bytes],
) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    plan = check_score(_pin(SPEC, manifest), _sources(manifest))
    assert plan.columns == ["patient_id"]
    assert plan.features == FEATURES
    with_outputs = SPEC.model_copy(update={"outputs": ["label", "probabilities"]})
    assert check_score(_pin(with_outputs, manifest), _sources(manifest)).columns == [
        "patient_id",
        "label",
        "probabilities",
    ]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(SPEC.model_dump(mode="json", exclude_none=True)),  # spaces
        json.dumps(SPEC.model_dump(mode="json", exclude_none=True), sort_keys=True),
        # a duplicate key: the approver reads one value, a parser may take the other
        SPEC.text()[:-1] + ',"records":"triage"}',
        SPEC.text() + " ",
        "SELECT * FROM patients",
        "[]",
        "",
    ],
)
def test_only_the_canonical_text_of_a_spec_is_accepted(text: str) -> None:
    with pytest.raises(PolicyError, match="scoring analysis"):
        parse_spec(text)


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        ({"model": "patients", "records": "patients"}, "exactly two inputs"),
        ({"model": "other"}, "exactly two inputs"),
        ({"model": "patients", "records": "triage"}, "is not a model"),
        ({"id": "nobody"}, "has no column 'nobody'"),
        ({"id": "postcode"}, "never lets 'postcode' be output"),
        ({"outputs": ["scores"]}, "has no output 'scores'"),
        ({"outputs": ["label", "label"]}, "each output once"),
        ({"outputs": ["patient_id"]}, "has no output"),
        ({"keep": {"output": "scores", "equals": 1}}, "no output 'scores' to keep"),
        ({"keep": {"output": "probabilities", "equals": 1}}, "1-D integer or boolean"),
    ],
)
def test_a_spec_the_inputs_do_not_admit_is_refused(
    vendor_asset: tuple[Any, bytes], edit: dict[str, Any], phrase: str
) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    spec = ScoreSpec.model_validate({**SPEC.model_dump(mode="json", exclude_none=True), **edit})
    with pytest.raises(PolicyError, match=phrase):
        check_score(_pin(spec, manifest), _sources(manifest))


def test_an_output_named_like_the_id_column_is_refused(vendor_asset: tuple[Any, bytes]) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    spec = SPEC.model_copy(update={"id": "Label", "outputs": ["label"]})
    schema = Schema.from_json(
        {
            **PATIENTS_SCHEMA,
            "columns": [*PATIENTS_SCHEMA["columns"], {"name": "Label", "type": "string"}],
        }
    )
    with pytest.raises(PolicyError, match="take the id column's name"):
        check_score(_pin(spec, manifest), _sources(manifest, schema=schema))


def test_both_owners_must_approve_the_exact_analysis(vendor_asset: tuple[Any, bytes]) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    with pytest.raises(PolicyError, match="owner of the model 'triage' has not approved"):
        check_score(_pin(SPEC, manifest), _sources(manifest, model_approved=False))
    with pytest.raises(PolicyError, match="owner of 'patients' has not approved"):
        check_score(_pin(SPEC, manifest), _sources(manifest, records_approved=False))
    # no rule at all: still only what the owner approved
    sources = _sources(manifest, records_approved=False)
    sources["patients"] = Source("patients", PATIENTS, None, owner_approved=False)
    with pytest.raises(PolicyError, match="has not approved"):
        check_score(_pin(SPEC, manifest), sources)
    sources["patients"] = Source("patients", PATIENTS, None, owner_approved=True)
    assert check_score(_pin(SPEC, manifest), sources).columns == ["patient_id"]


@pytest.mark.parametrize(
    ("rule", "phrase"),
    [
        (
            AggregationRule(
                type="aggregation", dimensions=["age_band"], min_distinct=10, aggregates=[]
            ),
            "aggregation rule of 'patients' releases no scores",
        ),
        (ListRule(type="list", list_columns=["patient_id"]), "list rule of 'patients'"),
        (CustomRule(type="custom", min_distinct=5), "threshold of 5"),
        (CustomRule(type="custom", min_distinct=2), "threshold of 2"),
    ],
)
def test_records_whose_rule_releases_no_rows_are_not_scored(
    vendor_asset: tuple[Any, bytes], rule: Any, phrase: str
) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    with pytest.raises(PolicyError, match=phrase):
        check_score(_pin(SPEC, manifest), _sources(manifest, rule=rule))
    # a threshold of one is no threshold
    one = CustomRule(type="custom", min_distinct=1)
    assert check_score(_pin(SPEC, manifest), _sources(manifest, rule=one)).columns == ["patient_id"]


@pytest.mark.parametrize(
    ("features", "column", "phrase"),
    [
        (
            ("age_band", "missing", "hba1c", "bmi", "egfr", "chronic_conditions"),
            None,
            "not a column",
        ),
        (("age_band", "postcode", "hba1c", "bmi", "egfr", "chronic_conditions"), None, "is string"),
        (
            ("age_band", "patient_id", "hba1c", "bmi", "egfr", "chronic_conditions"),
            None,
            "is string",
        ),
        (FEATURES, "bmi", "never lets 'bmi' be output"),
    ],
)
def test_a_feature_the_records_cannot_give_is_refused(
    vendor_asset: tuple[Any, bytes], features: tuple[str, ...], column: str | None, phrase: str
) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1], features)
    rule = CustomRule(type="custom", disallowed_columns=[column] if column else [])
    with pytest.raises(PolicyError, match=phrase):
        check_score(_pin(SPEC, manifest), _sources(manifest, rule=rule))


def test_the_identity_and_id_columns_are_never_features(vendor_asset: tuple[Any, bytes]) -> None:
    schema = Schema.from_json(
        {
            "identity_column": "patient_no",
            "columns": [
                {"name": "patient_no", "type": "int64", "nullable": False},
                {"name": "visit_no", "type": "int64", "nullable": False},
                *PATIENTS_SCHEMA["columns"][2:],
            ],
        }
    )
    features = ("age_band", "bmi", "hba1c", "systolic_bp", "egfr", "patient_no")
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1], features)
    spec = SPEC.model_copy(update={"id": "visit_no"})
    with pytest.raises(
        PolicyError, match="identity column 'patient_no' cannot be a model's feature"
    ):
        check_score(_pin(spec, manifest), _sources(manifest, schema=schema))
    features = ("age_band", "bmi", "hba1c", "systolic_bp", "egfr", "visit_no")
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1], features)
    with pytest.raises(PolicyError, match="id column 'visit_no' cannot also be"):
        check_score(_pin(spec, manifest), _sources(manifest, schema=schema))


def test_a_model_without_features_scores_nothing(vendor_asset: tuple[Any, bytes]) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1], ())
    with pytest.raises(PolicyError, match="names no feature columns"):
        check_score(_pin(SPEC, manifest), _sources(manifest))


def test_sql_can_never_read_a_model(vendor_asset: tuple[Any, bytes]) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    sources = _sources(manifest)
    for sql in ("SELECT onnx FROM triage", "SELECT COUNT(*) AS n FROM patients"):
        with pytest.raises(PolicyError, match="'triage' is a model: SQL cannot read a model"):
            check_query(sql, sources)


def test_a_check_that_breaks_is_a_refusal(vendor_asset: tuple[Any, bytes]) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    sources = _sources(manifest)
    sources["patients"] = Source("patients", None, None, owner_approved=True)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"could not be checked.*\(AttributeError\)"):
        check_score(_pin(SPEC, manifest), sources)


# -- the state machine: the language allow-list and the room's caps on scoring ---------

RECORDS = Schema.from_json(
    {
        "identity_column": "id",
        "columns": [
            {"name": "id", "type": "string", "nullable": False},
            {"name": "x", "type": "float64", "nullable": False},
        ],
    }
)
TOY_BYTES = b"toy model bytes: the state machine never loads them"
TOY_SPEC = ScoreSpec(model="toy", model_digest=PLACEHOLDER, records="records", id="id")


def _toy_manifest(vendor: Party) -> ModelManifest:
    import hashlib  # noqa: PLC0415

    from cleanroom.models.manifest import ModelDescription, TensorSpec  # noqa: PLC0415

    description = ModelDescription(
        sha256=hashlib.sha256(TOY_BYTES).hexdigest(),
        size=len(TOY_BYTES),
        ir_version=8,
        opsets=(("ai.onnx", 17),),
        producer_name="tests",
        producer_version="1",
        runtime_version="1.0",
        inputs=(TensorSpec("features", "float", ("batch", 1)),),
        outputs=(TensorSpec("label", "int64", ("batch",)),),
    )
    return ModelManifest("toy", "1", vendor.name, vendor.fingerprint, ("x",), description, CREATED)


class ScoringWorld(World):
    """The state machine's room, with a model of the merchant's, 7 records of the
    bank's, and an approved scoring analysis over them."""

    ROWS = 7

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        from cleanroom.datasets.seal import seal_dataset, seal_model  # noqa: PLC0415

        merchant, bank = self.fx.parties["merchant"], self.fx.parties["bank"]
        state = self.base
        self.toy = _toy_manifest(merchant)
        self.text = _pin(TOY_SPEC, self.toy)  # the analysis's text, pinned to the toy model
        model = seal_model(TOY_BYTES, self.toy, owner=merchant, output=tmp / "toy", name="toy")
        records = pa.table({"id": [f"r{i}" for i in range(self.ROWS)], "x": [0.5] * self.ROWS})
        seal_dataset(records, schema=RECORDS, owner=bank, output=tmp / "rec", name="records")
        for owner, directory in (("merchant", model.directory), ("bank", tmp / "rec")):
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
            action = {"type": "register_dataset", "manifest": manifest}
            self.decide(state, owner, action, list(dict.fromkeys([owner, "bank"])))
        self.scoring = {
            "type": "add_analysis",
            "name": "scores",
            "language": "score",
            "text": self.text,
            "inputs": ["toy", "records"],
            "recipients": [self.fx.fp("bank")],
        }
        self.decide(state, "analyst", self.scoring, ["bank", "merchant"])
        assert state.analyses["scores"].language == "score"

    def limit(self, state: Any, **caps: int) -> None:
        action = {
            "type": "set_limits",
            "time_s": 60,
            "memory_mb": 512,
            "max_result_rows": 1000,
            **caps,
        }
        self.decide(state, "analyst", action, ["bank", "merchant", "analyst"])
        assert state.limits is not None
        assert state.limits.model_dump(exclude_none=True) == action

    def records_version(self, state: Any, rows: int) -> None:
        """A new version of the bank's records, of ``rows`` rows, registered in ``state``."""
        from cleanroom.datasets.seal import seal_dataset  # noqa: PLC0415

        self.made += 1
        out = self.tmp / f"records-{self.made}"
        table = pa.table({"id": [f"p{i}" for i in range(rows)], "x": [0.5] * rows})
        seal_dataset(
            table, schema=RECORDS, owner=self.fx.parties["bank"], output=out, name="records"
        )
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        self.decide(state, "bank", {"type": "register_dataset", "manifest": manifest}, ["bank"])

    def scoring_job(self) -> dict[str, Any]:
        """A job.request body for the scoring analysis."""
        return {"analysis": "scores", "digest": _sha(self.text)}


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> ScoringWorld:
    return ScoringWorld(tmp_path_factory.mktemp("scoring-state"))


def test_a_scoring_job_counts_itself_and_its_records_but_not_the_model(
    scoring: ScoringWorld,
) -> None:
    state = scoring.fresh()
    assert (state.scoring_jobs, state.scored_rows) == (0, 0)
    scoring.apply(state, "analyst", "job.request", scoring.scoring_job())
    assert (state.scoring_jobs, state.scored_rows) == (1, ScoringWorld.ROWS)
    # an SQL job counts nothing, however many rows it reads
    scoring.apply(state, "analyst", "job.request", {"analysis": "solo", "digest": _sha(SOLO)})
    assert (state.scoring_jobs, state.scored_rows) == (1, ScoringWorld.ROWS)
    # the rows of the records' current version, not of the first
    scoring.records_version(state, 11)
    scoring.apply(state, "analyst", "job.request", scoring.scoring_job())
    assert (state.scoring_jobs, state.scored_rows) == (2, ScoringWorld.ROWS + 11)


def _sha(text: str) -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(text.encode()).hexdigest()


SOLO = "SELECT count(*) FROM customers"


def test_the_job_cap_refuses_the_job_after_the_last_and_changes_nothing(
    scoring: ScoringWorld,
) -> None:
    state = scoring.fresh()
    scoring.limit(state, max_scoring_jobs=2)
    for _ in range(2):
        scoring.apply(state, "analyst", "job.request", scoring.scoring_job())
    body = scoring.scoring_job()
    refused(scoring, state, "analyst", "job.request", body, r"^the room allows 2 scoring jobs")
    assert (state.scoring_jobs, state.scored_rows) == (2, 2 * ScoringWorld.ROWS)


def test_a_job_cap_of_zero_allows_no_scoring(scoring: ScoringWorld) -> None:
    state = scoring.fresh()
    scoring.limit(state, max_scoring_jobs=0)
    body = scoring.scoring_job()
    refused(scoring, state, "analyst", "job.request", body, r"^the room allows 0 scoring jobs")


def test_the_row_cap_counts_every_record_a_job_would_score(scoring: ScoringWorld) -> None:
    rows = ScoringWorld.ROWS
    state = scoring.fresh()
    scoring.limit(state, max_scored_rows=2 * rows)  # exactly two jobs' worth
    scoring.apply(state, "analyst", "job.request", scoring.scoring_job())
    scoring.apply(state, "analyst", "job.request", scoring.scoring_job())
    body = scoring.scoring_job()
    phrase = rf"^the room caps scored rows at {2 * rows}: this job would score {rows} more after"
    refused(scoring, state, "analyst", "job.request", body, phrase)
    state = scoring.fresh()
    scoring.limit(state, max_scored_rows=rows - 1)  # one row short of a single job
    refused(scoring, state, "analyst", "job.request", scoring.scoring_job(), "caps scored rows")
    assert (state.scoring_jobs, state.scored_rows) == (0, 0)


def test_caps_without_a_value_do_not_cap(scoring: ScoringWorld) -> None:
    state = scoring.fresh()
    scoring.limit(state)  # limits, but no scoring caps
    for _ in range(3):
        scoring.apply(state, "analyst", "job.request", scoring.scoring_job())
    assert state.scoring_jobs == 3


def test_the_room_checks_a_scoring_analysis_with_the_scoring_check(
    scoring: ScoringWorld,
) -> None:
    state = scoring.fresh()
    bank = (scoring.fx.fp("bank"),)
    inputs = ("toy", "records")
    assert state.check_policy(scoring.text, inputs, bank, None, None, language="score") == (
        scoring.text
    )
    # the same text as SQL, or SQL over the model, is refused by the SQL check
    with pytest.raises(PolicyError, match="'toy' is a model: SQL cannot read a model"):
        state.check_policy("SELECT count(*) FROM records", inputs, bank, None, None)
    # a language no check exists for runs nowhere
    with pytest.raises(PolicyError, match=r"^no check exists for 'fit' analyses$"):
        state.check_policy(scoring.text, inputs, bank, None, None, language="fit")
    # scoring releases rows, never a DP aggregate
    from cleanroom.policy.rules import DpSpec  # noqa: PLC0415
    from tests.test_privacy_rules import DP_SPEC  # noqa: PLC0415

    dp = DpSpec.model_validate(DP_SPEC)
    with pytest.raises(PolicyError, match="releases no differentially private aggregates"):
        state.check_policy(scoring.text, inputs, bank, dp, None, language="score")
    # the owners' votes are what the check reads: without the vendor's, no scoring
    with pytest.raises(PolicyError, match="owner of the model 'toy' has not approved"):
        state.check_policy(
            scoring.text,
            inputs,
            bank,
            None,
            frozenset({scoring.fx.fp("bank")}),
            language="score",
        )


def test_a_scoring_analysis_the_check_refuses_is_never_proposed(scoring: ScoringWorld) -> None:
    state = scoring.fresh()
    bad = {
        **scoring.scoring,
        "name": "bad",
        "text": _pin(TOY_SPEC.model_copy(update={"id": "x"}), scoring.toy),
    }
    refused(
        scoring,
        state,
        "analyst",
        "proposal.create",
        {"action": bad},
        "the id column 'x' cannot also be a model's feature",
        PolicyError,
    )


# -- the scoring kind inside the enclave, on sealed inputs ----------------------------


def _enclave_inputs(
    tmp: Path,
    asset: tuple[Any, bytes],
    records: pa.Table,
    manifest_bytes: bytes | None = None,
    schema: Schema = PATIENTS,
) -> list[Any]:
    """The two inputs as the runtime hands them over: files, released keys, the model's
    verified manifest (``manifest_bytes``: the bytes the manifest describes, if others)."""
    from cleanroom.datasets.seal import seal_dataset, seal_model, unseal_key  # noqa: PLC0415
    from cleanroom.enclave.sql import Input  # noqa: PLC0415

    vendor, hospital = Party.create("vendor"), Party.create("hospital")
    _, model_bytes = asset
    manifest = _model_manifest(vendor, manifest_bytes or model_bytes)
    if manifest_bytes is not None:  # a swapped model: sealed under another model's manifest
        from cleanroom.datasets import seal as seal_module  # noqa: PLC0415

        table = pa.table(
            {"model": ["triage"], "onnx": [model_bytes]}, schema=MODEL_SCHEMA.arrow_schema()
        )
        model = seal_module.seal_dataset(
            table,
            schema=MODEL_SCHEMA,
            owner=vendor,
            output=tmp / "m",
            name="triage",
            model=manifest,
        )
    else:
        model = seal_model(model_bytes, manifest, owner=vendor, output=tmp / "m", name="triage")
    rows = seal_dataset(records, schema=schema, owner=hospital, output=tmp / "p", name="patients")
    return [
        Input(
            "triage",
            tmp / "m" / "data.parquet",
            unseal_key(tmp / "m", model.manifest, vendor),
            manifest,
        ),
        Input(
            "patients",
            tmp / "p" / "data.parquet",
            unseal_key(tmp / "p", rows.manifest, hospital),
            rows=rows.manifest.rows,
        ),
    ]


def test_the_kind_scores_inside_the_enclave_as_plain_onnxruntime_does(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits  # noqa: PLC0415

    records = patients(300)
    inputs = _enclave_inputs(tmp_path, vendor_asset, records)
    spec = SPEC.model_copy(update={"outputs": ["label"]})
    result = run_score(_pin(spec, inputs[0].model), inputs, Limits(), tmp_path)
    matrix = np.column_stack([records.column(f).to_numpy().astype(np.float32) for f in FEATURES])
    session = ort.InferenceSession(vendor_asset[1], providers=["CPUExecutionProvider"])
    (labels,) = session.run(["label"], {"features": matrix})
    kept = labels == 1
    assert result.table.column_names == ["patient_id", "label"]
    assert result.table.column("patient_id").to_pylist() == (
        np.asarray(records.column("patient_id"))[kept].tolist()
    )
    assert result.table.column("label").to_pylist() == [1] * int(kept.sum())
    assert set(result.phases) == {"read_ms", "load_ms", "score_ms"}
    # keep by 0: the complement, every row exactly once between the two
    spec0 = SPEC.model_copy(update={"keep": Keep(output="label", equals=0)})
    rest = run_score(_pin(spec0, inputs[0].model), inputs, Limits(), tmp_path).table
    assert rest.num_rows == records.num_rows - int(kept.sum())
    # without keep, every row in order
    every = SPEC.model_copy(update={"keep": None, "outputs": ["label"]})
    whole = run_score(_pin(every, inputs[0].model), inputs, Limits(), tmp_path).table
    assert whole.column("label").to_pylist() == labels.tolist()


def test_the_kind_refuses_a_result_over_the_rooms_limits(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits, QueryError  # noqa: PLC0415

    inputs = _enclave_inputs(tmp_path, vendor_asset, patients(50))
    every = SPEC.model_copy(update={"keep": None, "outputs": ["label"]})
    assert (
        run_score(
            _pin(every, inputs[0].model), inputs, Limits(max_result_rows=50), tmp_path
        ).table.num_rows
        == 50
    )
    for limits in (Limits(max_result_rows=49), Limits(max_result_bytes=100)):
        with pytest.raises(QueryError) as caught:
            run_score(_pin(every, inputs[0].model), inputs, limits, tmp_path)
        assert caught.value.category == "result too large"
    with pytest.raises(QueryError) as caught:
        run_score(_pin(every, inputs[0].model), inputs, Limits(time_s=0.0), tmp_path)
    assert caught.value.category == "time limit"


def test_a_model_swapped_under_a_manifest_is_an_integrity_error(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits, QueryError  # noqa: PLC0415

    _, other_bytes = vendor_model(rows=2_000, seed=99)  # another model, same signature
    inputs = _enclave_inputs(tmp_path, vendor_asset, patients(20), manifest_bytes=other_bytes)
    with pytest.raises(QueryError) as caught:
        run_score(_pin(SPEC, inputs[0].model), inputs, Limits(), tmp_path)
    assert caught.value.category == "integrity error"
    assert "modified, truncated or swapped" in str(caught.value)


def test_a_model_input_without_its_manifest_is_an_integrity_error(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    import dataclasses  # noqa: PLC0415

    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits, QueryError  # noqa: PLC0415

    inputs = _enclave_inputs(tmp_path, vendor_asset, patients(20))
    inputs[0] = dataclasses.replace(inputs[0], model=None)
    with pytest.raises(QueryError, match="carries no model manifest") as caught:
        run_score(SPEC.text(), inputs, Limits(), tmp_path)
    assert caught.value.category == "integrity error"


def test_a_feature_value_the_model_cannot_take_fails_without_quoting_it(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    from cleanroom.enclave.failures import category_of  # noqa: PLC0415
    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits, QueryError  # noqa: PLC0415

    nullable = Schema.from_json(
        {
            **PATIENTS_SCHEMA,
            "columns": [
                {**c, "nullable": True} if c["name"] == "bmi" else c
                for c in PATIENTS_SCHEMA["columns"]
            ],
        }
    )
    records = patients(20)
    bmi = records.column("bmi").to_pylist()
    bmi[3] = None  # a record without the value: the model takes none
    records = records.set_column(3, "bmi", pa.array(bmi, pa.float64()))
    inputs = _enclave_inputs(tmp_path, vendor_asset, records, schema=nullable)
    with pytest.raises(QueryError) as caught:
        run_score(_pin(SPEC, inputs[0].model), inputs, Limits(), tmp_path)
    assert category_of(caught.value) == "conversion error"  # the category alone leaves


def test_records_that_are_a_model_are_refused(vendor_asset: tuple[Any, bytes]) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    sources = _sources(manifest)
    sources["patients"] = Source("patients", PATIENTS, None, owner_approved=True, model=manifest)
    with pytest.raises(PolicyError, match="'patients' is a model, not records"):
        check_score(_pin(SPEC, manifest), sources)


def test_a_rule_type_scoring_does_not_know_is_a_refusal(vendor_asset: tuple[Any, bytes]) -> None:
    """A rule kind added later is refused until scoring learns it (an allow-list)."""
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    sources = _sources(manifest)
    later = {"type": "synthetic"}  # any rule object that is none of today's three
    sources["patients"] = Source("patients", PATIENTS, later, owner_approved=True)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="is not one scoring understands"):
        check_score(_pin(SPEC, manifest), sources)


def test_rows_are_kept_only_by_a_one_dimensional_integer_or_boolean_output() -> None:
    import hashlib  # noqa: PLC0415

    from cleanroom.models.manifest import ModelDescription, TensorSpec  # noqa: PLC0415

    vendor = Party.create("vendor")
    description = ModelDescription(
        sha256=hashlib.sha256(TOY_BYTES).hexdigest(),
        size=len(TOY_BYTES),
        ir_version=8,
        opsets=(("ai.onnx", 17),),
        producer_name="tests",
        producer_version="1",
        runtime_version="1.0",
        inputs=(TensorSpec("features", "float", ("batch", 1)),),
        outputs=(
            TensorSpec("flag", "bool", ("batch",)),
            TensorSpec("score", "float", ("batch",)),  # 1-D, but a float
            TensorSpec("pair", "int64", ("batch", 2)),  # an integer, but 2-D
        ),
    )
    manifest = ModelManifest(
        "toy", "1", vendor.name, vendor.fingerprint, ("bmi",), description, CREATED
    )
    for output, ok in (("flag", True), ("score", False), ("pair", False)):
        spec = SPEC.model_copy(update={"keep": Keep(output=output, equals=True)})
        if ok:
            assert check_score(_pin(spec, manifest), _sources(manifest)).columns == ["patient_id"]
        else:
            with pytest.raises(PolicyError, match="1-D integer or boolean output"):
                check_score(_pin(spec, manifest), _sources(manifest))


def test_a_model_asset_holding_two_models_is_refused_everywhere(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    import os  # noqa: PLC0415

    from cleanroom.datasets.parquet import connect, write_encrypted  # noqa: PLC0415
    from cleanroom.datasets.seal import seal_dataset  # noqa: PLC0415
    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits, QueryError  # noqa: PLC0415

    vendor = Party.create("vendor")
    manifest = _model_manifest(vendor, vendor_asset[1])
    table = pa.table(
        {"model": ["triage", "triage"], "onnx": [vendor_asset[1]] * 2},
        schema=MODEL_SCHEMA.arrow_schema(),
    )
    # the vendor's own tools refuse to seal it, and a manifest saying so does not verify
    with pytest.raises(ValidationError, match="holds exactly one model"):
        seal_dataset(
            table,
            schema=MODEL_SCHEMA,
            owner=vendor,
            output=tmp_path / "two",
            name="triage",
            model=manifest,
        )
    assert not (tmp_path / "two").exists()
    payload = {**_asset_payload(vendor, manifest), "rows": 2}
    with pytest.raises(DeserializationError, match="holds exactly one model"):
        Manifest.verify(_signed(vendor, payload), vendor.identity)
    # a vendor that signs a one-row manifest over a two-row file: the enclave refuses it
    inputs = _enclave_inputs(tmp_path, vendor_asset, patients(20))
    key = os.urandom(32)
    con = connect()
    write_encrypted(con, table.to_reader(), tmp_path / "two.parquet", key)
    con.close()
    inputs[0] = type(inputs[0])("triage", tmp_path / "two.parquet", key, manifest)
    with pytest.raises(QueryError, match="exactly one model") as caught:
        run_score(_pin(SPEC, inputs[0].model), inputs, Limits(), tmp_path)
    assert caught.value.category == "integrity error"


def _toy_outputs(*outputs: Any) -> ModelManifest:
    import hashlib  # noqa: PLC0415

    from cleanroom.models.manifest import ModelDescription, TensorSpec  # noqa: PLC0415

    vendor = Party.create("vendor")
    description = ModelDescription(
        sha256=hashlib.sha256(TOY_BYTES).hexdigest(),
        size=len(TOY_BYTES),
        ir_version=8,
        opsets=(("ai.onnx", 17),),
        producer_name="tests",
        producer_version="1",
        runtime_version="1.0",
        inputs=(TensorSpec("features", "float", ("batch", 1)),),
        outputs=tuple(TensorSpec(*o) for o in outputs),
    )
    return ModelManifest(
        "toy", "1", vendor.name, vendor.fingerprint, ("bmi",), description, CREATED
    )


@pytest.mark.parametrize(
    ("tensor", "phrase"),
    [
        (("total", "int64", (1,)), "is not one value per record"),  # a sum over the records
        (("block", "float", (100, 2)), "is not one value per record"),
        (("cube", "float", ("batch", 2, 3)), "cannot become a column"),
        (("scalar", "float", ()), "cannot become a column"),
        (("half", "float16", ("batch",)), "cannot become a column"),
    ],
)
def test_an_output_that_is_not_one_value_per_record_is_refused(
    tensor: tuple[Any, ...], phrase: str
) -> None:
    manifest = _toy_outputs(("label", "int64", ("batch",)), tensor)
    spec = SPEC.model_copy(update={"keep": None, "outputs": [tensor[0]]})
    with pytest.raises(PolicyError, match=phrase):
        check_score(_pin(spec, manifest), _sources(manifest))
    if tensor[2] and tensor[1] in ("int64",):  # as the output rows are kept by, too
        keep = SPEC.model_copy(update={"keep": Keep(output=tensor[0], equals=1)})
        with pytest.raises(PolicyError, match=phrase):
            check_score(_pin(keep, manifest), _sources(manifest))
    fine = _toy_outputs(("label", "int64", ("batch",)), ("p", "double", (None, 2)))
    ok = SPEC.model_copy(update={"keep": None, "outputs": ["label", "p"]})
    assert check_score(_pin(ok, fine), _sources(fine)).columns == ["patient_id", "label", "p"]


def _fewer_rows_model() -> bytes:
    """A model whose ``label`` claims one row per record but keeps only the records
    whose feature is positive (``Compress``): the manifest cannot tell, the enclave can."""
    import numpy as np  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["features", "one"], ["column"]),
            helper.make_node("Greater", ["column", "zero"], ["positive"]),
            helper.make_node("Compress", ["column", "positive"], ["kept"], axis=0),
            helper.make_node("Cast", ["kept"], ["label"], to=TensorProto.INT64),
        ],
        "fewer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        [one, zero],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="t", producer_version="1"
    )
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    onnx.checker.check_model(model, full_check=True)
    return data


def test_a_model_that_returns_fewer_rows_than_records_is_refused_in_the_enclave(
    tmp_path: Path,
) -> None:
    from cleanroom.datasets.seal import seal_dataset, seal_model, unseal_key  # noqa: PLC0415
    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Input, Limits, QueryError  # noqa: PLC0415
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    model_bytes = _fewer_rows_model()
    vendor, hospital = Party.create("vendor"), Party.create("hospital")
    manifest = ModelManifest(
        "toy", "1", vendor.name, vendor.fingerprint, ("bmi",), describe(model_bytes), CREATED
    )
    records = patients(30)
    bmi = records.column("bmi").to_pylist()
    records = records.set_column(
        3, "bmi", pa.array([-x if i % 2 else x for i, x in enumerate(bmi)])
    )
    schema = Schema.from_json(
        {
            **PATIENTS_SCHEMA,
            "columns": [
                {**c, "min": -80} if c["name"] == "bmi" else c for c in PATIENTS_SCHEMA["columns"]
            ],
        }
    )
    model = seal_model(model_bytes, manifest, owner=vendor, output=tmp_path / "m", name="triage")
    rows = seal_dataset(
        records, schema=schema, owner=hospital, output=tmp_path / "p", name="patients"
    )
    inputs = [
        Input(
            "triage",
            tmp_path / "m" / "data.parquet",
            unseal_key(tmp_path / "m", model.manifest, vendor),
            manifest,
        ),
        Input(
            "patients",
            tmp_path / "p" / "data.parquet",
            unseal_key(tmp_path / "p", rows.manifest, hospital),
            rows=rows.manifest.rows,
        ),
    ]
    spec = ScoreSpec(
        model="triage",
        model_digest=PLACEHOLDER,
        records="patients",
        id="patient_id",
        outputs=["label"],
    )
    assert check_score(_pin(spec, manifest), _sources(manifest, schema=schema)).columns  # it passes
    with pytest.raises(QueryError, match="cannot score") as caught:
        run_score(_pin(spec, inputs[0].model), inputs, Limits(), tmp_path)
    assert caught.value.category == "integrity error"


# -- the attacks found by red-teaming the scoring path ---------------------------------


def test_an_approval_holds_for_the_pinned_model_only(vendor_asset: tuple[Any, bytes]) -> None:
    """A vendor that registers a new version (other features, other behaviour) gets no
    scoring under the approval given to the old one."""
    vendor = Party.create("vendor")
    old = _model_manifest(vendor, vendor_asset[1])
    new = _model_manifest(
        vendor,
        vendor_asset[1],
        ("age_band", "bmi", "hba1c", "egfr", "systolic_bp", "chronic_conditions"),
    )
    assert check_score(_pin(SPEC, old), _sources(old)).columns == ["patient_id"]
    with pytest.raises(PolicyError, match="not the version this analysis pins"):
        check_score(_pin(SPEC, old), _sources(new))


def test_the_enclave_runs_only_the_pinned_model_and_the_signed_row_count(
    vendor_asset: tuple[Any, bytes], tmp_path: Path
) -> None:
    import dataclasses  # noqa: PLC0415

    from cleanroom.enclave.score import run_score  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits, QueryError  # noqa: PLC0415

    inputs = _enclave_inputs(tmp_path, vendor_asset, patients(20))
    other = _model_manifest(Party.create("other"), vendor_asset[1])
    with pytest.raises(QueryError, match="not the pinned one") as caught:
        run_score(_pin(SPEC, other), inputs, Limits(), tmp_path)
    assert caught.value.category == "integrity error"
    # records whose owner signed fewer rows than the file holds (the caps were charged less)
    for rows in (19, 21, None):
        lying = [inputs[0], dataclasses.replace(inputs[1], rows=rows)]
        with pytest.raises(QueryError, match="another number of rows") as caught:
            run_score(_pin(SPEC, inputs[0].model), lying, Limits(), tmp_path)
        assert caught.value.category == "integrity error"


def test_never_output_columns_compare_without_regard_to_case(
    vendor_asset: tuple[Any, bytes],
) -> None:
    manifest = _model_manifest(Party.create("vendor"), vendor_asset[1])
    upper = CustomRule(type="custom", disallowed_columns=["POSTCODE", "BMI"])
    spec = SPEC.model_copy(update={"id": "postcode"})
    with pytest.raises(PolicyError, match="never lets 'postcode' be output"):
        check_score(_pin(spec, manifest), _sources(manifest, rule=upper))
    with pytest.raises(PolicyError, match="never lets 'bmi' be output"):
        check_score(_pin(SPEC, manifest), _sources(manifest, rule=upper))
    # the identity and id columns, named in another case by the model
    features = ("age_band", "bmi", "hba1c", "systolic_bp", "egfr", "chronic_conditions")
    schema = Schema.from_json(
        {
            **PATIENTS_SCHEMA,
            "identity_column": "Age_band",
            "columns": [
                {**c, "name": "Age_band"} if c["name"] == "age_band" else c
                for c in PATIENTS_SCHEMA["columns"]
            ],
        }
    )
    renamed = _model_manifest(Party.create("vendor"), vendor_asset[1], features)
    with pytest.raises(PolicyError, match="not a column"):  # names are exact in the schema
        check_score(_pin(SPEC, renamed), _sources(renamed, schema=schema))
    spec = SPEC.model_copy(update={"id": "Patient_ID"})
    with pytest.raises(PolicyError, match="has no column 'Patient_ID'"):
        check_score(_pin(spec, manifest), _sources(manifest))


def test_onnxruntime_writes_nothing_of_the_data_to_standard_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A kernel that fails on a shape computed from a feature: onnxruntime's own log
    would print the value (``requested shape:{8437}``) on the enclave's standard error."""
    import numpy as np  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    from cleanroom.models.onnx import load  # noqa: PLC0415
    from cleanroom.models.score import score  # noqa: PLC0415

    def const(name: str, value: Any, kind: Any = np.int64) -> Any:
        return numpy_helper.from_array(np.asarray(value, dtype=kind), name)

    nodes = [
        helper.make_node("Gather", ["features", "c"], ["x"], axis=1),
        helper.make_node("Mul", ["x", "k"], ["xk"]),
        helper.make_node("Round", ["xk"], ["r"]),
        helper.make_node("Cast", ["r"], ["ri"], to=TensorProto.INT64),
        helper.make_node("Slice", ["ri", "s0", "s1"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["ys"], keepdims=0),
        helper.make_node("Cast", ["ys"], ["ysi"], to=TensorProto.INT64),
        helper.make_node("Mul", ["ysi", "zero"], ["y0"]),
        helper.make_node("Shape", ["x"], ["n"]),
        helper.make_node(
            "ConstantOfShape",
            ["n"],
            ["z"],
            value=helper.make_tensor("v", TensorProto.INT64, [1], [0]),
        ),
        helper.make_node("Add", ["z", "y0"], ["label"]),
    ]
    initializers = [
        const("c", 1),
        const("k", 1000.0, np.float32),
        const("s0", [0]),
        const("s1", [1]),
        const("zero", 0),
    ]
    graph = helper.make_graph(
        nodes,
        "leak",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version, model.producer_name, model.producer_version = 8, "t", "1"
    model_bytes = model.SerializeToString()
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    vendor = Party.create("vendor")
    manifest = ModelManifest(
        "leak",
        "1",
        vendor.name,
        vendor.fingerprint,
        ("age_band", "hba1c"),
        describe(model_bytes),
        CREATED,
    )
    session = load(model_bytes, manifest)
    table = pa.table({"age_band": pa.array([5, 6], pa.int32()), "hba1c": [8.437, 6.1]})
    capfd.readouterr()
    with pytest.raises(ValidationError) as caught:
        score(table, session)
    out, err = capfd.readouterr()
    assert "8437" not in err + out
    assert "8437" not in str(caught.value)  # the library's text stays on the cause
    assert "8437" in str(caught.value.__cause__)  # (which is why it must stay there)


def test_a_ciphertext_is_registered_under_one_dataset_only(scoring: ScoringWorld) -> None:
    """Another member's manifest naming the model's ciphertext digest (read on the
    ledger) is refused: the digest would otherwise open the blob route to it."""
    state = scoring.fresh()
    toy = json.loads(json.dumps(state.datasets["toy"].versions[-1].manifest.payload()))
    bank = scoring.fx.parties["bank"]
    decoy = scoring.sealed("bank", "decoy")
    decoy = bank.sign_document(
        {**decoy["payload"], "ciphertext": toy["ciphertext"]}, typ="cleanroom-dataset-manifest+jws"
    )
    refused(
        scoring,
        state,
        "bank",
        "proposal.create",
        {"action": {"type": "register_dataset", "manifest": decoy}},
        r"^that ciphertext is already registered as 'toy'$",
    )


def test_a_scoring_job_gets_keys_only_for_the_versions_it_was_counted_for(
    scoring: ScoringWorld,
) -> None:
    state = scoring.fresh()
    for owner, name in (("merchant", "toy"), ("bank", "records")):
        deposit = {
            "dataset": name,
            "manifest": state.datasets[name].versions[-1].digest,
            "release": "owner",
            "policy": {"platforms": ["insecure-virtual"]},
        }
        scoring.apply(state, owner, "key.deposit", deposit)
    job = scoring.apply(state, "analyst", "job.request", scoring.scoring_job()).digest
    assert state.jobs[job].counted == tuple(state.job_inputs(job))
    # the versions counted are released: the job runs
    ok = copy.deepcopy(state)
    from tests.test_mutation_kills_state import _nonce  # noqa: PLC0415

    enclave, nonce = Party.create("enclave"), _nonce()
    for owner, name in (("merchant", "toy"), ("bank", "records")):
        body = scoring.release(ok, [name], job=job, enclave=enclave, nonce=nonce)
        scoring.apply(ok, owner, "key.release", body)
    assert ok.jobs[job].status == "running"
    scoring.records_version(state, 5000)  # probe rows, after the count
    body = scoring.release(state, ["records"], job=job)
    refused(scoring, state, "bank", "key.release", body, "has a new version since this scoring job")


@pytest.mark.parametrize(
    ("tensor", "value", "ok"),
    [
        (("flag", "bool", ("batch",)), True, True),
        (("flag", "bool", ("batch",)), 1, False),  # not a boolean
        (("label", "int64", ("batch",)), True, False),  # a boolean for an integer
        (("label", "int64", ("batch",)), -(2**53) + 1, True),  # canonical JSON's integers
        (("small", "uint8", ("batch",)), 255, True),
        (("small", "uint8", ("batch",)), 256, False),
        (("small", "uint8", ("batch",)), -1, False),
        (("tiny", "int8", ("batch",)), -128, True),
        (("tiny", "int8", ("batch",)), -129, False),
        (("tiny", "int8", ("batch",)), 127, True),
        (("small", "uint8", ("batch",)), 0, True),
        (("tiny", "int8", ("batch",)), 128, False),
        (("wide", "uint64", ("batch",)), 2**53 - 1, True),
    ],
)
def test_keep_compares_with_a_value_the_output_can_hold(
    tensor: tuple[Any, ...], value: int | bool, ok: bool
) -> None:
    manifest = _toy_outputs(tensor)
    spec = SPEC.model_copy(update={"keep": Keep(output=tensor[0], equals=value)})
    if ok:
        assert check_score(_pin(spec, manifest), _sources(manifest)).columns == ["patient_id"]
    else:
        with pytest.raises(PolicyError, match="keep"):
            check_score(_pin(spec, manifest), _sources(manifest))


def test_the_state_digest_covers_the_scoring_counts(scoring: ScoringWorld) -> None:
    """Two states that would decide a cap differently never share a digest."""
    from cleanroom.governance.consensus import consensus_record  # noqa: PLC0415

    base = scoring.fresh()
    assert "scoring" not in consensus_record(base)  # rooms that never scored: as before
    counted = copy.deepcopy(base)
    counted.scoring_jobs = 1
    rows = copy.deepcopy(base)
    rows.scored_rows = 1
    assert len({base.digest(), counted.digest(), rows.digest()}) == 3
    job = scoring.apply(base, "analyst", "job.request", scoring.scoring_job()).digest
    pinned = copy.deepcopy(base)
    pinned.jobs[job].counted = (("toy", "0" * 64),)
    assert pinned.digest() != base.digest()
    assert consensus_record(base)["jobs"][job]["counted"] == [
        list(i) for i in base.jobs[job].counted
    ]
    # a set_limits without caps is recorded as it was before the caps existed
    scoring.limit(base)
    limits = [
        p["action"]
        for p in consensus_record(base)["proposals"].values()
        if p["action"]["type"] == "set_limits"
    ]
    assert limits == [
        {"type": "set_limits", "time_s": 60, "memory_mb": 512, "max_result_rows": 1000}
    ]


def test_a_decoy_cannot_race_the_models_open_registration(scoring: ScoringWorld) -> None:
    """The vendor's registration is open (its ciphertext digest is on the ledger): a
    recipient's own manifest naming that digest is refused, so it can neither be
    accepted first nor then block the vendor's registration."""
    from cleanroom.datasets.seal import seal_model  # noqa: PLC0415

    state = scoring.fresh()
    merchant, bank = scoring.fx.parties["merchant"], scoring.fx.parties["bank"]
    v2 = _toy_manifest(merchant)
    out = scoring.tmp / f"toy-v2-{len(state.proposals)}"
    seal_model(TOY_BYTES, v2, owner=merchant, output=out, name="toy")
    model = json.loads((out / MANIFEST_FILE).read_text())
    pid = scoring.propose(state, "merchant", {"type": "register_dataset", "manifest": model})
    assert state.proposals[pid].status == "open"
    payload = {**scoring.sealed("bank", "decoy")["payload"]}
    payload["ciphertext"] = model["payload"]["ciphertext"]
    decoy = bank.sign_document(payload, typ="cleanroom-dataset-manifest+jws")
    action = {"action": {"type": "register_dataset", "manifest": decoy}}
    phrase = r"^that ciphertext is another member's, proposed for registration$"
    refused(scoring, state, "bank", "proposal.create", action, phrase)
    # the vendor's own registration is not its own decoy
    proposal = state.proposals[pid]
    names = {p.fingerprint: n for n, p in scoring.fx.parties.items()}
    for fingerprint in sorted(proposal.approvers - set(proposal.approvals)):
        scoring.vote(state, names[fingerprint], pid)
    assert state.proposals[pid].status == "accepted"
