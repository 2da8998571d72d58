"""Progress bars for long judging loops (rich), usable from library code and the CLI.

``ProgressFactory`` is the type judging loops accept; rich itself is imported only when
a bar is made, so code that merely accepts a factory does not load it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# What judging loops take to show progress: called with (rows, description), it returns
# an object with advance(n) and close().
ProgressFactory = Callable[[int, str], Any]


class RichTracker:
    """One bar; ``advance()`` per row, ``close()`` when done."""

    def __init__(self, total: int, description: str, console: Console | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)

    def close(self) -> None:
        self._progress.stop()


def rich_progress(console: Console | None = None) -> Any:
    """A progress factory for :meth:`judgecal.judges.Judge.predict`."""

    def factory(total: int, description: str) -> RichTracker:
        return RichTracker(total, description, console)

    return factory
