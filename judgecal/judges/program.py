"""Judges: a DSPy program for a task, run over rows to give verdicts.

``JudgeProgram`` is the small DSPy module optimizers compile (instructions and demos
live on its ``predict``). ``Judge`` pairs a program with the LM that runs it and a
decision rule, and turns rows into :class:`Verdict` objects, scikit-learn style:
``judge.predict(rows)`` and ``judge.score(rows)``.

A verdict is invalid only when an answer arrived and could not be read. A call that
failed (rate limit, server error, timeout, lost connection) is retried with backoff; if it
still fails, or the row does not fit the model's context, the row raises
:class:`RowFailedError` naming it: it is never scored as a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dspy
from pydantic import BaseModel, ConfigDict, Field

from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.progress import ProgressFactory
from judgecal.redact import error_line, redact_text
from judgecal.stats.metrics import LabelSpace, label_metrics, order_consistency
from judgecal.tasks.registry import Task

FAILING_START = 3

T = TypeVar("T")
R = TypeVar("R")


class JudgeFailedError(RuntimeError):
    """A judge that fails on every one of its first rows is misconfigured, not wrong; a
    compilation during which LM calls failed chose its program on calls that gave no answer."""


class RowFailedError(RuntimeError):
    """The judge model gave no answer for one row: its call kept failing, or the row is
    longer than the model's context. Nothing was scored for the row."""

    def __init__(self, message: str, *, row_id: str, line: int | None, reason: str) -> None:
        super().__init__(message)
        self.row_id = row_id
        self.line = line
        self.reason = reason


class RetryPolicy(BaseModel):
    """How a judge retries a call that failed for a transient reason (HTTP 429 or 5xx, a
    timeout, a lost connection), on top of the LM's own retries: outages outlast those."""

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=2, ge=1, description="Calls per row, the first included.")
    first_wait: float = Field(default=2.0, ge=0, description="Seconds before the first retry; doubled each time.")
    max_wait: float = Field(default=60.0, ge=0, description="Longest wait, also for a server's Retry-After.")

    def wait(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1): exponential backoff,
        or longer when the server asked for it (``retry_after``)."""
        backoff = self.first_wait * 2 ** (attempt - 1)
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and hint > backoff:
            backoff = float(hint)
        return min(backoff, self.max_wait)


class JudgeProgram(dspy.Module):
    """One ``Predict`` over the task's signature: the unit DSPy optimizers tune.

    ``verbalized=True`` adds an output where the judge states how likely the positive
    answer is (0–100): the confidence to threshold on when the backend gives no token
    probabilities.
    """

    def __init__(self, signature: Any, *, verbalized: bool = False) -> None:
        super().__init__()
        self.verbalized = verbalized
        self.predict = dspy.Predict(verbalized_signature(signature) if verbalized else signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.predict(**inputs)


VERBALIZED_FIELD = "probability_percent"


def verbalized_signature(signature: Any) -> Any:
    """The signature plus an integer 0–100 output: the judge's stated chance of the positive
    answer. Appended after the decision so the decision is made first."""
    from typing import Annotated

    from pydantic import Field as PydanticField

    return signature.append(
        VERBALIZED_FIELD,
        dspy.OutputField(desc="How likely the answer above is true, from 0 (surely not) to 100 (surely)."),
        type_=Annotated[int, PydanticField(ge=0, le=100)],
    )


def answer_probabilities(logprobs: Any, field: str, answers: Sequence[LabelValue]) -> dict[str, float] | None:
    """Probability of each allowed answer of ``field``, read from token logprobs.

    Works on any OpenAI-shaped ``logprobs.content``: finds the first token where the
    field's value begins to differ between answers and compares the answers' tokens
    among that step's alternatives. Returns None when the logprobs do not show it.
    """
    content = _content_of(logprobs)
    if not content:
        return None
    keys = [answer_key(a) for a in answers]
    texts = [str(_get(token, "token") or "") for token in content]
    joined = "".join(texts)
    match = re.search(r'"' + re.escape(field) + r'"\s*:\s*', joined)
    if match is None:
        return None
    value_at = match.end()
    offset = 0
    for token, text in zip(content, texts, strict=True):
        end = offset + len(text)
        if end <= value_at:
            offset = end
            continue
        lead = text[: max(0, value_at - offset)]
        chosen_rest = text[len(lead) :].lstrip(' "')
        if not chosen_rest:
            offset = end
            continue
        scores: dict[str, float] = {}
        seen: set[str] = set()
        alternatives = [(text, _get(token, "logprob"))]
        alternatives += [(_get(alt, "token"), _get(alt, "logprob")) for alt in _get(token, "top_logprobs") or []]
        for alt_text, logprob in alternatives:
            if alt_text is None or logprob is None or alt_text in seen or not alt_text.startswith(lead):
                continue
            seen.add(alt_text)
            rest = alt_text[len(lead) :].lstrip(' "')
            if not rest:
                continue
            matching = [key for key in keys if key.startswith(rest) or rest.startswith(key)]
            if len(matching) != 1:
                continue
            scores[matching[0]] = _logsumexp(scores.get(matching[0]), float(logprob))
        if not scores:
            return None
        top = max(scores.values())
        weights = {key: _exp(scores[key] - top) if key in scores else 0.0 for key in keys}
        total = sum(weights.values())
        return {key: weight / total for key, weight in weights.items()}
    return None


def _content_of(logprobs: Any) -> list[Any] | None:
    if logprobs is None:
        return None
    content = _get(logprobs, "content")
    return list(content) if content else None


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _exp(value: float) -> float:
    import math

    return math.exp(value)


def _logsumexp(current: float | None, value: float) -> float:
    import math

    if current is None:
        return value
    top = max(current, value)
    return top + math.log(math.exp(current - top) + math.exp(value - top))


class Judge:
    """A task's program bound to an LM: rows in, verdicts out.

    Rows are judged in group order, so consecutive prompts share their instructions, demos
    and often the first input: a local model reuses that prefix. A remote model is sent
    ``num_threads`` rows at once through DSPy's parallel executor; an in-process model
    judges one row at a time whatever ``num_threads`` says.
    """

    def __init__(
        self,
        task: Task,
        program: JudgeProgram | None = None,
        *,
        lm: Any = None,
        adapter: Any = None,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        num_threads: int = 1,
    ) -> None:
        self.task = task
        self.program = program if program is not None else JudgeProgram(task.signature)
        self.lm = lm
        self.adapter = adapter if adapter is not None else dspy.JSONAdapter()
        self.name = name or task.name
        self.retry = retry if retry is not None else RetryPolicy()
        self.num_threads = num_threads

    @property
    def in_process(self) -> bool:
        """The model runs in this process (an engine object such as judgecal's llama.cpp one):
        one call at a time. A LiteLLM model names its engine with a string."""
        engine = getattr(self.lm, "engine", None)
        return engine is not None and not isinstance(engine, str)

    # -- one row ---------------------------------------------------------------------

    def judge_inputs(self, inputs: dict[str, Any]) -> Verdict:
        """Judge one set of inputs. An answer that cannot be read becomes an invalid
        verdict; a failed call is retried (see :class:`RetryPolicy`) and, if it still
        fails, raises the LM's error (``dspy.utils.exceptions.LMError``)."""
        from dspy.utils.exceptions import LMError

        field = self.task.decision_field
        try:
            prediction = self._call(inputs)
        except (LMError, FileNotFoundError):
            raise
        except Exception as error:  # the answer arrived but the adapter could not read it
            return Verdict(label=None, error=redact_text(f"{type(error).__name__}: {error}")[:500])
        raw = prediction.get(field) if hasattr(prediction, "get") else getattr(prediction, field, None)
        try:
            label = self.task.spec.parse_label(raw)
        except ValueError as error:
            return Verdict(label=None, error=str(error))
        probabilities = answer_probabilities(getattr(prediction, "logprobs", None), field, self.task.spec.labels)
        stated = prediction.get(VERBALIZED_FIELD) if hasattr(prediction, "get") else None
        positive = self.task.spec.positive
        if probabilities is None and positive is not None and isinstance(stated, int | float):
            p = min(1.0, max(0.0, float(stated) / 100))
            negative = next(v for v in self.task.spec.labels if v != positive)
            probabilities = {answer_key(positive): p, answer_key(negative): 1 - p}
        confidence = probabilities.get(answer_key(label)) if probabilities else None
        return Verdict(label=label, confidence=confidence, probabilities=probabilities)

    def _call(self, inputs: dict[str, Any]) -> Any:
        """The program's prediction, retrying transient LM failures with backoff."""
        from dspy.utils.exceptions import is_retryable_lm_error
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        policy = self.retry
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts),
            wait=lambda state: policy.wait(state.attempt_number, state.outcome.exception() if state.outcome else None),
            retry=retry_if_exception(is_retryable_lm_error),
            before_sleep=_report_retry,
            reraise=True,
        )
        prediction = None
        for attempt in retrying:
            with attempt, dspy.context(lm=self.lm, adapter=self.adapter):
                prediction = self.program(**inputs)
        return prediction

    def __call__(self, **inputs: Any) -> Verdict:
        return self.judge_inputs(inputs)

    # -- many rows -------------------------------------------------------------------

    def predict(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        """Verdicts in the order of ``rows``; computed in group order for prefix reuse.
        A row the model gave no answer for stops with :class:`RowFailedError`."""
        order = sorted(range(len(rows)), key=lambda i: (rows[i].group, i))
        verdicts: list[Verdict | None] = [None] * len(rows)
        tracker = progress(len(rows), description or self.name) if progress else None
        threads = 1 if self.in_process else self.num_threads
        # Rows go out in chunks, so that a judge failing on its first rows stops early.
        size = 1 if threads <= 1 else threads * 4
        try:
            for start in range(0, len(order), size):
                part = order[start : start + size]

                def judge(index: int) -> Verdict:
                    verdict = self._judge_row(rows[index])
                    if tracker is not None:
                        tracker.advance()
                    return verdict

                for index, verdict in zip(part, run_concurrently(judge, part, threads), strict=True):
                    verdicts[index] = verdict
                done = order[: min(len(order), start + size)]
                if len(done) >= FAILING_START and start < FAILING_START:
                    first = done[:FAILING_START]
                    if all(verdicts[i] and verdicts[i].error for i in first):
                        raise JudgeFailedError(
                            f"judge '{self.name}' failed on its first {FAILING_START} rows; the last error: "
                            f"{verdicts[first[-1]].error}"
                        )
        finally:
            if tracker is not None:
                tracker.close()
        return [v for v in verdicts if v is not None]

    def _judge_row(self, row: LabeledRow) -> Verdict:
        from dspy.utils.exceptions import ContextWindowExceededError, LMError

        try:
            return self.judge_inputs(row.inputs)
        except ContextWindowExceededError as error:
            reason = f"longer than the judge model's context ({error_line(error, with_type=True)})"
            raise RowFailedError(
                f"judge '{self.name}': row {row.id!r}{_at_line(row)} is {reason}; shorten its inputs or use a "
                "model with a longer context",
                row_id=row.id,
                line=row.line,
                reason=reason,
            ) from error
        except LMError as error:
            if _is_configuration_error(error):
                raise
            reason = f"the LM call failed after {self.retry.attempts} attempts: {error_line(error, with_type=True)}"
            raise RowFailedError(
                f"judge '{self.name}': row {row.id!r}{_at_line(row)}: {reason}; nothing was scored for it. "
                "Check the judge model's server and run again",
                row_id=row.id,
                line=row.line,
                reason=reason,
            ) from error

    def predict_swapped(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        """Pairwise only: verdicts with the two responses swapped (in the swapped pair's terms)."""
        swapped = [row.model_copy(update={"inputs": swap_pair(row.inputs)}) for row in rows]
        return self.predict(swapped, progress=progress, description=description)

    def score(
        self,
        rows: Sequence[LabeledRow],
        verdicts: Sequence[Verdict] | None = None,
        swapped: Sequence[Verdict] | None = None,
    ) -> dict[str, float]:
        """Agreement with the human labels of ``rows``."""
        verdicts = list(verdicts) if verdicts is not None else self.predict(rows)
        return score_verdicts(self.task, rows, verdicts, swapped)


def run_concurrently(function: Callable[[T], R], items: Sequence[T], num_threads: int) -> list[R]:
    """``function`` over ``items`` with DSPy's parallel executor, results in order: DSPy's
    settings and callbacks (call counters, the LM in context) follow each call into its
    thread. The first exception a call raised, by item order, is raised again once the
    others are done; no call is sent twice (the executor's straggler resubmission is off)."""
    if num_threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    from dspy.utils.parallelizer import ParallelExecutor

    def captured(item: T) -> tuple[R | None, BaseException | None]:
        try:
            return function(item), None
        except Exception as error:
            return None, error

    executor = ParallelExecutor(num_threads=num_threads, disable_progress_bar=True, timeout=0)
    outcomes = executor.execute(captured, list(items))
    for _, error in outcomes:
        if error is not None:
            raise error
    return [value for value, _ in outcomes]  # type: ignore[misc]


def _report_retry(state: Any) -> None:
    """Tell the callbacks in DSPy's context that count retries (``on_retry``) about this one."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None:
        return
    for callback in dspy.settings.get("callbacks", None) or []:
        on_retry = getattr(callback, "on_retry", None)
        if on_retry is not None:
            on_retry(error)


def score_verdicts(
    task: Task, rows: Sequence[LabeledRow], verdicts: Sequence[Verdict], swapped: Sequence[Verdict] | None = None
) -> dict[str, float]:
    """Point estimates; :mod:`judgecal.report.agreement` adds intervals and comparisons."""
    space = LabelSpace(labels=task.spec.labels, positive=task.spec.positive, ordinal=task.spec.is_ordinal)
    metrics = label_metrics(space, [row.label for row in rows], [v.label for v in verdicts])
    if swapped is not None:
        metrics["order_consistency"] = order_consistency(
            [None if v.label is None else str(v.label) for v in verdicts],
            [None if v.label is None else str(v.label) for v in swapped],
        )
    return metrics


def swap_pair(inputs: dict[str, Any]) -> dict[str, Any]:
    if "response_a" not in inputs or "response_b" not in inputs:
        raise ValueError("order swapping needs inputs 'response_a' and 'response_b'")
    return {**inputs, "response_a": inputs["response_b"], "response_b": inputs["response_a"]}


def _is_configuration_error(error: Exception) -> bool:
    """LM errors that mean the judge cannot run at all (bad key, billing, unknown model,
    an unsupported setting): they stop the run as they are, for every row alike."""
    import dspy.utils.exceptions as lm_errors

    names = (
        "LMAuthError",
        "LMBillingError",
        "LMConfigurationError",
        "LMUnsupportedFeatureError",
        "LMUnsupportedModelError",
    )
    return isinstance(error, tuple(getattr(lm_errors, name) for name in names))


def _at_line(row: LabeledRow) -> str:
    return f" (line {row.line})" if row.line is not None else ""
