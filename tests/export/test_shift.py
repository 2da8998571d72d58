"""The shift warning: a judge calibrated on PandaLM pairs says so when it is given pairs
built another way (relevance rows recast as pairs), and stays quiet on PandaLM pairs it
was not calibrated on. Once on the shipped demo data, once on the shared data (skipped
when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.rows import LabeledRow, load_rows
from judgecal.export.bundle import bundle_from_judge, save_bundle
from judgecal.export.flavor import open_judge
from judgecal.export.reference import check_rows, reference_sketch
from judgecal.tasks.registry import resolve_task
from tests.conftest import PANDALM_DEV, RELEVANCE_DEV, needs

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "data"
PAIRWISE = resolve_task("pairwise")


def by_prompt(rows: list[LabeledRow]) -> tuple[list[LabeledRow], list[LabeledRow], list[LabeledRow]]:
    """Rows in three parts sharing no prompt: to fit on, to sketch, and fresh."""
    prompts = sorted({row.inputs["prompt"] for row in rows})
    np.random.default_rng(0).shuffle(prompts)
    part = {prompt: i % 3 for i, prompt in enumerate(prompts)}
    parts: tuple[list[LabeledRow], ...] = ([], [], [])
    for row in rows:
        parts[part[row.inputs["prompt"]]].append(row)
    return parts  # type: ignore[return-value]


def saved_judge(rows: list[LabeledRow], folder: Path) -> Path:
    fit, sketched, _ = by_prompt(rows)
    judge = VerifierJudge(task=PAIRWISE, name="pandalm").fit(fit)
    reference = reference_sketch(sketched, judge.predict(sketched), PAIRWISE.spec, source="held-out PandaLM rows")
    save_bundle(bundle_from_judge(judge, judge_lm(), reference=reference), folder)
    return folder


def judge_lm():
    from judgecal.backends.settings import LMConfig

    return LMConfig()


def recast_rows(path: Path, limit: int, tmp_path: Path) -> list[LabeledRow]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        row = json.loads(line)
        lines.append(
            {"id": row["id"], "group": row["group"], "prompt": row["prompt"], "response_a": row["attribute"],
             "response_b": row.get("reason") or row["attribute"], "label": "A"}
        )  # fmt: skip
    target = tmp_path / "recast.jsonl"
    target.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return list(load_rows(target, PAIRWISE.spec).rows)


def check(folder: Path, rows: list[LabeledRow], workspace):
    loaded = open_judge(folder, workspace=workspace)
    return check_rows(loaded.bundle.reference, rows, loaded.judge.predict(rows), loaded.judge.task.spec)


def assert_warns_on_recast_and_not_on_pandalm(
    pandalm: Path, relevance: Path, tmp_path: Path, workspace, folder: Path | None = None
) -> None:
    rows = list(load_rows(pandalm, PAIRWISE.spec).rows)
    folder = folder or saved_judge(rows, tmp_path / "judge")
    fresh = by_prompt(rows)[2][:300]
    quiet = check(folder, fresh, workspace)
    loud = check(folder, recast_rows(relevance, 300, tmp_path), workspace)
    print(f"fresh PandaLM: {quiet.statement()}\nrecast relevance: {loud.statement()}")
    assert quiet is not None and not quiet.differ
    assert loud is not None and loud.differ
    assert loud.auc > 0.9 and loud.unlike_share > 0.5
    assert quiet.unlike_share < 0.2


@pytest.fixture(scope="module")
def demo_judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The judge fitted on the demo's PandaLM rows, saved once for the module's tests (they
    only read it)."""
    rows = list(load_rows(DEMO / "pandalm" / "pandalm_test.jsonl", PAIRWISE.spec).rows)
    return saved_judge(rows, tmp_path_factory.mktemp("demo") / "judge")


def test_on_the_demo_data(tmp_path: Path, workspace, demo_judge: Path) -> None:
    assert_warns_on_recast_and_not_on_pandalm(
        DEMO / "pandalm" / "pandalm_test.jsonl", DEMO / "relevance_demo.jsonl", tmp_path, workspace, demo_judge
    )


@pytest.mark.shared_data
@needs(PANDALM_DEV)
@needs(RELEVANCE_DEV)
def test_on_the_shared_data(tmp_path: Path, workspace) -> None:
    assert_warns_on_recast_and_not_on_pandalm(PANDALM_DEV, RELEVANCE_DEV, tmp_path, workspace)


def test_a_bundle_without_a_sketch_is_not_checked_and_keeps_its_digest(tmp_path: Path, workspace) -> None:
    rows = list(load_rows(DEMO / "pairwise_demo.jsonl", PAIRWISE.spec).rows)
    judge = VerifierJudge(task=PAIRWISE, name="old").fit(rows)
    path = save_bundle(bundle_from_judge(judge, judge_lm()), tmp_path / "old")
    assert "reference" not in json.loads(path.read_text())
    loaded = open_judge(tmp_path / "old", workspace=workspace)
    assert loaded.digest == json.loads(path.read_text())["digest"]
    assert check_rows(loaded.bundle.reference, rows, loaded.judge.predict(rows), PAIRWISE.spec) is None


def test_judgecal_judge_says_when_rows_differ_and_when_it_cannot_tell(tmp_path: Path, capsys, demo_judge) -> None:
    from judgecal.cli import main

    rows = list(load_rows(DEMO / "pandalm" / "pandalm_test.jsonl", PAIRWISE.spec).rows)
    folder = demo_judge
    recast_rows(DEMO / "relevance_demo.jsonl", 200, tmp_path)
    assert main(["judge", "--judge", str(folder), "--input", str(tmp_path / "recast.jsonl"), "--output",
                 str(tmp_path / "out.jsonl")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "warning:" in err and "these rows differ from the rows the judge was calibrated on" in err

    judge = VerifierJudge(task=PAIRWISE, name="old").fit(rows[:200])
    save_bundle(bundle_from_judge(judge, judge_lm()), tmp_path / "old")
    assert main(["judge", "--judge", str(tmp_path / "old"), "--input", str(tmp_path / "recast.jsonl"), "--output",
                 str(tmp_path / "old.jsonl")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("is not checked") == 1


def test_rows_of_one_prompt_are_judged_and_not_compared(tmp_path: Path, capsys, demo_judge) -> None:
    from judgecal.cli import main

    rows = list(load_rows(DEMO / "pandalm" / "pandalm_test.jsonl", PAIRWISE.spec).rows)
    folder = demo_judge
    prompt = rows[0].inputs["prompt"]
    one = [{"id": r.id, **r.model_dump(mode="json")["inputs"]} for r in rows if r.inputs["prompt"] == prompt]
    source = tmp_path / "one.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in one), encoding="utf-8")
    assert main(["judge", "--judge", str(folder), "--input", str(source), "--output", str(tmp_path / "o.jsonl")]) == 0
    assert "not checked: too few prompts" in capsys.readouterr().out


def halves(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """The rows' inputs in two halves of disjoint prompts, drawn at random: nothing changed."""
    prompts = sorted({row["prompt"] for row in rows})
    first = set(np.random.default_rng(seed).permutation(prompts)[: len(prompts) // 2])
    inputs = [{"prompt": row["prompt"], "attribute": row["attribute"]} for row in rows]
    return [r for r in inputs if r["prompt"] in first], [r for r in inputs if r["prompt"] not in first]


def sketch(inputs: list[dict], seed: int = 0):
    from judgecal.stats.shift import sketch_rows

    probabilities = [None] * len(inputs)
    return sketch_rows(
        inputs, probabilities, fields=["prompt", "attribute"], labels=["true", "false"], source="x", seed=seed
    )


def assert_near_a_half_when_nothing_changed(path: Path, splits: int) -> None:
    """Folds of whole prompts from one sample dragged the out-of-fold AUC below 0.5 on
    halves of one file (0.39 on average on the shared relevance file); the AUC and the
    share unlike them come with the shuffled draws'."""
    from judgecal.stats.shift import compare_with_reference

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    parts = [halves(rows, seed) for seed in range(splits)]
    checks = [compare_with_reference(sketch(a), sketch(b), permutations=19, seed=s) for s, (a, b) in enumerate(parts)]
    assert abs(np.mean([c.auc for c in checks]) - 0.5) < 0.07
    assert all(c.null_auc is not None and c.null_unlike_share is not None for c in checks)
    assert abs(np.mean([c.unlike_share - c.null_unlike_share for c in checks])) < 0.1
    assert "with prompts shuffled" in checks[0].statement()
    means = np.mean([[c.auc, c.null_auc, c.unlike_share, c.null_unlike_share, c.differ] for c in checks], axis=0)
    auc, null_auc, unlike, null_unlike, flagged = means  # flagged: the share with p < 0.01
    print(
        f"AUC {auc:.2f}, shuffled {null_auc:.2f}; unlike {unlike:.2f} shuffled {null_unlike:.2f}; flagged {flagged:.0%}"
    )


def test_when_nothing_changed_the_auc_is_near_a_half_on_the_demo_data() -> None:
    assert_near_a_half_when_nothing_changed(DEMO / "relevance_demo.jsonl", splits=4)


@pytest.mark.shared_data
@needs(RELEVANCE_DEV)
def test_when_nothing_changed_the_auc_is_near_a_half_on_the_shared_data() -> None:
    assert_near_a_half_when_nothing_changed(RELEVANCE_DEV, splits=8)


def test_the_same_prompt_in_both_samples_is_one_group() -> None:
    from judgecal.stats.shift import _groups

    rows = [json.loads(line) for line in (DEMO / "relevance_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    inputs = [{"prompt": row["prompt"], "attribute": row["attribute"]} for row in rows[:120]]
    groups = _groups(sketch(inputs[::2]), sketch(inputs[1::2]))
    prompts = [r["prompt"] for r in inputs[::2] + inputs[1::2]]
    assert len(set(groups)) == len(set(prompts))


def test_rows_whose_inputs_are_models_are_sketched_and_checked(tmp_path: Path) -> None:
    """The attribute task's conversation is a list of turns, not text: it is sketched as its JSON."""
    from judgecal.judges.verdict import Verdict

    path = Path(__file__).parents[2] / "experiments" / "data" / "attribute_demo.jsonl"
    task = resolve_task("attribute")
    rows = list(load_rows(path, task.spec).rows)[:40]
    verdicts = [Verdict(label=row.label, probabilities={"true": 0.6, "false": 0.4}) for row in rows]
    reference = reference_sketch(rows[:20], verdicts[:20], task.spec, source="test")
    json.dumps(reference)
    assert check_rows(reference, rows[20:], verdicts[20:], task.spec) is not None
