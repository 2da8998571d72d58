"""Opening the judge a command names (``--judge`` and the flags that override its model),
as ``judge`` and ``monitor`` both do, and saying which judge was opened."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from judgecal.cli.output import console, errors
from judgecal.redact import redact_url
from judgecal.workspace import Workspace

if TYPE_CHECKING:
    from judgecal.export.flavor import LoadedJudge
    from judgecal.tasks.registry import Task


def open_judge_from_flags(args: argparse.Namespace, workspace: Workspace, *, task: Task | None = None) -> LoadedJudge:
    """The judge ``args.judge`` names, with the command's model flags; its load notes are
    printed as warnings, then one line naming the judge, where it came from and its digest."""
    from judgecal.export.flavor import open_judge

    workspace.use_dspy_cache()
    loaded = open_judge(
        args.judge,
        model=args.model,
        api_base=args.api_base,
        trust_endpoint=args.trust_endpoint,
        allow_modified=args.allow_modified,
        task=task,
        workspace=workspace,
    )
    for note in loaded.notes:
        errors.print(f"[bold yellow]warning:[/] {note}", highlight=False)
    console.print(
        f"judge {loaded.bundle.name!r} from {redact_url(loaded.source)}, bundle {loaded.digest}", highlight=False
    )
    return loaded
