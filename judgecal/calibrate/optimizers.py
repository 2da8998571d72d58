"""Calibrating a judge program against human labels with a DSPy optimizer.

The optimizer sees train (to draw demos from) and dev (to select among candidates),
never test. Its metric is class-balanced: with 17% positives, a judge that always says
"not relevant" is 83% accurate but scores 0.5 here, the same as a coin.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field

from judgecal.backends.calls import LMCallCounter
from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.judges.fitted import FittedJudge, ProgramJudge, unwrap
from judgecal.judges.program import JudgeFailedError, JudgeProgram
from judgecal.progress import library_prints_quiet
from judgecal.redact import error_line
from judgecal.tasks.registry import Task

OptimizerName = Literal[
    "none", "labeled_few_shot", "bootstrap_few_shot", "bootstrap_random_search", "mipro", "copro", "simba", "gepa"
]


OPTIMIZERS: tuple[str, ...] = OptimizerName.__args__  # type: ignore[attr-defined]


class CalibrationConfig(BaseModel):
    """Which strategy calibrates the judge, and the settings of the DSPy optimizers."""

    model_config = ConfigDict(extra="forbid")

    strategy: str | None = Field(
        default=None,
        description="A strategy by name: a DSPy optimizer (labeled_few_shot, bootstrap_few_shot, "
        "bootstrap_random_search, mipro, copro, simba, gepa), threshold, base_rate, order_swap, verifier, "
        "embedding_verifier or stacking; default: the optimizer below.",
    )
    optimizer: OptimizerName = Field(
        default="bootstrap_random_search", description="The DSPy optimizer used when no strategy is named."
    )
    seed: int = Field(default=0, description="Seed of the optimizer and of the strategies that draw at random.")
    max_bootstrapped_demos: int = Field(default=2, ge=0, description="Demos the optimizer bootstraps from train.")
    max_labeled_demos: int = Field(default=4, ge=0, description="Labelled train rows shown as demos.")
    num_candidate_programs: int = Field(default=4, ge=1, description="Random-search candidates.")
    num_candidates: int = Field(default=3, ge=1, description="MIPROv2 instruction/demo candidates.")
    num_trials: int = Field(default=6, ge=1, description="MIPROv2 trials.")
    minibatch_size: int = Field(default=25, ge=1, description="MIPROv2 minibatch size on dev.")
    proposer_max_tokens: int = Field(
        default=384, ge=16, description="Token budget of MIPROv2's instruction proposals (the judge's own is small)."
    )
    breadth: int = Field(default=3, ge=2, description="COPRO: instruction candidates per round.")
    depth: int = Field(default=2, ge=1, description="COPRO: rounds of refinement.")
    max_steps: int = Field(default=3, ge=1, description="SIMBA: optimization steps.")
    batch_size: int = Field(default=16, ge=2, description="SIMBA: mini-batch size.")
    max_metric_calls: int = Field(
        default=60,
        ge=1,
        description="GEPA: budget of metric evaluations; it tracks candidates on a third of this many dev rows.",
    )
    reflection_model: str | None = Field(
        default=None,
        description="GEPA: model that reflects on failures and rewrites instructions (default: the judge's own). "
        "A stronger model here is what GEPA is designed for.",
    )
    num_threads: int = Field(default=1, ge=1, description="Parallel LM calls (1 for in-process models).")
    C: float = Field(default=1.0, gt=0, description="Verifier: inverse regularisation of the logistic regression.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description='Settings of the chosen strategy by name, e.g. {head = "gradient_boosting"} for '
        'embedding_verifier or {verifiers = ["tfidf"], head = "logistic"} for stacking.',
    )
    max_select_rows: int | None = Field(
        default=100,
        gt=0,
        description="DSPy optimizers choose among their candidates on at most this many dev rows, drawn across "
        "groups (each candidate costs one LM call per row); SIMBA, which chooses on the rows it learns from, gets "
        "this many train rows. The calibrated judge is still scored on all of dev.",
    )


def strategy_name(config: CalibrationConfig) -> str:
    return config.strategy or config.optimizer


def to_examples(task: Task, rows: Sequence[LabeledRow]) -> list[dspy.Example]:
    """DSPy examples in group order: consecutive rows share prompt prefixes."""
    ordered = sorted(rows, key=lambda row: row.group)
    names = task.spec.input_names
    return [
        dspy.Example(**row.inputs, **{task.decision_field: row.label}, row_id=row.id).with_inputs(*names)
        for row in ordered
    ]


def class_balanced_metric(task: Task, labels: Sequence[LabelValue]) -> Callable[..., float]:
    """Per-example metric whose mean over a set is its balanced accuracy.

    A correct answer on a row of class ``y`` is worth ``1 / (K * share(y))``, shares taken
    from ``labels``: the dev rows candidates are scored on, so that the mean over dev is
    exactly balanced accuracy (shares from other rows would tilt it toward one class).
    While DSPy bootstraps demos (``trace`` is set) it only needs to know whether the
    answer is right.
    """
    counts = Counter(labels)
    total = sum(counts.values())
    classes = len(task.spec.labels)
    weight = {label: total / (classes * count) for label, count in counts.items()}
    field_name = task.decision_field
    spec = task.spec

    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        expected = example[field_name]
        try:
            answered = spec.parse_label(prediction.get(field_name))
        except (ValueError, AttributeError):
            answered = None
        correct = answered == expected
        if trace is not None:
            return float(correct)
        return weight.get(expected, 0.0) if correct else 0.0

    metric.__name__ = "class_balanced_accuracy"
    return metric


@dataclass
class CalibrationResult:
    program: JudgeProgram
    optimizer: str
    seconds: float
    lm_calls: int
    settings: dict[str, Any] = field(default_factory=dict)


def calibrate_program(
    task: Task,
    lm: Any,
    train: Sequence[LabeledRow],
    dev: Sequence[LabeledRow],
    config: CalibrationConfig,
    *,
    adapter: Any = None,
) -> CalibrationResult:
    """Compile the task's zero-shot program on train, selecting candidates on dev.

    An LM call that fails while compiling (after the LM's own retries) would be scored by
    DSPy as a wrong answer, or the row skipped; the calibration stops instead with
    :class:`JudgeFailedError`, saying how many calls failed."""
    from judgecal.data.split import sample_across_groups

    student = JudgeProgram(task.signature)
    dev = sample_across_groups(dev, config.max_select_rows, config.seed)
    if config.optimizer == "gepa":
        # GEPA first scores the starting program on all of its validation rows, against its
        # budget: two thirds of the budget stay for reflecting and trying new instructions.
        dev = sample_across_groups(dev, max(1, config.max_metric_calls // 3), config.seed)
    if config.optimizer == "simba":
        # SIMBA scores every candidate on every row it learns from: it chooses on train.
        train = sample_across_groups(train, config.max_select_rows, config.seed)
    trainset = to_examples(task, train)
    devset = to_examples(task, dev)
    metric = class_balanced_metric(task, [row.label for row in dev])
    adapter = adapter if adapter is not None else dspy.JSONAdapter()
    counter = LMCallCounter()
    started = time.perf_counter()
    try:
        with counter.counting(), dspy.context(lm=lm, adapter=adapter):
            program = _compile(student, trainset, devset, metric, config, lm)
    except Exception as error:
        if counter.failed:  # the optimizer gave up on the failed calls: say why
            raise failed_calls(counter, config.optimizer) from error
        raise
    if counter.failed:
        raise failed_calls(counter, config.optimizer)
    seconds = time.perf_counter() - started
    calls = counter.calls
    return CalibrationResult(
        program=program,
        optimizer=config.optimizer,
        seconds=seconds,
        lm_calls=calls,
        settings=config.model_dump(),
    )


def failed_calls(counter: LMCallCounter, optimizer: str) -> JudgeFailedError:
    """The error for a compilation during which LM calls failed: they were not answers."""
    last = error_line(counter.last_error, with_type=True) if counter.last_error is not None else "unknown"
    return JudgeFailedError(
        f"{counter.failed} of {counter.calls} LM calls failed during {optimizer} even after the LM's retries "
        f"(the last: {last}); they were not scored as answers, and no program was chosen on them. Check the "
        "judge model's server (or raise lm.num_retries) and run again"
    )


@dataclass(frozen=True)
class Compilation:
    """What every optimizer compiles from: the zero-shot program, train and dev as DSPy
    examples, the class-balanced metric, the settings and the judge's LM."""

    student: JudgeProgram
    trainset: list[dspy.Example]
    devset: list[dspy.Example]
    metric: Callable[..., float]
    config: CalibrationConfig
    lm: Any

    def proposer(self) -> Any:
        """The judge's LM with room to write instructions (its own answers are short)."""
        return self.lm.copy(max_tokens=self.config.proposer_max_tokens)


def _compile(
    student: JudgeProgram,
    trainset: list[dspy.Example],
    devset: list[dspy.Example],
    metric: Callable[..., float],
    config: CalibrationConfig,
    lm: Any,
) -> JudgeProgram:
    compile_with = COMPILERS.get(config.optimizer)
    if compile_with is None:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    with library_prints_quiet():
        return compile_with(Compilation(student, trainset, devset, metric, config, lm))


def _labeled_few_shot(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import LabeledFewShot

    return LabeledFewShot(k=c.config.max_labeled_demos).compile(c.student, trainset=c.trainset, sample=True)


def _bootstrap_few_shot(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import BootstrapFewShot

    return BootstrapFewShot(
        metric=c.metric,
        max_bootstrapped_demos=c.config.max_bootstrapped_demos,
        max_labeled_demos=c.config.max_labeled_demos,
    ).compile(c.student, trainset=c.trainset)


def _bootstrap_random_search(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import BootstrapFewShotWithRandomSearch

    return BootstrapFewShotWithRandomSearch(
        metric=c.metric,
        max_bootstrapped_demos=c.config.max_bootstrapped_demos,
        max_labeled_demos=c.config.max_labeled_demos,
        num_candidate_programs=c.config.num_candidate_programs,
        num_threads=c.config.num_threads,
    ).compile(c.student, trainset=c.trainset, valset=c.devset)


def _mipro(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import MIPROv2

    config = c.config
    optimizer = MIPROv2(
        metric=c.metric,
        prompt_model=c.proposer(),
        task_model=c.lm,
        max_bootstrapped_demos=config.max_bootstrapped_demos,
        max_labeled_demos=config.max_labeled_demos,
        auto=None,
        num_candidates=config.num_candidates,
        num_threads=config.num_threads,
        seed=config.seed,
        verbose=False,
    )
    return optimizer.compile(
        c.student,
        trainset=c.trainset,
        valset=c.devset,
        num_trials=config.num_trials,
        minibatch=len(c.devset) > config.minibatch_size,
        minibatch_size=min(config.minibatch_size, len(c.devset)),
    )


def _copro(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import COPRO

    optimizer = COPRO(
        prompt_model=_without_printed_history(c.proposer()),
        metric=c.metric,
        breadth=c.config.breadth,
        depth=c.config.depth,
        init_temperature=1.0,
    )
    # COPRO scores candidates on the set it is given: dev, where selection belongs.
    return optimizer.compile(
        c.student, trainset=c.devset, eval_kwargs={"num_threads": c.config.num_threads, "display_progress": True}
    )


def _simba(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import SIMBA

    return SIMBA(
        metric=c.metric,
        bsize=min(c.config.batch_size, len(c.trainset)),
        num_candidates=2,
        max_steps=c.config.max_steps,
        max_demos=c.config.max_labeled_demos,
        num_threads=c.config.num_threads,
    ).compile(c.student, trainset=c.trainset, seed=c.config.seed)


def _gepa(c: Compilation) -> JudgeProgram:
    from dspy.teleprompt import GEPA

    from judgecal.backends.models import build_lm
    from judgecal.backends.settings import LMConfig

    config = c.config
    reflection = (
        build_lm(LMConfig(model=config.reflection_model, max_tokens=config.proposer_max_tokens))
        if config.reflection_model
        else c.proposer()
    )
    return GEPA(
        metric=feedback_metric(c.metric, c.student),
        max_metric_calls=config.max_metric_calls,
        reflection_lm=reflection,
        num_threads=config.num_threads,
        seed=config.seed,
        track_stats=False,
    ).compile(c.student, trainset=c.trainset, valset=c.devset)


# How each optimizer compiles the judge's program: one entry per name of OptimizerName.
COMPILERS: dict[str, Callable[[Compilation], JudgeProgram]] = {
    "none": lambda c: c.student,
    "labeled_few_shot": _labeled_few_shot,
    "bootstrap_few_shot": _bootstrap_few_shot,
    "bootstrap_random_search": _bootstrap_random_search,
    "mipro": _mipro,
    "copro": _copro,
    "simba": _simba,
    "gepa": _gepa,
}


def _without_printed_history(lm: Any) -> Any:
    """``lm`` whose ``inspect_history`` returns instead of printing: COPRO formats it into a
    debug message, which prints the whole last prompt whatever the log level."""
    lm.inspect_history = lambda n=1: ""
    return lm


def feedback_metric(metric: Callable[..., float], student: JudgeProgram) -> Callable[..., Any]:
    """GEPA's five-argument metric: the class-balanced score plus what went wrong, in words."""
    field_name = next(iter(student.predict.signature.output_fields))

    def gepa_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        score = metric(gold, pred)
        expected = gold[field_name]
        answered = pred.get(field_name) if hasattr(pred, "get") else None
        if score > 0:
            feedback = f"Correct: the human label was {expected!r}."
        else:
            feedback = f"Wrong: you answered {answered!r} but the human label was {expected!r}."
        return dspy.Prediction(score=score, feedback=feedback)

    return gepa_metric


class PromptOptimizer(FittedJudge):
    """A DSPy optimizer compiling the judge's program on train, choosing among its
    candidates on dev; the compiled program is the fitted state."""

    kind = "program"
    SEARCHED: ClassVar[dict[str, tuple[str, ...]]] = {
        "labeled_few_shot": ("seed", "max_labeled_demos"),
        "bootstrap_few_shot": ("seed", "max_labeled_demos", "max_bootstrapped_demos"),
        "bootstrap_random_search": ("seed", "max_labeled_demos", "max_bootstrapped_demos", "num_candidate_programs"),
        "mipro": ("seed", "max_labeled_demos", "max_bootstrapped_demos"),
        "copro": ("seed",),
        "simba": ("seed", "max_labeled_demos"),
        "gepa": ("seed",),
    }

    def __init__(
        self,
        base: FittedJudge | None = None,
        optimizer: str = "bootstrap_random_search",
        seed: int = 0,
        max_labeled_demos: int = 4,
        max_bootstrapped_demos: int = 2,
        num_candidate_programs: int = 4,
        settings: CalibrationConfig | None = None,
    ) -> None:
        self.base = base
        self.optimizer = optimizer
        self.seed = seed
        self.max_labeled_demos = max_labeled_demos
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.num_candidate_programs = num_candidate_programs
        self.settings = settings

    @classmethod
    def search_space(cls, trial: Any, optimizer: str) -> dict[str, Any]:
        ranges = {"seed": (0, 9), "max_labeled_demos": (0, 4), "max_bootstrapped_demos": (0, 3)}
        ranges["num_candidate_programs"] = (1, 4)
        return {name: trial.suggest_int(f"{optimizer}.{name}", *ranges[name]) for name in cls.SEARCHED[optimizer]}

    def fit(self, train, dev=None):
        raw = unwrap(self.base) if self.base is not None else None
        if not isinstance(raw, ProgramJudge):
            raise ValueError(f"{self.optimizer} needs an LLM judge program (the raw judge is recorded verdicts)")
        if not dev:
            raise ValueError(f"{self.optimizer} needs dev rows to choose among its candidates")
        config = (self.settings or CalibrationConfig()).model_copy(
            update={
                "optimizer": self.optimizer,
                "seed": self.seed,
                "max_labeled_demos": self.max_labeled_demos,
                "max_bootstrapped_demos": self.max_bootstrapped_demos,
                "num_candidate_programs": self.num_candidate_programs,
            }
        )
        result = calibrate_program(raw.task, raw.lm, train, dev, config)
        self.program_ = result.program
        self.judge_ = ProgramJudge(raw.task, result.program, raw.lm, raw.name, num_threads=raw.num_threads)
        return self

    @property
    def program(self) -> JudgeProgram:
        return self.judge_.program

    def predict(self, rows, *, progress=None, description=""):
        return self.judge_.predict(rows, progress=progress, description=description)

    def state(self) -> dict[str, Any]:
        return self.judge_.state()
