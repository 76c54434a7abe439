"""The mutation runner's own parts that need no test run: which mutants it
makes, that each is one change that compiles, and how it reads its files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.mutation.runner import (
    CONFIG,
    ROOT,
    load_config,
    load_equivalents,
    mutants_of,
)

SOURCE = """\
def check(size: int, items: list[int], key: object) -> bool:
    if size < 0 or key is None:
        raise ValueError("bad")
    return size in items and size != 1
"""


def test_every_operator_makes_its_mutant() -> None:
    found = {m.operator: m for m in mutants_of("x.py", SOURCE)}
    assert set(found) == {
        "Lt->GtE",
        "Is->IsNot",
        "Or->And",
        "if:negate",
        "raise->pass",
        "In->NotIn",
        "NotEq->Eq",
        "And->Or",
        "return:negate",
        "const:0->1",
        "const:0->-1",
        "const:1->2",
        "const:1->0",
    }
    assert found["Lt->GtE"].id == "x.py:2:7:Lt->GtE"
    assert found["raise->pass"].context == 'raise ValueError("bad")'
    assert (found["const:1->2"].before, found["const:1->2"].after) == ("1", "2")


def test_each_mutant_is_one_change_that_compiles() -> None:
    original = ast.dump(ast.parse(SOURCE))
    mutants = mutants_of("x.py", SOURCE)
    for mutant in mutants:
        assert ast.dump(ast.parse(mutant.source)) != original
        compile(mutant.source, "x.py", "exec")
    assert len({m.source for m in mutants}) == len(mutants)
    assert [m.id for m in mutants] == [m.id for m in mutants_of("x.py", SOURCE)]  # stable


def test_type_checking_imports_are_left_alone() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    x = 0\n"
    assert mutants_of("x.py", source) == []


def test_an_equivalent_needs_a_reason_and_one_line(tmp_path: Path) -> None:
    path = tmp_path / "equivalent.txt"
    path.write_text("# comment\n\nm.py:1:0:if:negate the branch is dead\n")
    assert load_equivalents(path) == {"m.py:1:0:if:negate": "the branch is dead"}
    path.write_text("m.py:1:0:if:negate\n")
    with pytest.raises(SystemExit, match="listed without a reason"):
        load_equivalents(path)
    path.write_text("m.py:1:0:if:negate a\nm.py:1:0:if:negate b\n")
    with pytest.raises(SystemExit, match="listed twice"):
        load_equivalents(path)


def test_the_shipped_configuration_names_real_files() -> None:
    load_equivalents()  # well formed
    for target in load_config(CONFIG):
        assert (ROOT / "src" / "cleanroom" / target.module).is_file(), target.module
        for test in target.tests:
            assert (ROOT / test).is_file(), test
        assert target.threshold == 95.0
