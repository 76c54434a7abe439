"""The service's memo of policy check outcomes: start-up folds every room without
parsing every stored analysis again, and only the service's own ledger uses it
(an operator who edits the memo changes nothing an auditor accepts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cleanroom.ledger import Ledger, SQLiteStore
from cleanroom.ledger.log import QuarantinedError
from cleanroom.ledger.verify import verify_export
from cleanroom.policy.memo import CheckMemo, check_code
from tests.test_key_release import JobRoom


def _reopen(jr: JobRoom, tmp_path: Path, memo: CheckMemo | None) -> Ledger:
    store = SQLiteStore(tmp_path / "ledger" / "ledger.sqlite3")
    return Ledger(store, jr.ledger.service, clock=jr.clock, memo=memo)


def _rows(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT key, ok, value FROM outcomes ORDER BY key"))


def test_a_restart_takes_check_outcomes_from_the_memo(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    path = tmp_path / "checks.sqlite3"
    memo = CheckMemo(path, namespace="code-1")
    first = _reopen(jr, tmp_path, memo)
    assert "count" in first.state(jr.room.room).analyses  # folded, outcomes remembered
    rows = _rows(path)
    assert rows
    assert all(key.startswith("code-1:") for key, _, _ in rows)
    assert {ok for _, ok, _ in rows} == {1}
    # the operator flips a remembered outcome: the service's own restart believes it
    # (and quarantines the room, whose accepted analysis its memo now refuses) ...
    with sqlite3.connect(path) as db:
        db.execute("UPDATE outcomes SET ok = 0, value = 'edited by the operator'")
    with pytest.raises(QuarantinedError, match="edited by the operator"):
        _reopen(jr, tmp_path, memo).state(jr.room.room)
    # ... while every other fold (an auditor, a ledger without the memo) checks afresh
    verified = verify_export(jr.ledger.export(jr.room.room), jr.ledger.service.identity)
    assert "count" in verified.state.analyses
    assert verified.state.memo is None
    assert "count" in _reopen(jr, tmp_path, None).state(jr.room.room).analyses
    memo.close()


def test_another_version_of_the_code_checks_afresh(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    path = tmp_path / "checks.sqlite3"
    old = CheckMemo(path, namespace="code-1")
    _reopen(jr, tmp_path, old).state(jr.room.room)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE outcomes SET ok = 0, value = 'stale outcome'")
    newer = CheckMemo(path, namespace="code-2")
    assert "count" in _reopen(jr, tmp_path, newer).state(jr.room.room).analyses
    assert {key.split(":")[0] for key, _, _ in _rows(path)} == {"code-1", "code-2"}
    old.close()
    newer.close()


def test_the_namespace_names_the_code_and_the_sql_engines() -> None:
    code = check_code()
    assert code.startswith("insecure-virtual:")
    assert "sqlglot=" in code
    assert "opendp=" in code
