"""The check of a Python analysis (pure): a bundle's text, file names, the inputs
that admit code, the outputs. The kind in the real confined child and the jobs end to
end are in tests/test_python_jobs.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from examples.clinical_data import PATIENTS_RULE, PATIENTS_SCHEMA

from cleanroom.datasets.schema import MODEL_SCHEMA, Schema
from cleanroom.errors import PolicyError
from cleanroom.policy.check import Source
from cleanroom.policy.python import Bundle, check_python, parse_bundle
from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule

PATIENTS = Schema.from_json(PATIENTS_SCHEMA)
COUNT_BY_AGE = """\
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

inputs, output = Path(sys.argv[1]), Path(sys.argv[2])
table = pq.read_table(inputs / "patients.parquet")
counts = table.group_by("age_band").aggregate([("patient_id", "count")])
counts = counts.rename_columns(["age_band", "patients"]).sort_by("age_band")
pq.write_table(counts, output / "result.parquet")
"""
OUTPUT = [{"name": "age_band", "type": "int32"}, {"name": "patients", "type": "int64"}]


def _bundle(code: str = COUNT_BY_AGE, **changes: Any) -> Bundle:
    terms = {"entry": "main.py", "files": {"main.py": code}, "output": OUTPUT, **changes}
    return Bundle.model_validate(terms)


def _sources(rule: Any = None, *, approved: bool = True, **more: Source) -> dict[str, Source]:
    rule = rule if rule is not None else CustomRule.model_validate(PATIENTS_RULE)
    return {"patients": Source("patients", PATIENTS, rule, approved), **more}


# -- the check of a bundle --------------------------------------------------------------


def test_a_canonical_bundle_over_approved_inputs_passes() -> None:
    plan = check_python(_bundle().text(), _sources())
    assert plan.columns == [("age_band", "int32"), ("patients", "int64")]
    no_rule = {"patients": Source("patients", PATIENTS, None, owner_approved=True)}
    assert check_python(_bundle().text(), no_rule).bundle == _bundle()


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(_bundle().model_dump(mode="json")),  # spaces
        _bundle().text()[:-1] + ',"entry":"other.py"}',  # a duplicate key
        _bundle().text() + "\n",
        "print('hello')",
    ],
)
def test_only_the_canonical_text_of_a_bundle_is_accepted(text: str) -> None:
    with pytest.raises(PolicyError, match="Python analysis"):
        parse_bundle(text)


@pytest.mark.parametrize(
    "name", ["../escape.py", "/etc/passwd.py", "main.txt", "a//b.py", "a/../b.py", "-x.py", ""]
)
def test_a_file_name_outside_the_bundle_is_refused(name: str) -> None:
    terms = {"entry": "main.py", "files": {"main.py": "pass", name: "pass"}, "output": OUTPUT}
    with pytest.raises(PolicyError, match="Python analysis"):
        parse_bundle(json.dumps(terms, sort_keys=True, separators=(",", ":")))


@pytest.mark.parametrize(
    ("bundle", "phrase"),
    [
        (_bundle(entry="other.py"), "entry 'other.py' is not one of the bundle's files"),
        (_bundle(output=[*OUTPUT, {"name": "Patients", "type": "int64"}]), "declared twice"),
        (_bundle(output=[{"name": "POSTCODE", "type": "string"}]), "never lets out"),
    ],
)
def test_a_bundle_the_check_refuses(bundle: Bundle, phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_python(bundle.text(), _sources())


def test_the_proposer_learns_of_a_syntax_error_before_signing() -> None:
    from cleanroom.policy.python import check_syntax  # noqa: PLC0415

    check_syntax(_bundle())
    with pytest.raises(PolicyError, match=r"^main.py is not valid Python \(line 1\)$"):
        check_syntax(_bundle("def broken(:\n"))
    # not the ledger's business: every verifier's Python parses differently
    assert check_python(_bundle("def broken(:\n").text(), _sources()).columns


def test_an_unknown_output_type_is_refused_by_name() -> None:
    terms = {
        "entry": "main.py",
        "files": {"main.py": "pass"},
        "output": [{"name": "x", "type": "pickle"}],
    }
    with pytest.raises(PolicyError, match=r"output\.0\.type"):
        parse_bundle(json.dumps(terms, sort_keys=True, separators=(",", ":")))


@pytest.mark.parametrize(
    ("rule", "approved", "phrase"),
    [
        (
            AggregationRule(type="aggregation", dimensions=["age_band"], min_distinct=5),
            True,
            "aggregation rule of 'patients' admits SQL it can check, not a Python analysis",
        ),
        (ListRule(type="list", list_columns=["age_band"]), True, "list rule of 'patients'"),
        (CustomRule(type="custom"), False, "owner of 'patients' has not approved this analysis"),
        (CustomRule(type="custom", min_distinct=2), True, "threshold of 2"),
        ({"type": "later"}, True, "not one a Python analysis understands"),
    ],
)
def test_inputs_that_do_not_admit_code_are_refused(rule: Any, approved: bool, phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_python(_bundle().text(), _sources(rule, approved=approved))
    # a threshold of one is no threshold
    one = _sources(CustomRule(type="custom", min_distinct=1))
    assert check_python(_bundle().text(), one).columns


def test_no_input_no_run_and_no_model_read() -> None:
    with pytest.raises(PolicyError, match="reads at least one input"):
        check_python(_bundle().text(), {})
    from tests.test_scoring_rules import _toy_outputs  # noqa: PLC0415

    model = Source(
        "toy", MODEL_SCHEMA, None, owner_approved=True, model=_toy_outputs(("l", "int64", ("b",)))
    )
    with pytest.raises(PolicyError, match="'toy' is a model: only a scoring analysis reads"):
        check_python(_bundle().text(), _sources(toy=model))


def test_a_check_that_breaks_is_a_refusal() -> None:
    broken = {"patients": Source("patients", PATIENTS, object(), owner_approved=True)}  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        check_python(_bundle().text(), broken)
    odd = {"patients": "not a source"}
    with pytest.raises(
        PolicyError, match=r"could not be checked, so it is refused \(AttributeError\)"
    ):
        check_python(_bundle().text(), odd)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("terms", "phrase"),
    [
        ({"entry": "main.py", "files": {}, "output": OUTPUT}, "invalid at files"),
        ({"entry": "main.py", "files": {"main.py": "pass"}, "output": []}, "invalid at output"),
    ],
)
def test_a_bundle_needs_code_and_an_output(terms: dict[str, Any], phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        parse_bundle(json.dumps(terms, sort_keys=True, separators=(",", ":")))
