"""Shared fixtures. Parties are created without a passphrase unless a test is
about passphrases, so the suite does not spend its time in Argon2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party

VECTORS = Path(__file__).parent / "vectors"


def load_vector(relative: str) -> Any:
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))


@pytest.fixture
def bank() -> Party:
    return Party.create("bank")


@pytest.fixture
def merchant() -> Party:
    return Party.create("merchant")
