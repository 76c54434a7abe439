"""Seeded synthetic data for the clinical-trial scenario (the demo and its tests).

A hospital's patient records (one row per consenting patient) and a model
vendor's own, separate training data drawn from the same kind of population.
The vendor's label says who would qualify for a trial of a type-2 diabetes
drug: adults of 40 to 79 with an HbA1c of 7.0 to 10.5 %, kidney function
(eGFR) of at least 45, and systolic blood pressure under 160; 3 % of labels
are flipped, as real screening data is noisy. Nothing here is a real person.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

FEATURES = ("age_band", "bmi", "hba1c", "systolic_bp", "egfr", "chronic_conditions")

PATIENTS_SCHEMA: dict[str, Any] = {
    "identity_column": "patient_id",
    "columns": [
        {"name": "patient_id", "type": "string", "nullable": False},
        {"name": "postcode", "type": "string", "nullable": False},
        {"name": "age_band", "type": "int32", "nullable": False, "min": 0, "max": 9},
        {"name": "bmi", "type": "float64", "nullable": False, "min": 10, "max": 80},
        {"name": "hba1c", "type": "float64", "nullable": False, "min": 3, "max": 20},
        {"name": "systolic_bp", "type": "int32", "nullable": False, "min": 60, "max": 260},
        {"name": "egfr", "type": "float64", "nullable": False, "min": 0, "max": 150},
        {"name": "chronic_conditions", "type": "int32", "nullable": False, "min": 0, "max": 20},
    ],
}
# the hospital's rule: scoring only where it approved the exact analysis; postcodes never leave
PATIENTS_RULE: dict[str, Any] = {"type": "custom", "disallowed_columns": ["postcode"]}


def _population(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    age_band = rng.integers(1, 10, rows).astype(np.int32)  # 10-19 ... 90-99
    diabetic = rng.random(rows) < 0.18 + 0.03 * age_band
    hba1c = np.where(diabetic, rng.normal(8.2, 1.4, rows), rng.normal(5.4, 0.4, rows))
    return {
        "age_band": age_band,
        "bmi": np.clip(rng.normal(27.5, 5.0, rows), 10, 80).round(1),
        "hba1c": np.clip(hba1c, 3, 20).round(1),
        "systolic_bp": np.clip(rng.normal(128 + 3 * age_band, 16, rows), 60, 260).astype(np.int32),
        "egfr": np.clip(rng.normal(105 - 6 * age_band, 18, rows), 0, 150).round(1),
        "chronic_conditions": np.clip(rng.poisson(0.3 * age_band, rows), 0, 20).astype(np.int32),
    }


def eligible(columns: dict[str, np.ndarray]) -> np.ndarray:
    """The vendor's criteria, on plaintext columns."""
    return (
        (columns["age_band"] >= 4)
        & (columns["age_band"] <= 7)
        & (columns["hba1c"] >= 7.0)
        & (columns["hba1c"] <= 10.5)
        & (columns["egfr"] >= 45)
        & (columns["systolic_bp"] < 160)
    )


def patients(rows: int, seed: int = 7) -> pa.Table:
    """The hospital's records: ``rows`` consenting patients, in PATIENTS_SCHEMA."""
    rng = np.random.default_rng(seed)
    columns = _population(rows, rng)
    ids = np.char.add("P", np.char.zfill(np.arange(rows).astype(str), 7))
    postcodes = np.char.add("PC", rng.integers(1000, 9999, rows).astype(str))
    return pa.table({"patient_id": ids, "postcode": postcodes, **columns})


# a trial sponsor's outcomes: who responded to the drug (the training scenario's data)
OUTCOMES_SCHEMA: dict[str, Any] = {
    "identity_column": "patient_id",
    "columns": [
        *PATIENTS_SCHEMA["columns"],
        {"name": "responded", "type": "int32", "nullable": False, "min": 0, "max": 1},
    ],
}


def outcomes(rows: int, seed: int = 13) -> pa.Table:
    """Trial outcomes in OUTCOMES_SCHEMA: patients who responded are likelier among the
    eligible, with a lower HbA1c and better kidney function (5 % of labels flipped)."""
    rng = np.random.default_rng(seed)
    table = patients(rows, seed)
    columns = {f: table.column(f).to_numpy() for f in FEATURES}
    odds = 1.5 * eligible(columns) - 0.4 * (columns["hba1c"] - 7) + 0.02 * (columns["egfr"] - 60)
    responded = (odds + rng.normal(0, 1, rows) > 0.5) ^ (rng.random(rows) < 0.05)
    return table.append_column("responded", pa.array(responded.astype(np.int32)))


def vendor_training_set(rows: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """The vendor's own synthetic data: a feature matrix (FEATURES order) and labels."""
    rng = np.random.default_rng(seed)
    columns = _population(rows, rng)
    labels = eligible(columns) ^ (rng.random(rows) < 0.03)
    matrix = np.column_stack([columns[f].astype(np.float32) for f in FEATURES])
    return matrix, labels.astype(np.int64)


def vendor_model(rows: int = 20_000, seed: int = 11) -> tuple[Any, bytes]:
    """The vendor's gradient-boosted classifier and its ONNX bytes (needs the ``[ml]`` extra)."""
    from sklearn.ensemble import GradientBoostingClassifier  # noqa: PLC0415

    from cleanroom.models.convert import to_onnx  # noqa: PLC0415

    matrix, labels = vendor_training_set(rows, seed)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=seed)
    model.fit(matrix, labels)
    return model, to_onnx(model, features=FEATURES)
