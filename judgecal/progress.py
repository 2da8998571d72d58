"""Progress bars for long judging loops (rich), usable from library code and the CLI, a
status line for work that has no bar of its own (a search's trials), and the libraries'
own INFO logs kept off the terminal while judgecal draws them.

``ProgressFactory`` is the type judging loops accept; rich itself is imported only when
a bar is made, so code that merely accepts a factory does not load it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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


# What shows a status line: called with a function giving the line's text, it returns a
# context manager for the time the line is shown (redrawn a few times a second).
StatusFactory = Callable[[Callable[[], str]], AbstractContextManager[Any]]


def rich_status(console: Console | None = None) -> StatusFactory:
    """A status line on ``console``: a spinner, the text, the time elapsed; gone when done."""

    @contextmanager
    def status(text: Callable[[], str]) -> Iterator[None]:
        from rich.progress import Progress, ProgressColumn, SpinnerColumn, TimeElapsedColumn
        from rich.text import Text

        class TextOf(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(text())

        progress = Progress(
            SpinnerColumn(), TextOf(), TimeElapsedColumn(), console=console, transient=True, refresh_per_second=2
        )
        progress.add_task("", total=None)
        with progress:
            yield

    return status


@contextmanager
def library_logs_quiet(names: tuple[str, ...] = ("dspy",)) -> Iterator[None]:
    """The libraries' loggers at WARNING at least for the block, then as they were. DSPy
    sets its logger to INFO with a handler of its own on stderr when it is first imported
    (its optimizers' progress: MIPROv2's "We will evaluate the program ..."), so a level
    set before that is lost: it is imported here first. Lines DSPy ``print``s instead
    are :func:`library_prints_quiet`'s."""
    import dspy  # noqa: F401  (its import configures its logger; the level below must come after)

    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# The lines DSPy's optimizers print() rather than log (DSPy 3.4: BootstrapFewShot and
# BootstrapFewShotWithRandomSearch), by how they begin.
LIBRARY_PRINTS = (
    "Bootstrapped ",
    "Going to sample between ",
    "Will attempt to bootstrap ",
    "New best score:",
    "Scores so far:",
    "Best score so far:",
    "Stopping early because score ",
)


class _WithoutLibraryPrints:
    """Standard output, less the lines a library prints that start with one of
    ``prefixes``: ``print`` writes its text, then its newline, in two calls; everything
    else (the bars' and status line's own writes among it) passes through."""

    def __init__(self, stream: Any, prefixes: tuple[str, ...]) -> None:
        self._stream = stream
        self._prefixes = prefixes
        self._dropped_line = False

    def write(self, text: str) -> int:
        if text.startswith(self._prefixes):
            logging.getLogger("dspy").debug(text.rstrip())
            self._dropped_line = not text.endswith("\n")
            return len(text)
        if self._dropped_line and text == "\n":
            self._dropped_line = False
            return len(text)
        self._dropped_line = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def library_prints_quiet(prefixes: tuple[str, ...] = LIBRARY_PRINTS) -> Iterator[None]:
    """Keep lines a library prints (not logs) off standard output for the block: DSPy's
    bootstrapping optimizers print their progress between judgecal's own lines."""
    import sys

    original = sys.stdout
    sys.stdout = _WithoutLibraryPrints(original, prefixes)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = original
