"""Where the ``judgecal`` command writes: results on stdout, errors on stderr, one line each."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from judgecal.redact import redact_text

console = Console(stderr=False)


# Errors are never wrapped: a piped or logged "file:line: field ..." must stay one line.
errors = Console(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    """One line on stderr, whatever the message holds: line breaks are joined, and a
    password or key in any URL it quotes is hidden."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    errors.print(f"[bold red]error:[/] {escape(redact_text(text))}", highlight=False, markup=True)
