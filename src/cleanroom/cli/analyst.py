"""The analyst's development loop: read a dataset's schema and rule, get mock
rows, and dry-run a query through the room's own policy check.

    cleanroom dataset schema transactions --room quickstart
    cleanroom dataset mock transactions --room quickstart -o transactions.mock.csv
    cleanroom analysis check --sql spend.sql --room quickstart

Invariants: every schema and rule shown or used here comes from the room's
ledger as this party verified it (``Room.audit.verify()``: signatures, Merkle
proofs, no rollback or fork), never from the service's unverified views; the
check is :meth:`cleanroom.governance.datasets.DatasetRules.check_policy`, the
function the room runs on a proposal and the enclave before a job, on the
same verified state; mock rows come from schemas and rules alone
(:mod:`cleanroom.datasets.mock`), never from data; the dry run runs the SQL
the check returned, in a local DuckDB with external access off, over mocks
only. Like every command module, importing this one loads nothing heavy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cleanroom.cli.rooms import KEYSTORE, ROOM, SERVICE, _room
from cleanroom.cli.ui import console, emit_json

if TYPE_CHECKING:
    import pyarrow as pa

    from cleanroom.client import Room
    from cleanroom.governance.model import Dataset
    from cleanroom.governance.state import RoomState
    from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule

    Rule = AggregationRule | ListRule | CustomRule

JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
SEED = typer.Option(0, "--seed", help="The mock data's seed: the same seed, the same rows.")
ROWS = typer.Option(
    None, "--rows", min=1, max=1_000_000, help="Mock rows per dataset (default: 1,000 or more)."
)
SHOWN_ROWS = 20  # result rows printed by `analysis check` (--json has them all)


def register(dataset_app: typer.Typer, analysis_app: typer.Typer) -> None:
    """Add the analyst's commands to the ``dataset`` and ``analysis`` groups."""
    dataset_app.command("schema")(dataset_schema)
    dataset_app.command("mock")(dataset_mock)
    analysis_app.command("check")(analysis_check)


# -- the verified room ----------------------------------------------------------------


@contextmanager
def _opened(service: str, keystore: Path, room: str) -> Iterator[Room]:
    """The room, its history checked against what this party saw; closed after."""
    handle = _room(service, keystore, room)
    try:
        yield handle
    finally:
        handle.client.close()


def _verified(handle: Room) -> RoomState:
    """The room's state folded from its whole ledger, verified here."""
    return handle.audit.verify().state


def _dataset(handle: Room, state: RoomState, ref: str) -> Dataset:
    from cleanroom.client import names  # noqa: PLC0415 - the SDK package

    listed = [{"name": name} for name in state.datasets]
    found = names.dataset_name(listed, ref, handle.proposals())  # proposals: only for a hint
    dataset = state.datasets[found]
    if not dataset.versions:
        from cleanroom.errors import GovernanceError  # noqa: PLC0415

        raise GovernanceError(f"dataset {found!r} has no registered version yet")
    return dataset


def _member_name(state: RoomState, fingerprint: str) -> str:
    member = state.members.get(fingerprint)
    return member.identity.name if member is not None else fingerprint[:12]


def _mock(state: RoomState, dataset: Dataset, rows: int | None, seed: int) -> pa.Table:
    from cleanroom.client.mocks import mock_of  # noqa: PLC0415

    return mock_of(state, dataset, rows, seed)


# -- the rule in words ----------------------------------------------------------------


def describe_rule(rule: Rule | None, identity: str) -> list[str]:
    """A dataset's analysis rule as short sentences, for people."""
    from cleanroom.policy.rules import AggregationRule, ListRule  # noqa: PLC0415

    if rule is None:
        return [
            "no rule: only analyses whose exact SQL the owner approves by vote may read it",
            "no threshold is applied",
        ]
    lines: list[str]
    if isinstance(rule, AggregationRule):
        by_column: dict[str, list[str]] = {}
        for allowance in rule.aggregates:
            function = (
                "COUNT(DISTINCT)"
                if allowance.function == "count_distinct"
                else allowance.function.upper()
            )
            for column in allowance.columns:
                by_column.setdefault(column, []).append(function)
        allowed = "; ".join(f"{'/'.join(fs)} over {c}" for c, fs in by_column.items())
        lines = [f"aggregation only: {allowed or 'no aggregate allowed'}"]
        lines.append(
            f"group and filter by: {', '.join(rule.dimensions)}"
            if rule.dimensions
            else "no dimensions: no grouping or filtering on its columns"
        )
        lines.append(
            f"at least {rule.min_distinct} distinct {identity} per output row "
            "(smaller groups are suppressed)"
        )
        for column, k in rule.column_thresholds.items():
            lines.append(f"at least {k} distinct {identity} when {column} is output")
    elif isinstance(rule, ListRule):
        lines = [f"list: rows may be output, only the columns {', '.join(rule.list_columns)}"]
    else:
        lines = ["custom: only analyses whose exact SQL the owner approves by vote"]
        if rule.min_distinct:
            lines.append(f"at least {rule.min_distinct} distinct {identity} per output row")
        if rule.disallowed_columns:
            lines.append(f"never output: {', '.join(rule.disallowed_columns)}")
    join = getattr(rule, "join_columns", [])
    if join:
        lines.append(f"join on: {', '.join(join)} (join columns are never output)")
    scalars = getattr(rule, "scalar_functions", [])
    if scalars:
        lines.append(f"functions allowed on dimensions: {', '.join(scalars)}")
    if rule.recipients is not None:
        lines.append(f"results only to {len(rule.recipients)} named recipient(s)")
    return lines


def _column_role(rule: Rule | None, identity: str, column: str) -> str:
    from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule  # noqa: PLC0415

    roles = ["identity"] if column == identity else []
    if isinstance(rule, AggregationRule):
        functions = [
            a.function.replace("count_distinct", "count distinct")
            for a in rule.aggregates
            if column in a.columns
        ]
        if functions:
            roles.append("aggregate: " + ", ".join(functions))
        if column in rule.dimensions:
            roles.append("dimension")
    if isinstance(rule, ListRule) and column in rule.list_columns:
        roles.append("listed")
    if isinstance(rule, CustomRule) and column in rule.disallowed_columns:
        roles.append("never output")
    if column in getattr(rule, "join_columns", []):
        roles.append("join")
    return "; ".join(roles) or "-"


def _domain(column: Any) -> str:
    if column.allowed is not None:
        return "one of " + ", ".join(str(v) for v in column.allowed)
    if column.minimum is not None and column.maximum is not None:
        return f"{column.minimum} to {column.maximum}"
    if column.minimum is not None:
        return f">= {column.minimum}"
    if column.maximum is not None:
        return f"<= {column.maximum}"
    return ""


# -- dataset schema -------------------------------------------------------------------


def dataset_schema(
    dataset: str = typer.Argument(..., help="The dataset's name in the room."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    as_json: bool = JSON,
) -> None:
    """Show a dataset's columns, types and value domains, and its owner's rule in words.

    Read from the room's ledger as you verify it. The query check
    (`cleanroom analysis check`) applies exactly this rule.

    Example: cleanroom dataset schema transactions --room quickstart --as keys/analyst
    """
    with _opened(service, keystore, room) as handle:
        state = _verified(handle)
        found = _dataset(handle, state, dataset)
    latest = found.versions[-1]
    schema = latest.manifest.schema
    rule = found.rule
    if as_json:
        emit_json(
            {
                "name": found.name,
                "owner": _member_name(state, found.owner),
                "version": latest.version,
                "rows": latest.manifest.rows,
                "consent": found.consent,
                "schema": schema.to_json(),
                "rule": rule.model_dump(mode="json") if rule is not None else None,
                "rule_text": describe_rule(rule, schema.identity_column),
            }
        )
        return
    from cleanroom.cli.ui import table  # noqa: PLC0415

    console.print(
        f"[bold]{found.name}[/] (owner {_member_name(state, found.owner)}, version "
        f"{latest.version}, {latest.manifest.rows:,} rows"
        f"{'' if found.consent else ', [red]consent revoked[/]'})",
        highlight=False,
    )
    shown = table("column", "type", "nullable", "values", "in the rule", "description")
    for column in schema.columns:
        shown.add_row(
            column.name,
            column.type,
            "yes" if column.nullable else "no",
            _domain(column),
            _column_role(rule, schema.identity_column, column.name),
            column.description,
        )
    console.print(shown)
    console.print("[bold]rule:[/]")
    for line in describe_rule(rule, schema.identity_column):
        console.print(f"  {line}", highlight=False)


# -- dataset mock ---------------------------------------------------------------------


def dataset_mock(
    dataset: str = typer.Argument(..., help="The dataset's name in the room."),
    output: Path = typer.Option(..., "--out", "--output", "-o", help="A .csv or .parquet file."),
    rows: int | None = ROWS,
    seed: int = SEED,
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
) -> None:
    """Write mock rows for a dataset, made up from its schema and rule alone.

    Same columns, types and value domains as the real data; the values mean
    nothing and are never derived from the data. The same seed gives the same rows.

    Example: cleanroom dataset mock transactions --room quickstart -o transactions.mock.csv
    --as keys/analyst
    """
    with _opened(service, keystore, room) as handle:
        state = _verified(handle)
        found = _dataset(handle, state, dataset)
    mock = _mock(state, found, rows, seed)
    _write_table(mock, output)
    console.print(
        f"Wrote {mock.num_rows:,} mock rows of {found.name} to {output} (seed {seed}); "
        "made up from the schema, not the data",
        highlight=False,
    )


def _write_table(data: pa.Table, output: Path) -> None:
    import pyarrow.csv as pacsv  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from cleanroom.fs import atomic_path  # noqa: PLC0415

    suffix = output.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise typer.BadParameter(f"{output}: write a .csv or .parquet file", param_hint="--out")
    with atomic_path(output) as tmp:
        if suffix == ".csv":
            pacsv.write_csv(data, tmp)
        else:
            pq.write_table(data, tmp)


# -- analysis check -------------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    """The checked SQL run over mocks: its rows, and the rows of the query as
    written that the threshold removed."""

    sql: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    suppressed: list[tuple[Any, ...]]


def dry_run(checked_sql: str, text: str, mocks: dict[str, pa.Table]) -> DryRun:
    """Run the checked SQL (and, to show what it suppresses, the SQL as written)
    over mock tables in a local DuckDB: one thread (sums in a stable order),
    no access to files or the network."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import duckdb  # noqa: PLC0415

    from cleanroom.errors import PolicyError  # noqa: PLC0415
    from cleanroom.policy.check import ENGINE_SETTINGS  # noqa: PLC0415

    # mock tables in memory only: no file, network or extension from the query
    spill = tempfile.mkdtemp(prefix="cleanroom-check-")  # not ./.tmp, which DuckDB allows
    con = duckdb.connect(
        config={
            "threads": 1,
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "temp_directory": spill,
        }
    )
    try:
        for name, data in mocks.items():
            con.register(name, data)
        for setting in ENGINE_SETTINGS:  # as the enclave runs checked SQL
            con.execute(setting)
        con.execute("SET lock_configuration = true")
        try:
            cursor = con.execute(checked_sql)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchall()
            as_written = Counter(con.execute(text).fetchall())
        except duckdb.Error as exc:
            raise PolicyError(f"the checked query fails on the mock data: {exc}") from exc
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    as_written.subtract(Counter(rows))
    return DryRun(checked_sql, columns, rows, sorted(as_written.elements(), key=repr))


def _inputs_of(text: str, state: RoomState) -> list[str]:
    """The room's datasets the query names (without regard to case, as DuckDB)."""
    import sqlglot  # noqa: PLC0415
    from sqlglot import exp  # noqa: PLC0415

    from cleanroom.errors import PolicyError  # noqa: PLC0415

    try:
        tree = sqlglot.parse_one(text, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise PolicyError(f"the query does not parse: {str(exc).splitlines()[0]}") from exc
    by_lower = {name.lower(): name for name in state.datasets}
    found = {
        by_lower[t.name.lower()] for t in tree.find_all(exp.Table) if t.name.lower() in by_lower
    }
    if not found:
        raise PolicyError(
            f"the query reads none of the room's datasets ({', '.join(sorted(state.datasets))})"
        )
    return sorted(found)


def _recipients(handle: Room, state: RoomState, given: list[str]) -> list[str]:
    from cleanroom.client import names  # noqa: PLC0415

    if given:
        members = [{"name": m.identity.name, "fingerprint": fp} for fp, m in state.members.items()]
        return [names.member_fingerprint(members, ref) for ref in given]
    me = handle.client.party.fingerprint
    member = state.members.get(me)
    return [me] if member is not None and "result_recipient" in member.roles else []


def analysis_check(
    sql: Path = typer.Option(..., "--sql", help="A file holding exactly one SELECT statement."),
    inputs: str | None = typer.Option(
        None,
        "--inputs",
        "-i",
        help="The datasets it reads, comma separated (default: the room's datasets it names).",
    ),
    recipients: list[str] = typer.Option(
        [],
        "--recipient",
        help="Who would receive the result (repeat; default: you, if you are a recipient).",
    ),
    dp: Path | None = typer.Option(
        None, "--dp", help="Check it as a differentially private release (JSON, docs/privacy.md)."
    ),
    rows: int | None = ROWS,
    seed: int = SEED,
    show_sql: bool = typer.Option(False, "--show-sql", help="Also print the SQL that would run."),
    room: str = ROOM,
    service: str = SERVICE,
    keystore: Path = KEYSTORE,
    as_json: bool = JSON,
) -> None:
    """Dry-run a query: the room's own policy check, then the checked SQL on mock data.

    The check is the one the room runs when the analysis is proposed, on the
    room's rules as you verify them from the ledger. If it passes, the SQL it
    returns (thresholds built in) runs here in DuckDB over mock rows of each
    input, and the rows a threshold would suppress are shown. Nothing is
    proposed and no real data is read.

    Example: cleanroom analysis check --sql spend.sql --room quickstart --as keys/analyst
    """
    from cleanroom.errors import GovernanceError  # noqa: PLC0415
    from cleanroom.wire import read_json_file  # noqa: PLC0415

    text = sql.read_text(encoding="utf-8")
    with _opened(service, keystore, room) as handle:
        state = _verified(handle)
        chosen = (
            [_dataset(handle, state, n.strip()).name for n in inputs.split(",") if n.strip()]
            if inputs
            else _inputs_of(text, state)
        )
        to = _recipients(handle, state, recipients)
    for name in chosen:
        if not state.datasets[name].consent:
            raise GovernanceError(f"the owner of {name!r} has revoked consent")
    spec = None
    if dp is not None:
        from cleanroom.policy.rules import DpSpec  # noqa: PLC0415
        from cleanroom.wire import parse_model  # noqa: PLC0415

        spec = parse_model(DpSpec, read_json_file(dp, what="DP specification"), what="DP spec")
    from cleanroom.client.mocks import threshold  # noqa: PLC0415

    # (1) the room's own check, on its verified rules: owners assumed to approve
    checked = state.check_policy(text, chosen, to, spec, None)
    strictest = max(threshold(state.datasets[n].rule) for n in chosen)
    if spec is not None:
        # the DP mechanism adds noise to the rows inside the enclave; there is nothing
        # meaningful to preview on mocks without it
        _report_dp(checked, chosen, as_json=as_json, show_sql=show_sql)
        return
    # (2) the SQL it returned, over mocks of every input
    mocks = {n: _mock(state, state.datasets[n], rows, seed) for n in chosen}
    result = dry_run(checked, text, mocks)
    if as_json:
        emit_json(
            {
                "ok": True,
                "inputs": chosen,
                "recipients": [_member_name(state, r) for r in to],
                "threshold": strictest,
                "sql": checked,
                "mock": {"seed": seed, "rows": {n: t.num_rows for n, t in mocks.items()}},
                "columns": result.columns,
                "rows": [list(r) for r in result.rows],
                "suppressed": [list(r) for r in result.suppressed],
            }
        )
        return
    _report(result, chosen, [_member_name(state, r) for r in to], strictest, show_sql, mocks)


def _report_dp(checked: str, chosen: list[str], *, as_json: bool, show_sql: bool) -> None:
    if as_json:
        emit_json({"ok": True, "inputs": chosen, "sql": checked, "dp": True})
        return
    console.print(
        f"[green]policy check passed[/] (differentially private, over {', '.join(chosen)})"
    )
    console.print("no mock run: the noise is added only inside the enclave")
    if show_sql:
        console.print(checked, highlight=False, markup=False, soft_wrap=True)


def _report(
    result: DryRun,
    chosen: list[str],
    to: list[str],
    strictest: int,
    show_sql: bool,
    mocks: dict[str, pa.Table],
) -> None:
    from cleanroom.cli.ui import table  # noqa: PLC0415

    console.print(
        f"[green]policy check passed[/]: inputs {', '.join(chosen)}; "
        f"recipients {', '.join(to) or 'none named (use --recipient)'}",
        highlight=False,
    )
    if show_sql:
        console.print("[bold]the SQL the enclave would run:[/]")
        console.print(result.sql, highlight=False, markup=False, soft_wrap=True)
    sizes = ", ".join(f"{n} {t.num_rows:,}" for n, t in mocks.items())
    shown = table(*result.columns, title=f"result on mock data ({sizes} rows)")
    for row in result.rows[:SHOWN_ROWS]:
        shown.add_row(*("" if v is None else str(v) for v in row))
    console.print(shown)
    more = len(result.rows) - SHOWN_ROWS
    console.print(
        f"{len(result.rows):,} row(s){f' ({more:,} not shown; --json has all)' if more > 0 else ''}"
    )
    if not result.suppressed:
        console.print("nothing suppressed on the mock data")
        return
    console.print(
        f"[yellow]{len(result.suppressed):,} row(s) suppressed[/] on the mock data: "
        f"fewer than {strictest} distinct people behind them (the strictest input rule)",
        highlight=False,
    )
    hidden = table(*result.columns, title="suppressed (mock values)")
    for row in result.suppressed[:SHOWN_ROWS]:
        hidden.add_row(*("" if v is None else str(v) for v in row))
    console.print(hidden)
