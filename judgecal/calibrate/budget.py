"""How many LM calls a calibration or a search makes at most, computed from the row counts
and the settings before anything is judged: for a dry run, and for a search that keeps a
budget.

Calls are counted as :class:`~judgecal.backends.calls.LMCallCounter` counts them, cached
answers included (a call DSPy's cache answers costs nothing, but whether it will is not
known beforehand). Where the calls come from:

- **The raw judge** answers each row once for the whole run (``MemoJudge``): train only
  when a strategy reads its answers there (post-hoc, stacking), dev for the leaderboard's
  raw row and those strategies, test always, and the gate rows when a winner that reuses
  its answers is judged there.
- **A DSPy optimizer's fit**, bounded by what its loops can ask (read from DSPy 3.4's
  optimizers): a bootstrap goes through train at most once per candidate set and stops
  when it has its demos; candidates are scored on at most ``max_select_rows`` dev rows.
- **A trial** of a strategy that calls the model to fit is then judged on every dev row
  (pruning only lowers that); one scored by cross-validation reads the raw answers.
- **The winner** judges test and the gate rows: a DSPy program once more per row, a
  post-hoc strategy or a stack through the raw judge, a verifier not at all; pairwise
  tasks judge both orders.
- **A model that gives no token probabilities** (``stated``): a cut on P(positive)
  (``threshold``, ``base_rate``) asks the judge to state a 0–100 score instead, a new
  request per row each time it is fitted: on every row of each cross-validation fold, on
  train + dev once more for the refit, and on test and the gate rows. The bound counts
  them for a model token probabilities are not asked of (``[lm] logprobs``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.calibrate.strategies import StrategySpec

# What the families that read the raw judge's answers on train + dev are called.
READS_RAW_ANSWERS = ("post-hoc", "stacking")
# Strategies that ask for stated scores when the model gives no token probabilities.
STATES_SCORES = ("threshold", "base_rate")


@dataclass(frozen=True)
class RowCounts:
    """The rows of each part; ``order_swap``: test rows are judged in both orders too."""

    train: int
    dev: int
    test: int
    gate: int = 0
    order_swap: bool = False


@dataclass(frozen=True)
class StrategyBound:
    """One strategy at its settings: LM calls at most to fit, to score its trial on dev,
    and, as the winner, to judge test and the gate rows (beyond the raw judge's)."""

    strategy: str
    fit: int
    dev: int
    test: int
    gate: int
    params: dict[str, Any] = field(default_factory=dict)
    refit: int = 0  # fitted again on train + dev as the winner

    @property
    def trial(self) -> int:
        return self.fit + self.dev

    @property
    def winner(self) -> int:
        return self.refit + self.test + self.gate


def optimizer_fit_calls(optimizer: str, settings: CalibrationConfig, train: int, dev: int) -> int:
    """The most calls a DSPy optimizer makes to compile on ``train`` rows, choosing on
    ``dev`` rows (before ``max_select_rows`` caps them)."""
    s = settings
    select = min(dev, s.max_select_rows) if s.max_select_rows else dev
    bootstraps = train if s.max_bootstrapped_demos > 0 else 0  # a bootstrap stops once it has its demos
    if optimizer in ("none", "labeled_few_shot"):
        return 0
    if optimizer == "bootstrap_few_shot":
        return bootstraps
    if optimizer == "bootstrap_random_search":
        # zero-shot, labelled-only and unshuffled candidates, then num_candidate_programs shuffled ones
        return (s.num_candidate_programs + 3) * select + (s.num_candidate_programs + 1) * bootstraps
    if optimizer == "mipro":
        batch = min(s.minibatch_size, select)
        full_evals = 1 + s.num_trials // 5 + 1  # the default program, every fifth trial, the end
        evaluation = s.num_trials * batch + full_evals * select if select > s.minibatch_size else s.num_trials * select
        proposals = 12 + 2 + s.num_candidates  # data summary, program description, one per instruction
        return (s.num_candidates + 1) * bootstraps + evaluation + proposals
    if optimizer == "copro":
        return s.depth * s.breadth * select + s.depth * s.breadth  # candidates scored, then proposed
    if optimizer == "simba":
        rows = min(train, s.max_select_rows) if s.max_select_rows else train
        candidates, batch = 2, min(s.batch_size, rows)
        step = batch * candidates + candidates + (candidates + 1) * batch
        return s.max_steps * step + (candidates + 1) * rows
    if optimizer == "gepa":
        val = min(select, max(1, s.max_metric_calls // 3))
        return s.max_metric_calls + 2 * 3 + val + s.max_metric_calls // 3  # an iteration may overrun, reflections
    raise ValueError(f"no bound for optimizer {optimizer!r}")


def strategy_bound(
    spec: StrategySpec,
    settings: CalibrationConfig,
    params: dict[str, Any],
    rows: RowCounts,
    *,
    searched: bool = True,
    folds: int = 5,
    stated: bool = False,
) -> StrategyBound:
    """``spec`` at ``params`` (its own settings over ``settings``). ``searched``: a search's
    trial, scored on every dev row or over ``folds`` folds; a single calibration scores
    nothing on dev. ``stated``: the model may give no token probabilities."""
    swap = 2 if rows.order_swap else 1
    if stated and spec.name in STATES_SCORES:
        pool = rows.train + rows.dev
        if searched:
            return StrategyBound(spec.name, folds * pool, 0, rows.test, rows.gate, params, refit=pool)
        return StrategyBound(spec.name, pool, 0, rows.test, rows.gate, params)
    if spec.calls_lm_to_fit:
        known = {k: v for k, v in params.items() if k in CalibrationConfig.model_fields}
        merged = settings.model_copy(update={"optimizer": spec.name, **known})
        fit = optimizer_fit_calls(spec.name, merged, rows.train, rows.dev)
        return StrategyBound(spec.name, fit, rows.dev if searched else 0, swap * rows.test, swap * rows.gate, params)
    if spec.judges_twice:  # order swapping: the raw judge's answers and the swapped ones
        return StrategyBound(spec.name, 0, 2 * rows.dev if searched else 0, 2 * rows.test, 2 * rows.gate, params)
    gate = rows.gate if spec.family in READS_RAW_ANSWERS else 0  # the raw judge on the gate rows
    return StrategyBound(spec.name, 0, 0, 0, gate, params)


@dataclass(frozen=True)
class RunBound:
    """A calibration's or a search's LM calls at most, by part: the raw judge's, each trial
    (a single calibration: its one fit), and the winner's test and gate calls (the
    costliest strategy's, as the winner is not known beforehand)."""

    raw: dict[str, int]
    trials: list[StrategyBound]
    winner: StrategyBound | None

    @property
    def total(self) -> int:
        winner = self.winner.winner if self.winner is not None else 0
        return sum(self.raw.values()) + sum(t.trial for t in self.trials) + winner


def raw_calls(specs: Iterable[StrategySpec], rows: RowCounts, *, searched: bool, live: bool) -> dict[str, int]:
    """The raw judge's calls by part: nothing for recorded verdicts (``live`` false)."""
    if not live:
        return {"train": 0, "dev": 0, "test": 0}
    specs = list(specs)
    reads = any(spec.family in READS_RAW_ANSWERS for spec in specs)
    swap = 2 if rows.order_swap else 1
    return {
        "train": rows.train if reads else 0,
        "dev": rows.dev if reads or searched else 0,  # a search scores the raw judge on dev
        "test": swap * rows.test,
    }


def run_bound(
    trials: list[tuple[StrategySpec, dict[str, Any]]],
    settings: CalibrationConfig,
    rows: RowCounts,
    *,
    searched: bool,
    live: bool,
    folds: int = 5,
    stated: bool = False,
) -> RunBound:
    """The bound of a run whose trials are ``trials`` (strategy and settings; a single
    calibration: one, not scored on dev)."""
    bounds = [
        strategy_bound(spec, settings, params, rows, searched=searched, folds=folds, stated=stated)
        for spec, params in trials
    ]
    if not live:
        bounds = [StrategyBound(b.strategy, 0, 0, 0, 0, b.params) for b in bounds]
    # A single calibration's one strategy is the winner; a search's costliest might be.
    winner = max(bounds, key=lambda b: b.winner, default=None)
    return RunBound(raw_calls([spec for spec, _ in trials], rows, searched=searched, live=live), bounds, winner)


# The largest settings a search suggests (PromptOptimizer.search_space): a tuned trial's bound.
TOP_OF_RANGES = {"max_labeled_demos": 4, "max_bootstrapped_demos": 3, "num_candidate_programs": 4}


def search_trials(
    specs: list[StrategySpec],
    defaults: dict[str, dict[str, Any]],
    trials: int,
    settings: CalibrationConfig,
    rows: RowCounts,
) -> list[tuple[StrategySpec, dict[str, Any]]]:
    """The trials a search of ``trials`` runs at most: every strategy's defaults first,
    cheapest first as the study enqueues them, then tuned trials, each bounded by the
    costliest strategy at the top of its settings' ranges."""
    ordered = sorted(specs, key=lambda s: (s.scored_on_dev, s.complexity, s.name))
    planned = [(spec, defaults.get(spec.name, {})) for spec in ordered][:trials]
    if trials > len(planned) and ordered:
        costliest = max(ordered, key=lambda s: strategy_bound(s, settings, TOP_OF_RANGES, rows).trial)
        planned += [(costliest, dict(TOP_OF_RANGES))] * (trials - len(planned))
    return planned


@dataclass
class SearchBudget:
    """A search's budget in LM calls and dollars (either may be ``None``: no limit). Before
    each trial :meth:`refusal` checks the trial's bound against what is left once
    ``reserved()`` (the raw judge's calls still to come, the costliest winner's refit, test
    and gate calls) is set aside; ``spent()`` gives the calls and dollars counted so far
    (the real counter's). ``bound`` and ``cost`` turn a trial into its calls and dollars at
    most."""

    max_calls: int | None
    max_cost: float | None
    bound: Any  # (spec, params) -> StrategyBound
    cost: Any  # (calls, StrategyBound | None) -> float | None
    spent: Any  # () -> (calls, dollars | None)
    reserved: Any  # () -> (calls, dollars)

    @property
    def limited(self) -> bool:
        return self.max_calls is not None or self.max_cost is not None

    def refusal(self, spec: StrategySpec, params: dict[str, Any]) -> str | None:
        """Why the trial must be skipped to keep the budget, or ``None`` when it fits."""
        if not self.limited:
            return None
        bound = self.bound(spec, params)
        calls, dollars = self.spent()
        kept_calls, kept_dollars = self.reserved()
        if self.max_calls is not None:
            left = self.max_calls - calls - kept_calls
            if bound.trial > left:
                return (
                    f"skipped: up to {bound.trial:,} LM calls, {max(left, 0):,} left of --max-lm-calls "
                    f"{self.max_calls:,} ({calls:,} made, {kept_calls:,} kept for the raw judge and the winner)"
                )
        if self.max_cost is not None:
            trial_cost = self.cost(bound.trial, bound) or 0.0
            left_cost = self.max_cost - (dollars or 0.0) - kept_dollars
            if trial_cost > left_cost:
                return (
                    f"skipped: up to ${trial_cost:.4f}, ${max(left_cost, 0.0):.4f} left of --max-cost "
                    f"${self.max_cost:.2f} (${dollars or 0.0:.4f} spent, ${kept_dollars:.4f} kept for the raw judge "
                    "and the winner)"
                )
        return None
