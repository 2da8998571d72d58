"""Every example in README.md, CONTRIBUTING.md and docs/ runs, in order, page by page, in a
fresh workspace (sybil parses the pages):

- ``python`` blocks run in one namespace per page;
- ``bash`` blocks run each ``judgecal ...`` line through the command's ``main`` and expect
  exit code 0; any other command must be marked not run (``<!-- skip: next "why" -->``);
- ``toml`` blocks must be valid experiment files (a fragment is completed with a minimal
  ``[judge]``);
- ``text`` blocks are output or formats shown, not run.

The workspace holds ``experiments/`` (the repository's) and ``my_labels.csv``: 200 labelled
relevance rows in 20 groups with a recorded judge ``gpt-4o``, so the front page's own-data
walk-through runs on the recorded-verdict path without calling a model.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import unittest
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.evaluators.skip import NotEvaluated
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from tests.conftest import REPO
from tests.helpers import recorded_rows

PAGES = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").glob("*.md")])
LANGUAGES = {"python", "bash", "toml", "text"}
FENCE = re.compile(r"^```(\S*)", re.MULTILINE)


def run_commands(example) -> None:
    from judgecal.cli import main

    text = re.sub(r"\\\n\s*", " ", example.parsed)
    for number, line in enumerate(text.splitlines()):
        command = line.split(" #", 1)[0].strip()
        if not command or command.startswith("#"):
            continue
        words = shlex.split(command)
        if words[0] != "judgecal":
            raise AssertionError(
                f"line {example.line + number + 1}: only judgecal commands run here; mark the block "
                f'<!-- skip: next "why it is not run" --> if it must show {words[0]!r}'
            )
        code = main(words[1:])
        assert code == 0, f"line {example.line + number + 1}: `{command}` exited {code}"


def check_toml(example) -> None:
    import tomllib

    from judgecal.pipeline.config import ExperimentConfig

    document = tomllib.loads(example.parsed)
    document.setdefault("judge", {"name": "example", "task": "relevance", "data": "rows.jsonl"})
    ExperimentConfig.model_validate(document)


def make_workspace(root: Path) -> None:
    (root / "mlruns").mkdir(exist_ok=True)
    (root / "experiments").symlink_to(REPO / "experiments")
    dataset = recorded_rows(n_groups=20, per_group=10, seed=3)
    with (root / "my_labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "group", "prompt", "attribute", "label", "reference_judges.gpt-4o"])
        for row in dataset.rows:
            writer.writerow(
                [
                    row.id,
                    row.group,
                    row.inputs["prompt"],
                    row.inputs["attribute"],
                    str(row.label).lower(),
                    str(row.reference_judges["loose"]).lower(),
                ]
            )
    with (root / "new_rows.jsonl").open("w", encoding="utf-8") as handle:
        for row in dataset.rows[:20]:
            record = {
                "id": f"new-{row.id}",
                **row.inputs,
                "reference_judges": {"gpt-4o": row.reference_judges["loose"]},
            }
            handle.write(json.dumps(record) + "\n")


def examples_of(page: Path):
    sybil = Sybil(
        parsers=[
            PythonCodeBlockParser(),
            CodeBlockParser(language="bash", evaluator=run_commands),
            CodeBlockParser(language="toml", evaluator=check_toml),
            SkipParser(),
        ]
    )
    return sybil.parse(page)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_fenced_block_names_a_known_language(page: Path) -> None:
    fences = FENCE.findall(page.read_text(encoding="utf-8"))
    openings = fences[::2]  # every other fence closes a block
    assert [language for language in openings if language not in LANGUAGES] == []


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_the_examples_run(page: Path, isolated_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_workspace(isolated_workspace)
    monkeypatch.chdir(isolated_workspace)
    document = examples_of(page)
    for example in document.examples():
        try:
            example.evaluate()
        except (unittest.SkipTest, NotEvaluated):
            continue
        except Exception as error:
            raise AssertionError(f"{page.name}:{example.line}: {type(error).__name__}: {error}") from error
