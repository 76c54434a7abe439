"""Progress reporting, kept apart from the work so the core never prints.

The core (sealing, the SDK's transport) reports to a :class:`Progress` it is
given and never decides whether to draw. The SDK's long operations (publishing,
uploads, downloads, results, waiting for a job) take ``progress=``, turned into
a reporter by :func:`progress_for`:

* ``None`` (the default): drawn only where someone watches, a terminal (stderr
  is a TTY) or a notebook; silent in scripts, pipes, logs and tests;
* ``True``: always drawn; ``False``: never;
* a :class:`Progress` of the caller's own (the CLI passes its Rich bars).

Rich, a dependency of the CLI already, draws; it is imported only when
something is drawn, so importing the SDK stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console


class Progress(Protocol):
    def start(self, description: str, total: int | None, unit: str) -> None: ...

    def advance(self, amount: int) -> None: ...


class NoProgress:
    """Reports nothing."""

    def start(self, description: str, total: int | None, unit: str) -> None:
        return None

    def advance(self, amount: int) -> None:
        return None


ProgressChoice = Progress | bool | None
STATE = "state"  # the unit of a phase that is a state (a job's), not an amount


def _console() -> Console:
    from rich.console import Console  # noqa: PLC0415 - loaded only to draw

    return Console(stderr=True)


def watched(console: Any = None) -> bool:
    """Whether someone watches this process: stderr is a terminal, or it runs in a
    notebook (Jupyter and the like)."""
    console = console if console is not None else _console()
    return bool(console.is_terminal or console.is_jupyter)


class ConsoleProgress:
    """Progress drawn with Rich on stderr, or in a notebook's cell. Each phase
    (``start``) gets its own line, kept once done, so a job's states read as a
    history: ``requested -> running -> succeeded``."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console if console is not None else _console()
        self._bar: Any = None  # rich.progress.Progress, the current phase's
        self._task: Any = None
        self._total: int | None = None

    def start(self, description: str, total: int | None, unit: str) -> None:
        from rich import progress as rp  # noqa: PLC0415 - loaded only to draw
        from rich.markup import escape as rp_escape  # noqa: PLC0415

        self._finish()
        columns: list[Any]
        if unit == STATE:
            columns = [
                rp.SpinnerColumn(finished_text="[green]✓[/]"),
                rp.TextColumn("{task.description}"),
                rp.TimeElapsedColumn(),
            ]
        elif unit == "bytes":
            columns = [
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.DownloadColumn(),
                rp.TransferSpeedColumn(),
                rp.TimeRemainingColumn(),
            ]
        else:
            columns = [
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn() if total is not None else rp.TextColumn(""),
                rp.TextColumn(unit),
                rp.TimeRemainingColumn(),
            ]
        self._bar = rp.Progress(*columns, console=self._console, transient=False)
        self._bar.start()
        # the description may carry service text (a job's reason): never Rich markup
        self._task = self._bar.add_task(rp_escape(description), total=total)
        self._total = total

    def advance(self, amount: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def _finish(self) -> None:
        """Leave the current phase on screen, complete (the work went past it)."""
        if self._bar is None:
            return
        done = self._bar.tasks[0].completed
        self._bar.update(self._task, total=max(done, self._total or 0, 1), completed=max(done, 1))
        self._bar.stop()
        self._bar = None

    def close(self, *, failed: bool = False) -> None:
        """Stop drawing; a failed phase is left as it was, not shown complete."""
        if self._bar is None:
            return
        if failed:
            self._bar.stop()
            self._bar = None
        else:
            self._finish()


@contextmanager
def progress_for(choice: ProgressChoice) -> Iterator[Progress]:
    """The reporter for ``progress=``: see the module docstring. A reporter made
    here is stopped on the way out; one the caller gave is left to the caller."""
    if choice is False or (choice is None and not _watched_safely()):
        yield NoProgress()
        return
    if choice is None or choice is True:
        drawn = ConsoleProgress()
        try:
            yield drawn
        except BaseException:
            drawn.close(failed=True)
            raise
        drawn.close()
        return
    if not (hasattr(choice, "start") and hasattr(choice, "advance")):
        raise TypeError(
            f"progress= takes True, False, None or an object with start() and advance(), "
            f"not {type(choice).__name__}"
        )
    yield choice


def _watched_safely() -> bool:
    # a closed or replaced stderr (some notebook kernels, daemons) means nobody watches
    try:
        return sys.stderr is not None and watched()
    except (OSError, ValueError):
        return False
