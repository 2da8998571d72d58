"""Fitted judges: rows in, verdicts out, plain-JSON state to save.

:class:`FittedJudge` is the interface every calibrated judge answers, in the style of a
scikit-learn estimator (settings in the constructor, ``fit(train, dev=None)`` returning
self, fitted state in ``*_`` attributes, ``get_params`` / ``set_params``). The judges here
are the ones nothing is fitted for: :class:`ProgramJudge` (the LLM judge, raw or compiled),
:class:`RecordedJudge` (verdicts that already exist) and :class:`MemoJudge` (another judge
whose answers are kept per row). The strategies that learn live in :mod:`judgecal.calibrate`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.judges.program import Judge, JudgeProgram, swap_pair
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.judges.verifiers import decide
from judgecal.progress import ProgressFactory
from judgecal.stats.metrics import LabelSpace
from judgecal.tasks.registry import Task

if TYPE_CHECKING:
    from judgecal.judges.embeddings import SentenceEncoder


class NotPortableError(ValueError):
    """The judge reads verdicts that exist only for the rows it was calibrated on."""


class UnknownJudgeKindError(ValueError):
    """A saved judge state names a kind of judge this version cannot rebuild."""


class FittedJudge(BaseEstimator):
    """A judge: rows in, verdicts out, state to save. Strategies subclass it; a judge with
    nothing to learn fits as a no-op. A judge whose ``state()`` carries its own ``kind``
    rebuilds itself from that state with :meth:`from_state`."""

    kind: ClassVar[str] = "abstract"

    @property
    def task(self) -> Task:
        """The judge's own task, else its base judge's."""
        own = self.__dict__.get("_task")
        if own is not None:
            return own
        base = getattr(self, "base", None)
        if base is not None:
            return base.task
        raise ValueError(f"{type(self).__name__} has no task: give it one, or a base judge")

    @task.setter
    def task(self, value: Task | None) -> None:
        self.__dict__["_task"] = value

    @property
    def name(self) -> str:
        """The judge's own name, else its base judge's (the experiment's judge name)."""
        own = self.__dict__.get("_name")
        if own:
            return own
        base = getattr(self, "base", None)
        return base.name if base is not None else self.task.name

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    @property
    def space(self) -> LabelSpace:
        spec = self.task.spec
        return LabelSpace(labels=spec.labels, positive=spec.positive, ordinal=spec.is_ordinal)

    @property
    def uses_lm(self) -> bool:
        base = getattr(self, "base", None)
        return bool(base is not None and base.uses_lm)

    @property
    def reference_fields(self) -> tuple[str, ...]:
        """Names of the recorded verdicts (``reference_judges.<name>``) every row it judges
        must carry: a judge calibrated on them cannot judge a row without them."""
        base = getattr(self, "base_", None) or getattr(self, "base", None)
        return base.reference_fields if base is not None else ()

    @property
    def in_process(self) -> bool:
        """The model this judge calls runs in this process (llama.cpp), one call at a time:
        judging rows on several threads gains nothing."""
        base = getattr(self, "base", None)
        return bool(base is not None and base.in_process)

    def fit(self, train: Sequence[LabeledRow], dev: Sequence[LabeledRow] | None = None) -> FittedJudge:
        return self

    def predict(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        raise NotImplementedError

    def predict_swapped(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        swapped = [row.model_copy(update={"inputs": swap_pair(row.inputs)}) for row in rows]
        return self.predict(swapped, progress=progress, description=description)

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> FittedJudge:
        """The fitted judge ``state()`` describes, from plain JSON (no code is loaded from
        it): its settings and learned attributes as they were, with the task, LM, name and
        sentence encoder ``loader`` gives; a judge the state holds (a base, a stack's
        components) is rebuilt through ``loader.judge``."""
        raise NotImplementedError(f"{cls.__name__} is saved as the judge it wraps, not on its own")

    def __call__(self, **inputs: Any) -> Verdict:
        return self.predict([self.row_from_inputs(inputs)])[0]

    def row_from_inputs(self, item: LabeledRow | dict[str, Any], index: int = 0) -> LabeledRow:
        """A row this judge can judge, from a dict of its task's inputs (plus
        ``reference_judges``, which a judge calibrated on recorded verdicts reads), validated
        against the task; a row is returned as it is. ``index`` becomes the row's id."""
        if isinstance(item, LabeledRow):
            return item
        spec = self.task.spec
        item = dict(item)
        references = item.pop("reference_judges", None) or {}
        unknown = set(item) - set(spec.input_names)
        if unknown:
            raise ValueError(
                f"judge '{self.name}' takes {', '.join(spec.input_names)} (and reference_judges); "
                f"got also {sorted(unknown)}"
            )
        if not isinstance(references, dict):
            raise ValueError(f"reference_judges: expected a dict of judge name -> verdict, got {references!r}")
        validated = spec.inputs_model.model_validate(item)
        inputs = {name: getattr(validated, name) for name in spec.input_names}
        recorded = {str(name): spec.parse_label(value) for name, value in references.items() if value is not None}
        return LabeledRow(id=str(index), group="-", inputs=inputs, label=None, reference_judges=recorded)


@dataclass(frozen=True)
class StateLoader:
    """What a saved judge is rebuilt with besides its state: the task, the LM, the judge's
    name, the sentence encoder its embedding verifiers share, and the judge classes by
    ``kind`` (the registry, ``JUDGE_KINDS`` in :mod:`judgecal.calibrate.strategies`), so
    that a judge holding another in its state rebuilds that one through the same registry."""

    task: Task
    lm: Any
    name: str
    encoder: SentenceEncoder
    kinds: Mapping[str, type[FittedJudge]]

    def judge(self, state: dict[str, Any]) -> FittedJudge:
        """The judge of this state's ``kind``, rebuilt by its class's ``from_state``."""
        kind = state.get("kind")
        if kind not in self.kinds:
            raise UnknownJudgeKindError(
                f"unknown judge state kind {kind!r}; this judgecal rebuilds {', '.join(map(repr, self.kinds))}. "
                "A judge saved by a newer judgecal loads with that version: upgrade judgecal"
            )
        return self.kinds[kind].from_state(state, self)


def missing_reference(row: LabeledRow, name: str) -> str:
    """Why a row cannot be judged by a judge that reads ``reference_judges.<name>``: the
    field, the row's id and line, and what to add."""
    where = f"row {row.id!r}" + (f" (line {row.line})" if row.line is not None else "")
    return (
        f"{where}: field 'reference_judges.{name}' is missing; this judge was calibrated on {name}'s recorded "
        f"verdicts and needs one in every row it judges: add {name}'s verdict to the row"
    )


def positive_probability(verdicts: Sequence[Verdict], task: Task) -> np.ndarray:
    """P(positive) per verdict: the token probability where the judge gave one (an
    abstention keeps its own), its 0/1 answer otherwise, and 0.5 for a missing verdict
    (which then counts as undecided)."""
    positive = task.spec.positive
    out = []
    for verdict in verdicts:
        p = verdict.probability_of(positive)
        if p is None:
            p = 0.5 if verdict.label is None else float(verdict.label == positive)
        out.append(p)
    return np.asarray(out, dtype=float)


def label_probabilities(verdicts: Sequence[Verdict], task: Task) -> np.ndarray:
    """P(each label) per verdict, columns in label order; a verdict without probabilities is
    one-hot, a missing verdict uniform."""
    labels = task.spec.labels
    out = np.full((len(verdicts), len(labels)), 1.0 / len(labels))
    for i, verdict in enumerate(verdicts):
        if verdict.probabilities:
            values = np.array([verdict.probabilities.get(answer_key(label), 0.0) for label in labels])
            if values.sum() > 0:
                out[i] = values / values.sum()
                continue
        if verdict.label is not None:
            out[i] = [float(label == verdict.label) for label in labels]
    return out


def verdict_from_proba(task: Task, proba: np.ndarray, threshold: float | None) -> Verdict:
    """The verdict of a judge that predicts P(each label), columns in label order: the label
    :func:`~judgecal.judges.verifiers.decide` picks (a binary task's cut, else the most
    likely label), with the distribution and the chosen label's probability as confidence."""
    keys = [answer_key(label) for label in task.spec.labels]
    label = decide(proba, task.spec, threshold)
    distribution = {k: float(v) for k, v in zip(keys, proba, strict=True)}
    return Verdict(label=label, confidence=distribution[answer_key(label)], probabilities=distribution)


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 0.02, 0.98)
    return np.log(q / (1 - q))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class ProgramJudge(FittedJudge):
    """The LLM judge: a DSPy program run by an LM (raw, or compiled by an optimizer).
    ``num_threads`` rows go to a remote model at once; an in-process one takes one."""

    kind = "program"

    def __init__(self, task: Task, program: JudgeProgram, lm: Any, name: str, num_threads: int = 1) -> None:
        self.task = task
        self.program = program
        self.lm = lm
        self.name = name
        self.num_threads = num_threads
        self.judge = Judge(task, program, lm=lm, name=name, num_threads=num_threads)

    @property
    def uses_lm(self) -> bool:
        return True

    @property
    def in_process(self) -> bool:
        return self.judge.in_process

    def predict(self, rows, *, progress=None, description=""):
        return self.judge.predict(rows, progress=progress, description=description or self.name)

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "program": self.program.dump_state(),
            "verbalized": bool(getattr(self.program, "verbalized", False)),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> ProgramJudge:
        """The saved program (instructions, demos) run by the loader's LM."""
        program = JudgeProgram(loader.task.signature, verbalized=bool(state.get("verbalized")))
        program.load_state(_without_lms(state["program"]))
        return cls(loader.task, program, loader.lm, loader.name)


class RecordedJudge(FittedJudge):
    """Verdicts that already exist: a ``reference_judges`` field of the rows, or a verdicts
    file keyed by row id (optionally with a probability; a verdict of None is the file's
    abstention). No model is called."""

    kind = "recorded"

    def __init__(
        self,
        task: Task,
        source: str,
        name: str,
        verdicts: dict[str, tuple[LabelValue | None, float | None]] | None = None,
    ) -> None:
        self.task = task
        self.source = source
        self.name = name
        self.verdicts = verdicts

    def predict(self, rows, *, progress=None, description=""):
        positive = self.task.spec.positive
        out = []
        for row in rows:
            if self.verdicts is not None:
                label, probability = self.verdicts.get(row.id, (None, None))
            else:
                label, probability = row.reference_judges.get(self.source), None
            if label is None and self.verdicts is not None and row.id in self.verdicts:
                out.append(Verdict(label=None, abstained=True, probabilities=self._binary(probability)))
                continue
            if label is None:
                if self.verdicts is None:
                    why = missing_reference(row, self.source)
                else:
                    why = f"no recorded verdict of {self.source!r} for row {row.id!r}"
                out.append(Verdict(label=None, error=why))
                continue
            if positive is not None:
                p = probability if probability is not None else float(label == positive)
                probabilities = {answer_key(positive): p, answer_key(self.task.spec.negative): 1 - p}
            else:
                probabilities = {answer_key(v): float(v == label) for v in self.task.spec.labels}
            out.append(
                Verdict(label=label, confidence=probabilities.get(answer_key(label)), probabilities=probabilities)
            )
        return out

    def _binary(self, probability: float | None) -> dict[str, float] | None:
        """A yes/no task's answers with P(positive) ``probability``, when there is one."""
        positive = self.task.spec.positive
        if probability is None or positive is None:
            return None
        return {answer_key(positive): probability, answer_key(self.task.spec.negative): 1 - probability}

    @property
    def reference_fields(self) -> tuple[str, ...]:
        return (self.source,) if self.verdicts is None else ()

    def state(self) -> dict[str, Any]:
        if self.verdicts is not None:
            raise NotPortableError(
                f"it reads verdicts by row id from {self.source}, which has none for new rows; calibrate verdicts "
                "the rows carry (--recorded NAME, reference_judges.NAME) to export a judge that can judge new rows"
            )
        return {"kind": self.kind, "source": self.source}

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> RecordedJudge:
        """Verdicts read from each row's ``reference_judges`` (only those are saved)."""
        return cls(loader.task, state["source"], loader.name)


class MemoJudge(FittedJudge):
    """Another judge whose answers are kept per row (id and inputs, so a row with its
    responses swapped is another row), so that every trial of a search and the report ask
    the model about a row once. Verdicts that failed are not kept; abstentions, which are
    answers, are."""

    kind = "memo"

    def __init__(self, base: FittedJudge) -> None:
        self.base = base

    def predict(self, rows, *, progress=None, description=""):
        memo: dict[tuple[str, str], Verdict] = self.__dict__.setdefault("_memo", {})
        keys = [(row.id, inputs_key(row.inputs)) for row in rows]
        missing = [row for row, key in zip(rows, keys, strict=True) if key not in memo]
        fresh: dict[tuple[str, str], Verdict] = {}
        if missing:
            verdicts = self.base.predict(missing, progress=progress, description=description)
            for row, verdict in zip(missing, verdicts, strict=True):
                key = (row.id, inputs_key(row.inputs))
                fresh[key] = verdict
                if verdict.label is not None or verdict.abstained:
                    memo[key] = verdict
        return [memo.get(key) or fresh[key] for key in keys]

    def state(self) -> dict[str, Any]:
        return self.base.state()

    @property
    def program(self) -> Any:
        return getattr(self.base, "program", None)

    @property
    def answered(self) -> int:
        """Rows (in each order asked) the judge has answered and will not be asked again."""
        return len(self.__dict__.get("_memo", {}))


def unwrap(judge: FittedJudge) -> FittedJudge:
    """The judge behind any memo."""
    while isinstance(judge, MemoJudge):
        judge = judge.base
    return judge


def _without_lms(program_state: dict[str, Any]) -> dict[str, Any]:
    """A saved program never carries an LM: DSPy's LM state can name engine classes to
    import, and a judge's LM comes from its bundle settings instead."""
    return {
        name: ({**value, "lm": None} if isinstance(value, dict) and "lm" in value else value)
        for name, value in program_state.items()
    }


def inputs_key(inputs: dict[str, Any]) -> str:
    """A row's inputs as one canonical string: the same inputs, the same key."""

    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump()
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return json.dumps({k: plain(v) for k, v in sorted(inputs.items())}, sort_keys=True, ensure_ascii=False, default=str)
