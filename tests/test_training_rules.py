"""The check of a training analysis (pure): each refusal by its reason. The kind and
the job end to end are in tests/test_training.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from examples.clinical_data import FEATURES, OUTCOMES_SCHEMA

from cleanroom.datasets.schema import MODEL_SCHEMA, Schema
from cleanroom.errors import DeserializationError, PolicyError
from cleanroom.policy.check import Source
from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule
from cleanroom.policy.train import TrainSpec, check_train, parse_spec

SCHEMA = Schema.from_json(OUTCOMES_SCHEMA)
RULE = CustomRule(type="custom", disallowed_columns=["postcode"])
COLUMNS = ", ".join([*FEATURES, "responded"])
SQL = f"SELECT {COLUMNS} FROM trial ORDER BY patient_id"


def _spec(**changes: Any) -> TrainSpec:
    terms = {
        "algorithm": "gradient_boosting",
        "training": SQL,
        "label": "responded",
        "features": list(FEATURES),
        "model": "response",
        "params": {"n_estimators": 30, "learning_rate": 0.2},
        "seed": 5,
        **changes,
    }
    return TrainSpec.model_validate(terms)


def _sources(rule: Any = RULE, *, approved: bool = True, **more: Source) -> dict[str, Source]:
    return {"trial": Source("trial", SCHEMA, rule, approved), **more}


# -- the check of a spec -------------------------------------------------------------------


def test_a_canonical_spec_over_approved_inputs_passes() -> None:
    plan = check_train(_spec().text(), _sources())
    assert plan.spec == _spec()
    assert plan.training_sql == SQL
    assert check_train(_spec().text(), _sources(None)).spec == _spec()
    # a threshold of one suppresses nothing: the SQL still runs as written
    one = CustomRule(type="custom", min_distinct=1, disallowed_columns=["postcode"])
    assert check_train(_spec().text(), _sources(one)).training_sql == SQL


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(_spec().model_dump(mode="json")),  # spaces
        _spec().text()[:-1] + ',"seed":6}',  # a duplicate key
        _spec().text() + "\n",
        SQL,
    ],
)
def test_only_the_canonical_text_of_a_spec_is_accepted(text: str) -> None:
    with pytest.raises(PolicyError, match="training analysis"):
        parse_spec(text)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"algorithm": "neural_network"}, "algorithm"),
        ({"params": {"n_estimators": 0}}, r"'n_estimators' must be within \[1, 2000\]"),
        ({"params": {"n_estimators": 2001}}, r"'n_estimators' must be within"),
        ({"params": {"learning_rate": 2}}, r"'learning_rate' must be within"),
        ({"params": {"n_estimators": 10.5}}, "takes no parameter 'n_estimators' of that type"),
        ({"params": {"C": 1.0}}, "gradient_boosting takes no parameter 'C'"),
        ({"params": {"objective": 1}}, "takes no parameter 'objective'"),
        (
            {"algorithm": "logistic_regression", "params": {"n_estimators": 5}},
            "logistic_regression takes no parameter 'n_estimators'",
        ),
        ({"holdout": 0.0}, "holdout"),
        ({"holdout": 0.6}, "holdout"),
        ({"features": ["bmi", "BMI"]}, "each feature is named once"),
        ({"features": ["bmi", "Responded"]}, "cannot also be a feature"),
        ({"features": []}, "features"),
        ({"model": "../x"}, "model"),
        ({"seed": -1}, "seed"),
        ({"deliver": "weights"}, "deliver"),
        ({"training": ""}, "training"),
    ],
)
def test_a_malformed_spec_is_refused_by_name(changes: dict[str, Any], phrase: str) -> None:
    terms = {**_spec().model_dump(mode="json"), **changes}
    text = json.dumps(terms, sort_keys=True, separators=(",", ":"))
    with pytest.raises(PolicyError, match=phrase):
        check_train(text, _sources())


@pytest.mark.parametrize(
    ("rule", "approved", "phrase"),
    [
        (
            AggregationRule(type="aggregation", dimensions=["age_band"], min_distinct=5),
            True,
            "aggregation rule of 'trial' admits SQL it can check, not a training analysis",
        ),
        (ListRule(type="list", list_columns=["age_band"]), True, "list rule of 'trial'"),
        (RULE, False, "owner of 'trial' has not approved this analysis"),
        (None, False, "owner of 'trial' has not approved this analysis"),
        (CustomRule(type="custom", min_distinct=2), True, "threshold of 2"),
        ({"type": "later"}, True, "not one a training analysis understands"),
    ],
)
def test_inputs_that_do_not_admit_training_are_refused(
    rule: Any, approved: bool, phrase: str
) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_train(_spec().text(), _sources(rule, approved=approved))


def test_no_input_no_training_and_no_model_read() -> None:
    with pytest.raises(PolicyError, match="at least one input"):
        check_train(_spec().text(), {})
    model = Source("triage", MODEL_SCHEMA, None, owner_approved=True, model=object())  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="'triage' is a model"):
        check_train(_spec().text(), _sources(triage=model))


NEVER = "'postcode' is a column an input never lets out"


@pytest.mark.parametrize(
    ("sql", "phrase"),
    [
        # a never-output column in the training set would leave through the model
        ("SELECT * FROM trial", "postcode may never be output"),
        ("SELECT bmi, postcode AS responded FROM trial", "postcode may never be output"),
        ("SELECT bmi, responded FROM other", "'other' is not an input"),
        ("SELECT * FROM read_csv('/etc/passwd')", "table functions are not allowed"),
        ("SELECT bmi FROM trial; SELECT 1", "exactly one SELECT"),
        ("COPY trial TO '/tmp/x.csv'", "exactly one SELECT"),
        ("SELECT bmi, responded FROM trial UNION SELECT bmi, responded FROM trial", "set oper"),
        # a never-output column is read in no clause: a model carries what its SQL touches
        ("SELECT bmi, responded FROM trial WHERE postcode = 'PC1000'", NEVER),
        ("SELECT bmi, responded FROM trial ORDER BY PostCode", NEVER),
        ("SELECT bmi, responded FROM trial GROUP BY bmi, responded, postcode", NEVER),
        ("SELECT bmi, responded FROM (SELECT * FROM trial) AS t", NEVER),
        (
            "SELECT t.bmi, t.responded FROM trial AS t JOIN trial AS u ON t.postcode = u.postcode",
            NEVER,
        ),
        ("SELECT t.bmi, t.responded FROM trial AS t JOIN trial AS u USING (postcode)", NEVER),
        ("SELECT bmi, responded FROM trial NATURAL JOIN trial AS u", NEVER),
        # the engine names an unnamed expression otherwise than the check
        ("SELECT bmi, bmi + 0, responded FROM trial", "name every computed column"),
        ("SELECT a.bmi, b.BMI, a.responded FROM trial AS a, trial AS b", "each column once"),
    ],
)
def test_training_sql_the_room_refuses_is_refused(sql: str, phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_train(_spec(training=sql, features=["bmi"]).text(), _sources())


def test_named_expressions_and_unrestricted_inputs_pass() -> None:
    named = _spec(training="SELECT bmi + 0 AS b, responded FROM trial", features=["b"])
    assert check_train(named.text(), _sources()).spec == named
    # with no never-output column, every clause is the SQL check's alone
    free = CustomRule(type="custom")
    natural = "SELECT bmi, responded FROM trial NATURAL JOIN trial AS u WHERE postcode <> ''"
    spec = _spec(training=natural, features=["bmi"])
    assert check_train(spec.text(), _sources(free)).spec == spec
    every = _spec(training="SELECT * FROM trial", features=["bmi"])
    assert check_train(every.text(), _sources(free)).spec == every


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"label": "outcome"}, "'outcome' is not a column of the training set"),
        ({"features": ["bmi", "weight"]}, "'weight' is not a column of the training set"),
    ],
)
def test_label_and_features_are_columns_of_the_training_set(
    changes: dict[str, Any], phrase: str
) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_train(_spec(**changes).text(), _sources())
    # without regard to case, as SQL resolves names
    assert check_train(_spec(label="RESPONDED").text(), _sources())


def test_a_check_that_breaks_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = {"trial": Source("trial", None, RULE, owner_approved=True)}  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="could not be checked, so it is refused"):
        check_train(_spec().text(), broken)
    # a failure in the training check's own steps, past the SQL check's wrapper
    import cleanroom.policy.check as sql_check  # noqa: PLC0415

    def breaks(*_: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(sql_check, "qualified", breaks)
    with pytest.raises(PolicyError, match=r"refused \(KeyError\)"):
        check_train(_spec().text(), _sources())


def test_the_spec_bounds_sql_as_the_sql_check_does() -> None:
    from cleanroom.policy import grammar, train  # noqa: PLC0415

    assert train.MAX_SQL_CHARS == grammar.MAX_SQL_CHARS


def test_the_room_refuses_a_training_analysis_in_a_language_it_does_not_know() -> None:
    from cleanroom.governance.statements import AddAnalysis  # noqa: PLC0415
    from cleanroom.wire import parse_model  # noqa: PLC0415

    terms = {
        "type": "add_analysis",
        "name": "m",
        "language": "train",
        "text": _spec().text(),
        "inputs": ["trial"],
        "recipients": ["a" * 64],
    }
    assert parse_model(AddAnalysis, terms, what="x").language == "train"
    with pytest.raises(DeserializationError, match="language"):
        parse_model(AddAnalysis, {**terms, "language": "fit"}, what="x")


# -- in the room's state machine ------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.test_scoring_rules import ScoringWorld  # noqa: PLC0415

    return ScoringWorld(tmp_path_factory.mktemp("training-state"))


def _training(text: str, inputs: list[str], world: Any) -> dict[str, Any]:
    return {
        "type": "add_analysis",
        "name": "fit",
        "language": "train",
        "text": text,
        "inputs": inputs,
        "recipients": [world.fx.fp("bank")],
    }


def test_the_room_checks_a_training_analysis_and_the_enclave_runs_what_it_returned(
    world: Any,
) -> None:
    from tests.test_mutation_kills_state import refused  # noqa: PLC0415

    state = world.fresh()
    text = _spec(training="SELECT x, 1 AS y FROM records", label="y", features=["x"]).text()
    world.decide(state, "analyst", _training(text, ["records"], world), ["bank"])
    assert state.analyses["fit"].language == "train"
    checked = state.check_policy(text, ["records"], [], None, None, language="train")
    assert checked == text  # the training SQL as the check returned it: here as written
    # the same spec as SQL, or over the model, is refused at proposal
    as_sql = {**_training(text, ["records"], world), "language": "sql", "name": "fit2"}
    refused(world, state, "analyst", "proposal.create", {"action": as_sql}, "exactly one SELECT")
    over_model = _training(text, ["records", "toy"], world)
    refused(world, state, "analyst", "proposal.create", {"action": over_model}, "'toy' is a model")
    with pytest.raises(PolicyError, match="no check exists for 'fit' analyses"):
        state.check_policy(text, ["records"], [], None, None, language="fit")


def test_the_check_hands_the_enclave_the_sql_it_checked() -> None:
    from cleanroom.policy.train import TrainPlan, to_run  # noqa: PLC0415

    spec = _spec()
    assert to_run(TrainPlan(spec, "SELECT 1")) == _spec(training="SELECT 1").text()


def _bounds() -> list[tuple[str, str, float, float, float, float]]:
    """Each parameter: its algorithm, name, the range's ends, and the values just out."""
    from cleanroom.policy.train import FLOAT_PARAMS, INT_PARAMS  # noqa: PLC0415

    cases = [
        (algorithm, name, low, high, low - 1, high + 1)
        for algorithm, names in INT_PARAMS.items()
        for name, (low, high) in names.items()
    ]
    cases += [
        (algorithm, name, low, high, low / 2, high * 2)
        for algorithm, names in FLOAT_PARAMS.items()
        for name, (low, high) in names.items()
    ]
    return cases


EXPECTED_RANGES = {
    ("logistic_regression", "max_iter"): (1, 10_000),
    ("logistic_regression", "C"): (1e-6, 1e6),
    ("gradient_boosting", "n_estimators"): (1, 2_000),
    ("gradient_boosting", "max_depth"): (-1, 32),
    ("gradient_boosting", "num_leaves"): (2, 1_024),
    ("gradient_boosting", "min_child_samples"): (1, 1_000_000),
    ("gradient_boosting", "learning_rate"): (1e-4, 1.0),
}


def test_each_parameter_has_the_documented_range() -> None:
    assert {(a, n): (lo, hi) for a, n, lo, hi, _, _ in _bounds()} == EXPECTED_RANGES


@pytest.mark.parametrize(("algorithm", "name", "low", "high", "under", "over"), _bounds())
def test_a_parameter_is_accepted_at_its_ends_and_refused_past_them(
    algorithm: str, name: str, low: float, high: float, under: float, over: float
) -> None:
    def spec(value: float) -> str:
        number = int(value) if float(value).is_integer() else value
        terms = {
            **_spec().model_dump(mode="json"),
            "algorithm": algorithm,
            "params": {name: number},
        }
        return json.dumps(terms, sort_keys=True, separators=(",", ":"))

    for value in (low, high):
        assert parse_spec(TrainSpec.model_validate_json(spec(value)).text()).params[name] == value
    for value in (under, over):
        with pytest.raises(PolicyError, match=f"parameter '{name}' must be within"):
            check_train(spec(value), _sources())


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({"features": ["bmi"]}, True),
        ({"seed": 0}, True),
        ({"seed": 2**31 - 1}, True),
        ({"seed": 2**31}, False),
        ({"holdout": 0.5}, True),
        ({"holdout": 0.01}, True),
    ],
)
def test_the_spec_fields_ends(changes: dict[str, Any], accepted: bool) -> None:
    terms = {**_spec().model_dump(mode="json"), **changes}
    text = json.dumps(terms, sort_keys=True, separators=(",", ":"))
    if accepted:
        assert check_train(text, _sources()).spec.model_dump(mode="json") == terms
    else:
        with pytest.raises(PolicyError, match="seed"):
            check_train(text, _sources())


def test_a_spec_from_its_parts_takes_the_documented_defaults() -> None:
    from cleanroom.policy.train import training_spec  # noqa: PLC0415

    spec = training_spec(training_sql=SQL, label="responded", features=["bmi"], model="m")
    built = TrainSpec(
        algorithm="gradient_boosting", training=SQL, label="y", features=["x"], model="m"
    )
    for made in (spec, built):
        assert (made.algorithm, made.params, made.seed, made.holdout, made.deliver) == (
            "gradient_boosting",
            {},
            0,
            0.2,
            "model",
        )
