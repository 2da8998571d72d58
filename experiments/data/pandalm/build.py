"""Build ``pandalm_test.jsonl`` from PandaLM's human-annotated test set.

Input: ``pairwise/pandalm_dev.jsonl`` in the shared benchmark data folder
(``../shared/data`` beside the repository by default): PandaLM's
``data/testset-v1.json`` (https://github.com/WeOpenML/PandaLM, Apache-2.0) converted to
judgecal's rows, one row per compared pair, with GPT-3.5-turbo's released verdicts
(``data/gpt-3.5-turbo-testset-v1.json``) in ``reference_judges``. In that input,
``group`` is the pair of systems compared.

Output: ``pandalm_test.jsonl`` beside this script, the same 999 rows in the same order
with two changes:

* ``group`` becomes the instruction (``prompt-001`` ... in order of first appearance)
  instead of the input's system pair, since rows that share an instruction are the
  strongest dependence in the set; the system pair moves to ``system_pair``;
* ``user_attributes`` is added as an empty list (PandaLM has no user profiles).

Everything else (``label``, ``annotator_labels``, ``reference_judges``, texts) is copied
as it is. The script is deterministic; run it again to check the shipped file::

    python experiments/data/pandalm/build.py [--source PATH] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "pairwise" / "pandalm_dev.jsonl"
DEFAULT_OUTPUT = HERE / "pandalm_test.jsonl"


def majority(labels: list[str]) -> str:
    """The label at least two of three annotators gave; ``"tie"`` when all differ."""
    label, count = Counter(labels).most_common(1)[0]
    return label if count >= 2 else "tie"


def convert(rows: list[dict]) -> list[dict]:
    prompt_ids: dict[str, str] = {}
    out = []
    for row in rows:
        if row["label"] != majority(row["annotator_labels"]):
            raise ValueError(f"{row['id']}: label {row['label']!r} is not the annotators' majority")
        group = prompt_ids.setdefault(row["prompt"], f"prompt-{len(prompt_ids) + 1:03d}")
        new = {"id": row["id"], "group": group, "system_pair": row["group"]}
        new.update({k: v for k, v in row.items() if k not in ("id", "group", "user_attributes")})
        new["user_attributes"] = row.get("user_attributes") or []
        order = [
            "id",
            "group",
            "system_pair",
            "source",
            "prompt",
            "user_attributes",
            "response_a",
            "response_b",
            "label",
            "annotator_labels",
            "reference_judges",
        ]
        out.append({k: new[k] for k in order if k in new} | {k: v for k, v in new.items() if k not in order})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    with args.source.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = convert(rows)
    with args.output.open("w", encoding="utf-8") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    labels = Counter(row["label"] for row in out)
    prompts = len({r["group"] for r in out})
    print(f"{len(out)} rows, {prompts} prompts, labels {dict(sorted(labels.items()))} -> {args.output}")


if __name__ == "__main__":
    main()
