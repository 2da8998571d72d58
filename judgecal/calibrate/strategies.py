"""Strategies by name: how each is built from the raw judge, its search space, what it
needs, and how a fitted judge is rebuilt from its saved state.

To add a strategy: write an estimator class (settings in ``__init__``, ``fit(train,
dev=None)`` returning self, fitted state in ``*_`` attributes, ``state()`` as plain JSON
under its ``kind``, a ``from_state`` classmethod rebuilding it, ``search_space`` beside
it), add the class to :data:`JUDGE_KINDS` and a :class:`StrategySpec` to
:data:`STRATEGIES`. ARCHITECTURE.md walks through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from judgecal.backends.calls import LMUsage
from judgecal.backends.pricing import Prices
from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.optimizers import CalibrationConfig, PromptOptimizer
from judgecal.calibrate.posthoc import OrderSwapJudge, ThresholdJudge
from judgecal.calibrate.selective import SelectiveJudge
from judgecal.calibrate.trained import StackingJudge, VerifierJudge, default_stack_verifiers
from judgecal.data.rows import LabeledRow
from judgecal.judges.embeddings import SentenceEncoder, embeddings_available
from judgecal.judges.fitted import FittedJudge, ProgramJudge, RecordedJudge, StateLoader, unwrap
from judgecal.tasks.registry import Task

# Every kind of judge a saved state can hold, by the ``kind`` its ``state()`` writes; each
# class rebuilds itself with ``from_state``. A PromptOptimizer saves its compiled program
# (kind "program") and a MemoJudge the judge it wraps, so neither has a kind of its own.
JUDGE_KINDS: dict[str, type[FittedJudge]] = {
    judge.kind: judge
    for judge in (
        ProgramJudge,
        RecordedJudge,
        ThresholdJudge,
        OrderSwapJudge,
        VerifierJudge,
        StackingJudge,
        SelectiveJudge,
    )
}


def judge_from_state(
    state: dict[str, Any], task: Task, lm: Any, name: str, encoder: SentenceEncoder | None = None
) -> FittedJudge:
    """Rebuild a fitted judge from its plain-JSON state (no code is loaded from it): the
    class :data:`JUDGE_KINDS` names for its ``kind``; its embedding verifiers, if any,
    encode with ``encoder`` (one shared by all of them)."""
    encoder = encoder if encoder is not None else SentenceEncoder()
    return StateLoader(task, lm, name, encoder, JUDGE_KINDS).judge(state)


@dataclass
class StrategyEnv:
    """What strategies are built from: the task, the raw judge (answers kept per row), the
    judge's LM, the DSPy settings, the names of the judges the rows already hold, the
    run's sentence encoder (the workspace's: its model and embeddings loaded once), and the
    prices its LM calls are counted at."""

    task: Task
    raw: FittedJudge
    lm: Any = None
    settings: CalibrationConfig = field(default_factory=CalibrationConfig)
    references: tuple[str, ...] = ()
    log: Callable[[str], None] = print
    encoder: SentenceEncoder = field(default_factory=SentenceEncoder)
    prices: Prices = field(default_factory=Prices)

    @property
    def base_is_live(self) -> bool:
        return isinstance(unwrap(self.raw), ProgramJudge)


@dataclass(frozen=True)
class StrategySpec:
    """A strategy by name: how to build its estimator, its search space, what it needs.

    ``complexity`` orders strategies for the selection rule (the simpler one wins when two
    are within one standard error): post-hoc 1, TF-IDF verifier 2, embedding verifier 3,
    stacking 4, DSPy optimizers 5 and up."""

    name: str
    family: str
    description: str
    build: Callable[[StrategyEnv, dict[str, Any]], FittedJudge]
    space: Callable[[Any, StrategyEnv], dict[str, Any]]
    complexity: int
    needs_program: bool = False
    binary_only: bool = False
    pairwise_only: bool = False
    needs_extra: str | None = None
    calls_lm_to_fit: bool = False
    judges_twice: bool = False

    @property
    def scored_on_dev(self) -> bool:
        """Scored on the dev hold-out rather than by cross-validation: a strategy that calls
        the model to fit, or one that judges every row twice and has nothing to fit (order
        swapping), which would otherwise ask the model about all of train + dev twice."""
        return self.calls_lm_to_fit or self.judges_twice

    @property
    def selects_on_dev(self) -> bool:
        """How the judge that is reported and exported is fitted: a strategy that calls the
        model to fit is compiled on train and selects its candidates on dev (a search keeps
        the program its winning trial compiled); any other is fitted again on train + dev,
        its own cut chosen on out-of-fold predictions. Order swapping fits nothing, so it
        is fitted again like the others although the search scores it on dev."""
        return self.calls_lm_to_fit

    def available(self) -> bool:
        return self.needs_extra != "embeddings" or embeddings_available()

    def applies_to(self, task: Task, has_program: bool) -> bool:
        if self.needs_program and not has_program:
            return False
        if self.binary_only and not task.spec.is_binary:
            return False
        return not (self.pairwise_only and not task.spec.is_pairwise)


def _dspy_spec(name: str, description: str, complexity: int) -> StrategySpec:
    def build(env: StrategyEnv, params: dict[str, Any]) -> FittedJudge:
        settings = env.settings
        defaults = {
            "seed": settings.seed,
            "max_labeled_demos": settings.max_labeled_demos,
            "max_bootstrapped_demos": settings.max_bootstrapped_demos,
            "num_candidate_programs": settings.num_candidate_programs,
        }
        return PromptOptimizer(base=env.raw, optimizer=name, settings=settings, **{**defaults, **params})

    return StrategySpec(
        name,
        "dspy",
        description,
        build,
        lambda trial, env: PromptOptimizer.search_space(trial, name),
        complexity,
        needs_program=True,
        calls_lm_to_fit=True,
    )


def _verifier_spec(name: str, features: str, description: str, complexity: int, extra: str | None) -> StrategySpec:
    def build(env: StrategyEnv, params: dict[str, Any]) -> FittedJudge:
        return VerifierJudge(task=env.task, features=features, name=env.raw.name, encoder=env.encoder, **params)

    return StrategySpec(
        name,
        "verifier",
        description,
        build,
        lambda trial, env: VerifierJudge.search_space(trial, name, features=features),
        complexity,
        needs_extra=extra,
    )


def _stacking_build(env: StrategyEnv, params: dict[str, Any]) -> FittedJudge:
    params = {"verifiers": default_stack_verifiers(), **params}
    return StackingJudge(base=env.raw, references=env.references, encoder=env.encoder, **params)


def _stacking_space(trial: Any, env: StrategyEnv) -> dict[str, Any]:
    options = ("tfidf", "embedding", "embedding_gb") if embeddings_available() else ("tfidf",)
    return StackingJudge.search_space(trial, "stacking", verifiers=options, base_is_live=env.base_is_live)


def _no_space(trial: Any, env: StrategyEnv) -> dict[str, Any]:
    return {}


STRATEGIES: dict[str, StrategySpec] = {
    "threshold": StrategySpec(
        "threshold",
        "post-hoc",
        "cut on P(positive) maximising κ",
        lambda env, params: ThresholdJudge(base=env.raw, rule="kappa"),
        _no_space,
        1,
        binary_only=True,
    ),
    "base_rate": StrategySpec(
        "base_rate",
        "post-hoc",
        "cut selecting the human rate",
        lambda env, params: ThresholdJudge(base=env.raw, rule="base_rate"),
        _no_space,
        1,
        binary_only=True,
    ),
    "order_swap": StrategySpec(
        "order_swap",
        "post-hoc",
        "judge both orders and reconcile",
        lambda env, params: OrderSwapJudge(base=env.raw),
        _no_space,
        1,
        pairwise_only=True,
        judges_twice=True,
    ),
    "verifier": _verifier_spec("verifier", "tfidf", "TF-IDF + logistic regression on the human labels", 2, None),
    "embedding_verifier": _verifier_spec(
        "embedding_verifier",
        "embedding",
        "all-MiniLM-L6-v2 embeddings + logistic regression or gradient boosting (extra: embeddings)",
        3,
        "embeddings",
    ),
    "stacking": StrategySpec(
        "stacking",
        "stacking",
        "judge probability + recorded judges + verifiers' out-of-fold scores, stacked",
        _stacking_build,
        _stacking_space,
        4,
    ),
    **{
        name: _dspy_spec(name, description, complexity)
        for complexity, (name, description) in enumerate(
            (
                ("labeled_few_shot", "DSPy LabeledFewShot: labelled train rows as demos"),
                ("bootstrap_few_shot", "DSPy BootstrapFewShot: demos the judge itself got right"),
                ("bootstrap_random_search", "DSPy BootstrapFewShotWithRandomSearch: demo sets selected on dev"),
                ("mipro", "DSPy MIPROv2: proposed instructions and demos, Bayesian search on dev"),
                ("copro", "DSPy COPRO: instruction refinement scored on dev"),
                ("simba", "DSPy SIMBA: stochastic introspective mini-batch ascent"),
                ("gepa", "DSPy GEPA: reflective instruction evolution (reflection model configurable)"),
            ),
            start=5,
        )
    },
}


def resolve_strategies(names: Sequence[str] | str, task: Task, *, has_program: bool) -> list[StrategySpec]:
    """Strategy specs by name (``"all"`` = every strategy that applies to this task)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if list(names) == ["all"]:
        return [spec for spec in STRATEGIES.values() if spec.applies_to(task, has_program) and spec.available()]
    chosen = []
    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} or 'all'")
        spec = STRATEGIES[name]
        if not spec.available():
            raise ValueError(
                f"strategy {name!r} needs the optional extra {spec.needs_extra!r}: in a clone of judgecal, "
                f'pip install -e ".[{spec.needs_extra}]" (make install installs every extra)'
            )
        if not spec.applies_to(task, has_program):
            reason = (
                "needs an LLM judge program (the raw judge is recorded verdicts)"
                if spec.needs_program and not has_program
                else "applies to binary tasks only"
                if spec.binary_only
                else "applies to pairwise tasks only"
            )
            raise ValueError(f"strategy {name!r} {reason}")
        chosen.append(spec)
    return chosen


@dataclass
class FitResult:
    judge: FittedJudge
    strategy: str
    params: dict[str, Any]
    seconds: float
    lm_calls: int
    usage: LMUsage | None = None


def fit_judge(
    spec: StrategySpec,
    env: StrategyEnv,
    params: dict[str, Any],
    train: Sequence[LabeledRow],
    dev: Sequence[LabeledRow] | None,
    guard: RowGuard,
    *,
    step: str = "fit",
) -> FitResult:
    """Build and fit one strategy, checking every row it sees against the test rows and
    counting every LM call it makes (cached answers included) with its tokens and cost."""
    from judgecal.backends.calls import LMCallCounter

    guard.check(train, f"{spec.name}: {step}")
    if dev:
        guard.check(dev, f"{spec.name}: select on dev")
    counter = LMCallCounter()
    started = time.perf_counter()
    judge = spec.build(env, dict(params))
    with counter.counting():
        judge.fit(train, dev)
    guard.check_demos(judge, env.task.spec.input_names, f"{spec.name}: demos")
    return FitResult(
        judge=judge,
        strategy=spec.name,
        params=dict(params),
        seconds=time.perf_counter() - started,
        lm_calls=counter.calls,
        usage=counter.usage(env.prices),
    )
