"""Converting published human-judgment data into judgecal rows.

Each importer reads one source format and yields flat rows (``id``, ``group``, the task's
inputs, ``label``, optional ``annotator_labels`` and ``meta`` columns). Every row is
validated against the task before anything is written, and a bad record names the file,
the record and the field. Formats:

* ``annotation-tool``: the data of the *Re-Centering Humans in LLM Personalization*
  annotation tool: evaluation files whose ``profile_attributes`` carry ``ground_truth``
  relevance flags, or the aggregated ``task3_relevance_clf.jsonl`` (label plus the share
  of annotators who said relevant) → ``relevance`` rows. Rows are grouped by prompt
  (``group_by``, see :data:`GROUPINGS`): the same prompt is asked for many users, and
  its rows are not independent across them.
* ``pandalm``: PandaLM's ``testset-v1.json`` (three annotators: 0 tie, 1 first, 2 second)
  → ``pairwise`` rows, majority label, grouped by instruction (the system pair is kept in
  ``system_pair``). GPT-3.5-turbo's verdicts, released in another file, are not read.
* ``llmbar``: LLMBar's ``dataset.json`` (``label`` 1 or 2) → ``pairwise`` rows.
* ``mt-bench``: MT-Bench human judgments (``question_id``, ``model_a``, ``model_b``,
  ``winner``, ``judge``, ``turn``, ``conversation_a/b``), JSON or JSONL → ``pairwise`` rows,
  one per (question, model pair, turn) with every judge's vote.
* ``table``: any CSV or JSONL, with a column mapping and a label mapping.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from judgecal.data.rows import DataError, RowShape, parse_record, read_jsonl

FORMATS = ("annotation-tool", "pandalm", "llmbar", "mt-bench", "table")


TASK_OF_FORMAT = {"annotation-tool": "relevance", "pandalm": "pairwise", "llmbar": "pairwise", "mt-bench": "pairwise"}


# How annotation-tool rows are grouped (rows of a group stay in one split and are resampled together).
GROUPINGS = {
    "prompt": "rows of one prompt, across users (the default; what the paper's data needs: "
    "its 41 prompts are each asked for several users)",
    "user-prompt": "rows of one user's prompt (the tool's prompt_id); optimistic when prompts repeat across users",
    "user": "rows of one user, across prompts",
}


def format_name(name: str) -> str:
    """The canonical name of a source format: case, ``_`` and missing dashes do not matter
    (``PandaLM``, ``mt_bench``, ``MTBench``)."""
    key = name.strip().lower().replace("_", "-")
    squashed = {fmt.replace("-", ""): fmt for fmt in FORMATS}
    canonical = key if key in FORMATS else squashed.get(key.replace("-", ""))
    if canonical is None:
        raise ValueError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    return canonical


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number, record) from a JSON list or JSONL file; NaN tokens are read as NaN."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(
                f"invalid JSON ({error.msg} at line {error.lineno})", path=path, line=error.lineno
            ) from None
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataError(f"record {number} is not a JSON object", path=path)
            yield number, record
        return
    yield from read_jsonl(path)


def _need(record: dict[str, Any], key: str, path: Path, number: int) -> Any:
    if key not in record or record[key] is None:
        raise DataError("missing required field", path=path, line=number, field=key)
    return record[key]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _majority(labels: list[str]) -> str:
    """The most common label; "tie" when the top labels are tied (as PandaLM's majority does)."""
    counts = Counter(labels).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie"
    return counts[0][0]


def _prompt_group(prompt: str) -> str:
    """A stable group name for a prompt text."""
    return "prompt-" + hashlib.sha256(prompt.strip().encode("utf-8")).hexdigest()[:12]


def import_annotation_tool(path: Path, *, group_by: str = "prompt") -> Iterator[dict[str, Any]]:
    if group_by not in GROUPINGS:
        raise ValueError(f"unknown grouping {group_by!r}; choose from {', '.join(GROUPINGS)}")
    seen: set[str] = set()
    for number, record in _records(path):
        if "profile_attributes" in record:
            prompt = _text(_need(record, "prompt_text", path, number))
            prompt_id = str(record.get("prompt_id") or record.get("prompt_index") or number)
            user = record.get("user_id")
            if group_by == "user" and user is None:
                raise DataError("--group-by user needs a user_id", path=path, line=number, field="user_id")
            group = {"prompt": _prompt_group(prompt), "user-prompt": prompt_id, "user": str(user)}[group_by]
            for index, item in enumerate(_need(record, "profile_attributes", path, number)):
                if "ground_truth" not in item:
                    raise DataError(
                        f"profile_attributes[{index}] has no ground_truth flag",
                        path=path,
                        line=number,
                        field=f"profile_attributes[{index}].ground_truth",
                    )
                row_id = f"{prompt_id}-a{index}"
                if row_id in seen:  # the same items appear in every model's evaluation file
                    continue
                seen.add(row_id)
                yield {
                    "id": row_id,
                    "group": group,
                    "user_id": user,
                    "prompt_id": prompt_id,
                    "prompt": prompt,
                    "attribute": _text(item.get("attribute")),
                    "label": bool(item["ground_truth"]),
                    "reason": item.get("reason"),
                }
        elif "human_yes_rate" in record or ("label" in record and "prompt_text" in record):
            if group_by != "prompt":
                raise DataError(
                    f"aggregated relevance rows carry no user, so they can only be grouped by prompt "
                    f"(got --group-by {group_by})",
                    path=path,
                    line=number,
                )
            prompt_index = _need(record, "prompt_index", path, number)
            yield {
                "id": f"p{prompt_index}-s{record.get('sample_index', number)}-{number}",
                "group": f"prompt-{prompt_index}",
                "prompt": _text(_need(record, "prompt_text", path, number)),
                "attribute": _text(_need(record, "attribute", path, number)),
                "label": bool(_need(record, "label", path, number)),
                "human_yes_rate": record.get("human_yes_rate"),
                "n_annotators": record.get("n_annotators"),
                "source_split": record.get("split"),
            }
        else:
            raise DataError(
                "neither an evaluation record with profile_attributes[].ground_truth nor an aggregated "
                "relevance row (prompt_text, attribute, label)",
                path=path,
                line=number,
            )


PANDALM_LABELS = {0: "tie", 1: "A", 2: "B"}


def import_pandalm(path: Path) -> Iterator[dict[str, Any]]:
    for number, record in _records(path):
        votes = []
        for key in ("annotator1", "annotator2", "annotator3"):
            value = _need(record, key, path, number)
            if value not in PANDALM_LABELS:
                raise DataError(f"expected 0 (tie), 1 or 2, got {value!r}", path=path, line=number, field=key)
            votes.append(PANDALM_LABELS[value])
        instruction = _text(_need(record, "instruction", path, number))
        extra = _text(record.get("input"))
        prompt = instruction + (f"\n\n{extra}" if extra else "")
        yield {
            "id": f"pandalm-{record.get('idx', number - 1)}",
            "group": _prompt_group(prompt),  # up to ten system pairs answer one instruction
            "system_pair": _text(record.get("cmp_key")) or None,
            "prompt": prompt,
            "response_a": _text(_need(record, "response1", path, number)),
            "response_b": _text(_need(record, "response2", path, number)),
            "label": _majority(votes),
            "annotator_labels": votes,
            "motivation_app": record.get("motivation_app"),
        }


def import_llmbar(path: Path) -> Iterator[dict[str, Any]]:
    subset = path.parent.name or "llmbar"
    for number, record in _records(path):
        label = _need(record, "label", path, number)
        if label not in (1, 2):
            raise DataError(f"expected 1 or 2, got {label!r}", path=path, line=number, field="label")
        row_id = f"llmbar-{subset}-{number - 1}"
        yield {
            "id": row_id,
            "group": row_id,  # every LLMBar instance is its own question
            "prompt": _text(_need(record, "input", path, number)),
            "response_a": _text(_need(record, "output_1", path, number)),
            "response_b": _text(_need(record, "output_2", path, number)),
            "label": "A" if label == 1 else "B",
            "subset": subset,
        }


def _mt_bench_turn(conversation: list[dict[str, Any]], turn: int) -> tuple[str, str]:
    users = [m["content"] for m in conversation if m.get("role") == "user"]
    answers = [m["content"] for m in conversation if m.get("role") == "assistant"]
    if len(users) < turn or len(answers) < turn:
        raise ValueError(f"the conversation has no turn {turn}")
    prompt = users[0] if turn == 1 else users[0] + "\n\n[follow-up question] " + users[turn - 1]
    return prompt, answers[turn - 1]


def import_mt_bench(path: Path) -> Iterator[dict[str, Any]]:
    """One row per (question, model pair, turn): models in alphabetical order as A and B,
    every judge's vote as an annotator label, the majority as the label. For turn 2 the
    prompt holds both user questions; the responses are the second answers."""
    grouped: dict[tuple[Any, str, str, int], dict[str, Any]] = {}
    votes: dict[tuple[Any, str, str, int], list[str]] = defaultdict(list)
    judges: dict[tuple[Any, str, str, int], list[str]] = defaultdict(list)
    for number, record in _records(path):
        question = _need(record, "question_id", path, number)
        model_a, model_b = str(_need(record, "model_a", path, number)), str(_need(record, "model_b", path, number))
        turn = int(record.get("turn", 1))
        winner = str(_need(record, "winner", path, number))
        if winner.startswith("tie"):
            vote = "tie"
        elif winner in ("model_a", "model_b"):
            vote = "A" if winner == "model_a" else "B"
        else:
            raise DataError(f"expected model_a, model_b or tie, got {winner!r}", path=path, line=number, field="winner")
        swap = model_b < model_a
        if swap:
            model_a, model_b = model_b, model_a
            vote = {"A": "B", "B": "A"}.get(vote, vote)
        key = (question, model_a, model_b, turn)
        if key not in grouped:
            try:
                first = _need(record, "conversation_b" if swap else "conversation_a", path, number)
                second = _need(record, "conversation_a" if swap else "conversation_b", path, number)
                prompt, response_a = _mt_bench_turn(first, turn)
                _, response_b = _mt_bench_turn(second, turn)
            except ValueError as error:
                raise DataError(str(error), path=path, line=number, field="conversation_a") from None
            grouped[key] = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
        votes[key].append(vote)
        judges[key].append(str(record.get("judge", "")))
    for (question, model_a, model_b, turn), fields in grouped.items():
        labels = votes[(question, model_a, model_b, turn)]
        yield {
            "id": f"mtbench-{question}-{model_a}-vs-{model_b}-t{turn}",
            "group": f"question-{question}",
            **fields,
            "label": _majority(labels),
            "annotator_labels": labels,
            "model_a": model_a,
            "model_b": model_b,
            "turn": turn,
            "judges": judges[(question, model_a, model_b, turn)],
        }


def import_table(path: Path, mapping: dict[str, str], label_map: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Any CSV/JSONL: ``mapping`` renames source columns to judgecal fields
    (``{"prompt": "question", "label": "winner"}``), ``label_map`` rewrites label values."""
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            records = [(reader.line_num, dict(row)) for row in reader]
    else:
        records = list(_records(path))
    for number, record in records:
        missing = [source for source in mapping.values() if source not in record]
        if missing:
            raise DataError(
                f"column {missing[0]!r} (mapped in --map) is not in the source",
                path=path,
                line=number,
                field=missing[0],
            )
        row = {target: record[source] for target, source in mapping.items()}
        for key, value in record.items():
            if key not in mapping.values() and key not in row:
                row[key] = value
        row.setdefault("id", f"row-{number}")
        row.setdefault("group", row["id"])
        for key in ("label",):
            if key in row and str(row[key]) in label_map:
                row[key] = label_map[str(row[key])]
        if "annotator_labels" in row and isinstance(row["annotator_labels"], list):
            row["annotator_labels"] = [label_map.get(str(v), v) for v in row["annotator_labels"]]
        yield row


def import_rows(
    fmt: str,
    path: Path,
    spec: RowShape,
    *,
    mapping: dict[str, str] | None = None,
    label_map: dict[str, str] | None = None,
    group_by: str | None = None,
) -> list[dict[str, Any]]:
    """Convert and validate every record; returns rows ready to write as JSONL.
    ``group_by`` (annotation-tool only) is one of :data:`GROUPINGS`; default ``prompt``."""
    fmt = format_name(fmt)
    if group_by is not None and fmt != "annotation-tool":
        raise ValueError(f"--group-by applies to the annotation-tool format only; {fmt} rows are grouped by the format")
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", path=path)
    importers: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
        "annotation-tool": lambda: import_annotation_tool(path, group_by=group_by or "prompt"),
        "pandalm": lambda: import_pandalm(path),
        "llmbar": lambda: import_llmbar(path),
        "mt-bench": lambda: import_mt_bench(path),
        "table": lambda: import_table(path, mapping or {}, label_map or {}),
    }
    rows = []
    ids: set[str] = set()
    for number, row in enumerate(importers[fmt](), start=1):
        row = {key: value for key, value in row.items() if value is not None}
        try:
            parse_record(row, spec, path=path, line=number)
        except DataError as error:
            raise DataError(f"converted record {number}: {error.reason}", path=path, field=error.field) from None
        if row["id"] in ids:
            raise DataError(f"converted record {number}: duplicate id {row['id']!r}", path=path, field="id")
        ids.add(row["id"])
        rows.append(row)
    if not rows:
        raise DataError("no records to import", path=path)
    return rows
