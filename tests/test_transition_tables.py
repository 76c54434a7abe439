"""The state machine's structure: every statement kind and every proposal action
has exactly one handler, named in a table; statuses are closed enumerations; the
digest auditors compare is kept apart from the views and covers what decides."""

from __future__ import annotations

import ast
import copy
import typing
from pathlib import Path
from typing import Any

import pytest

from cleanroom import governance
from cleanroom.errors import GovernanceError
from cleanroom.governance import consensus
from cleanroom.governance.model import (
    AnalysisStatus,
    JobStatus,
    MemberStatus,
    ProposalStatus,
    RoomStatus,
)
from cleanroom.governance.state import (
    ACTIONS,
    BROKER_TRANSITIONS,
    ENCLAVE_TRANSITIONS,
    MEMBER_TRANSITIONS,
    SERVICE_TRANSITIONS,
    TRANSITIONS,
    Author,
    RoomState,
    _action_rules,
)
from cleanroom.governance.statements import BODIES, Action
from cleanroom.governance.views import room_view
from tests.test_mutation_kills_state import World

GOVERNANCE = Path(governance.__file__).parent


def _action_types() -> set[str]:
    union = typing.get_args(Action)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return {
        typing.get_args(model.model_fields["type"].annotation)[0]
        for model in typing.get_args(union)
    }


def test_every_statement_kind_but_room_create_has_a_handler_and_no_table_names_another() -> None:
    named = {kind for table in TRANSITIONS.values() for kind in table}
    assert named == set(BODIES) - {"room.create"}


def test_each_table_entry_has_its_own_handler() -> None:
    handlers = [handler for table in TRANSITIONS.values() for handler in table.values()]
    assert len(handlers) == len({id(h) for h in handlers})


def test_the_tables_are_one_per_author_and_read_only() -> None:
    assert dict(TRANSITIONS) == {
        Author.SERVICE: SERVICE_TRANSITIONS,
        Author.ENCLAVE: ENCLAVE_TRANSITIONS,
        Author.BROKER: BROKER_TRANSITIONS,
        Author.MEMBER: MEMBER_TRANSITIONS,
    }
    with pytest.raises(TypeError):
        MEMBER_TRANSITIONS["job.complete"] = RoomState._complete  # type: ignore[index]


def test_only_members_make_governance_statements_and_only_enclaves_complete_jobs() -> None:
    assert set(SERVICE_TRANSITIONS) == {"key.deny", "job.fail"}
    assert set(ENCLAVE_TRANSITIONS) == {"job.complete", "job.fail"}
    assert set(BROKER_TRANSITIONS) == {"key.release", "key.deny"}
    assert "job.complete" not in MEMBER_TRANSITIONS


def test_every_action_has_exactly_one_check_and_one_apply() -> None:
    assert set(ACTIONS) == _action_types()
    for kind, rules in ACTIONS.items():
        assert rules.check.__name__ == f"_check_{kind}"
        assert rules.apply.__name__ == f"_apply_{kind}"
    functions = [f for rules in ACTIONS.values() for f in rules]
    assert len(functions) == len({id(f) for f in functions})


def test_an_action_no_table_names_is_refused() -> None:
    class Unknown:
        type = "grant_everything"

    with pytest.raises(GovernanceError, match=r"^the proposal's action is not one this room"):
        _action_rules(Unknown())
    with pytest.raises(GovernanceError, match=r"^the proposal's action is not one this room"):
        _action_rules(object())


def test_no_handler_is_found_by_its_name() -> None:
    """Dispatch goes through the tables only: no ``getattr`` picks a method by a
    name built from statement data."""
    for path in GOVERNANCE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr":
                target = node.args[0]
                assert not (isinstance(target, ast.Name) and target.id == "self"), path.name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("tables"))


def test_statuses_are_enumerations_after_a_fold(world: World) -> None:
    state = world.fresh()
    world.run(state)
    assert isinstance(state.status, RoomStatus)
    assert all(isinstance(m.status, MemberStatus) for m in state.members.values())
    assert all(isinstance(a.status, AnalysisStatus) for a in state.analyses.values())
    assert all(isinstance(j.status, JobStatus) for j in state.jobs.values())
    assert all(isinstance(p.status, ProposalStatus) for p in state.proposals.values())
    assert {j.status for j in state.jobs.values()} >= {JobStatus.RUNNING}


def _changes(state: RoomState) -> list[tuple[str, Any]]:
    """Changes no view shows, each of which decides something later."""
    job = next(iter(state.jobs.values()))
    deposit = next(iter(state.deposits.values()))
    member = next(iter(state.members.values()))
    proposal = next(iter(state.proposals.values()))
    return [
        ("a spent nonce", lambda s: s.nonces.add("f" * 64)),
        ("a job's nonce", lambda s: setattr(s.jobs[job.id], "nonce", "e" * 64)),
        ("a job's expected inputs", lambda s: setattr(s.jobs[job.id], "expected", ())),
        (
            "a deposit's platforms",
            lambda s: setattr(s.deposits[deposit.manifest], "platforms", frozenset()),
        ),
        (
            "a deposit's measurements",
            lambda s: setattr(s.deposits[deposit.manifest], "measurements", frozenset()),
        ),
        (
            "a member's invitation",
            lambda s: setattr(s.members[member.fingerprint], "invitation", "x"),
        ),
        (
            "a proposal's approvers",
            lambda s: setattr(s.proposals[proposal.id], "approvers", frozenset()),
        ),
        (
            "an analysis's approvals",
            lambda s: [setattr(a, "approved_by", frozenset()) for a in s.analyses.values()],
        ),
        ("the ledger time", lambda s: setattr(s, "last_time", s.last_time + 1)),
    ]


def test_the_digest_covers_what_decides_beyond_the_views(world: World) -> None:
    """Two states that could decide a later statement differently never share
    a digest, even where every view of them is the same."""
    state = world.fresh()
    world.run(state)
    for what, change in _changes(state):
        other = copy.deepcopy(state, {id(state.memo): None})
        change(other)
        assert room_view(other) == room_view(state), what
        assert other.digest() != state.digest(), what


def test_a_view_change_leaves_the_digest_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = world.fresh()
    before = state.digest()
    monkeypatch.setattr("cleanroom.governance.views.room_view", lambda s: {"changed": True})
    assert state.digest() == before
    imported = {
        node.module
        for node in ast.walk(ast.parse(Path(consensus.__file__).read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert "cleanroom.governance.views" not in imported


def test_the_digest_names_its_format(world: World) -> None:
    record = consensus.consensus_record(world.fresh())
    assert record["format"] == "cleanroom-state-digest/1"
    assert set(record) >= {
        "members",
        "datasets",
        "deposits",
        "analyses",
        "jobs",
        "proposals",
        "nonces",
    }
