"""What the steps of a calibration hand each other: the prepared rows and judges
(:class:`Prepared`), the fitted judge with its band (:class:`Banded`), one judge's
verdicts on test (:class:`SideResult`), the MLflow run that recorded it
(:class:`TrackedRun`) and the whole (:class:`CalibrationReport`).

Each step returns one of these and the next reads it; no step writes into an object it
was given. The steps (``calibration``, ``tracking``, ``publish``, ``search``) import this
module, and none imports another step to learn its types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from judgecal.backends.calls import LMUsage
from judgecal.backends.pricing import Prices
from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.strategies import FitResult, StrategyEnv
from judgecal.data.rows import Dataset, LabeledRow
from judgecal.data.split import Split
from judgecal.export.registry import RegistryDecision
from judgecal.judges.embeddings import SentenceEncoder
from judgecal.judges.fitted import FittedJudge, ProgramJudge
from judgecal.judges.program import JudgeProgram
from judgecal.judges.verdict import Verdict
from judgecal.pipeline.config import ExperimentConfig
from judgecal.report.agreement import AgreementReport
from judgecal.report.records import EvaluationRecord
from judgecal.report.selective import SelectiveReport
from judgecal.stats.selective import BandChoice
from judgecal.tasks.registry import Task
from judgecal.workspace import Workspace


@dataclass(frozen=True)
class SideResult:
    """One judge's verdicts on the test split and their agreement with humans."""

    verdicts: list[Verdict]
    swapped: list[Verdict] | None
    metrics: dict[str, float]
    seconds: float


@dataclass
class Prepared:
    """Everything a calibration starts from: rows split by group, the raw judge, the guard
    that keeps test rows out of fitting and selection, and the run's workspace."""

    config: ExperimentConfig
    task: Task
    dataset: Dataset
    split: Split
    lm: Any
    raw: FittedJudge
    guard: RowGuard
    order_swap: bool
    workspace: Workspace
    started_at: float = field(default_factory=time.time)
    gate_rows: tuple[LabeledRow, ...] = ()

    @property
    def reference_judges(self) -> tuple[str, ...]:
        return tuple(sorted({name for row in self.dataset.rows for name in row.reference_judges}))

    def env(self, log: Any = print) -> StrategyEnv:
        """What strategies are built from; the raw judge's answers are kept per row, and
        sentence embeddings in the workspace."""
        return StrategyEnv(
            task=self.task,
            raw=self.raw,
            lm=self.lm,
            settings=self.config.calibration,
            references=self.reference_judges,
            log=log,
            encoder=SentenceEncoder.for_workspace(self.workspace),
            prices=self.prices,
        )

    @property
    def prices(self) -> Prices:
        """What the run's LM calls cost: the ``[lm] price_per_million`` given for the judge's
        model, LiteLLM's cost table for any other (0 in process)."""
        override = self.config.lm.price_per_million
        if override is None or self.lm is None:
            return Prices()
        return Prices({self.lm.model: override})


@dataclass(frozen=True)
class Banded:
    """What ``select_band`` made of a fitted judge: the result that is reported and
    exported (its judge selective when a band met the targets, else as it was fitted), the
    judge before the band, and the band or why there is none (``None``: no [selective])."""

    result: FitResult
    base: FittedJudge
    band: BandChoice | None = None

    @property
    def selective(self) -> bool:
        return self.band is not None and self.band.found


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a calibration was recorded in, and what was exported into it: the
    model's URI, or why nothing was (a judge that cannot judge new rows)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None = None
    not_exported: str | None = None


@dataclass(frozen=True)
class CalibrationReport:
    """A calibration's outcome: the raw and the calibrated judge on test, the evaluation
    record and agreement behind them, the gate record, and (when tracked) the run and the
    registry's decision. With [selective]: the band (or why there is none) and what the
    selective judge did on test; ``calibrated`` is then the judge before its band, on every
    test row, and ``calibrated_judge`` the selective one that is exported."""

    config: ExperimentConfig
    task: Task
    split: Split
    raw: SideResult
    calibrated: SideResult
    calibration_seconds: float
    calibration_lm_calls: int
    strategy: str = ""
    metric_names: list[str] = field(default_factory=list)
    lm: Any = None
    calibrated_judge: FittedJudge | None = None
    record: EvaluationRecord | None = None
    agreement: AgreementReport | None = None
    started_at: float = field(default_factory=time.time)
    gate: EvaluationRecord | None = None
    tracked: TrackedRun | None = None
    registry: RegistryDecision | None = None
    band: BandChoice | None = None
    selective: SelectiveReport | None = None
    usage: LMUsage | None = None  # every LM call of the run: fitting (a search's trials), test, gate

    @property
    def calibrated_program(self) -> JudgeProgram | None:
        return self.calibrated_judge.program if isinstance(self.calibrated_judge, ProgramJudge) else None

    @property
    def delta(self) -> dict[str, float]:
        return {
            name: self.calibrated.metrics[name] - self.raw.metrics[name]
            for name in self.metric_names
            if name in self.raw.metrics and name in self.calibrated.metrics
        }

    def table(self) -> list[tuple[str, float, float, float]]:
        delta = self.delta
        return [(m, self.raw.metrics[m], self.calibrated.metrics[m], delta[m]) for m in self.metric_names if m in delta]
