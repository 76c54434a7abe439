"""Terminal output for the CLI: Rich consoles, tables, JSON, progress bars.

Invariants: machine output (``--json``, ``--quiet``) goes to stdout as plain
text, never through Rich (no colour, no wrapping, full ids); tables show
short ids that never wrap (``--json`` has the full ones); progress and notes
go to stderr. Rich's progress module loads only when a bar is drawn.
"""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from rich.table import Table

console = Console()
err_console = Console(stderr=True)

SHORT = 12  # characters of an id or fingerprint shown in tables and messages
# columns that hold ids, digests or fingerprints: shown short, never wrapped
ID_COLUMNS = frozenset({"id", "room", "fingerprint", "sha256", "job", "proposal", "by", "seq"})


def short(value: str, n: int = SHORT) -> str:
    """An id cut to ``n`` characters (a unique prefix is accepted back everywhere)."""
    return value[:n]


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose id columns never wrap mid-id; other columns fold if they must."""
    from rich.table import Table  # noqa: PLC0415 - loaded when a table is drawn

    made = Table(title=title, title_justify="left")
    for column in columns:
        made.add_column(column, no_wrap=column in ID_COLUMNS, overflow="fold")
    return made


def emit_json(data: Any) -> None:
    """Machine output: sorted keys, full ids, plain text on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def emit_id(value: str) -> None:
    """``--quiet``: the new thing's full id alone on stdout."""
    sys.stdout.write(value + "\n")
    sys.stdout.flush()


class RichProgress:
    """A :class:`cleanroom.progress.Progress` drawn as a Rich bar on stderr."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None, unit: str) -> None:
        from rich.progress import (  # noqa: PLC0415 - loaded when a bar is drawn
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self._progress is not None:  # a new phase: the previous bar is done
            self._progress.stop()
        columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn()]
        else:
            columns += [MofNCompleteColumn(), TextColumn(unit)]
        columns.append(TimeRemainingColumn())
        self._progress = Progress(
            *columns, console=err_console, transient=True, disable=not err_console.is_terminal
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
