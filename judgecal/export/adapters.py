"""A calibrated judge in other people's pipelines: called on inputs, over many rows with a
progress bar, as a DSPy metric, as an MLflow GenAI scorer, and over a whole file
(resumable, failed rows kept apart and judged again on the next run).

:func:`judgecal.load_judge` returns a :class:`CalibratedJudge`: the fitted judge with these
adapters, which the domain classes (:mod:`judgecal.judges`, :mod:`judgecal.calibrate`)
know nothing about.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from judgecal.data.rows import LabeledRow
from judgecal.judges.fitted import FittedJudge
from judgecal.judges.verdict import Verdict
from judgecal.progress import ProgressFactory


class CalibratedJudge:
    """A fitted judge, ready for use: ``judge(**inputs)``, ``judge.batch(rows)``,
    ``judge.as_dspy_metric()``, ``judge.as_mlflow_scorer()``. Everything else (``task``,
    ``name``, ``kind``, ``predict``, ``state``) is the fitted judge's own (``.fitted``)."""

    def __init__(self, judge: FittedJudge | CalibratedJudge, *, digest: str | None = None) -> None:
        self.fitted = judge.fitted if isinstance(judge, CalibratedJudge) else judge
        self.digest = digest

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["fitted"], name)

    def __repr__(self) -> str:
        return f"CalibratedJudge({self.fitted.name!r}, kind={self.fitted.kind!r}, digest={self.digest!r})"

    def __call__(self, **inputs: Any) -> Verdict:
        return self.fitted(**inputs)

    def batch(
        self, items: Sequence[LabeledRow | dict[str, Any]], *, num_threads: int = 1, progress: bool = True
    ) -> list[Verdict]:
        """Verdicts for many rows (or dicts of inputs), in order, with a progress bar. A
        remote model is sent ``num_threads`` rows at once (DSPy's parallel executor); an
        in-process model judges one row at a time."""
        from judgecal.judges.program import run_concurrently
        from judgecal.progress import rich_progress

        judge = self.fitted
        rows = [judge.row_from_inputs(item, i) for i, item in enumerate(items)]
        factory = rich_progress() if progress else None
        threads = 1 if judge.in_process else num_threads
        if threads <= 1 or len(rows) <= 1:
            return judge.predict(rows, progress=factory, description=judge.name)
        tracker = factory(len(rows), judge.name) if factory else None
        # Judges that call no model judge a chunk at once; model calls go one row per task.
        size = 1 if judge.uses_lm else max(1, len(rows) // (threads * 4))
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]

        def work(chunk: list[LabeledRow]) -> list[Verdict]:
            verdicts = judge.predict(chunk)
            if tracker is not None:
                tracker.advance(len(chunk))
            return verdicts

        try:
            return [v for part in run_concurrently(work, chunks, threads) for v in part]
        finally:
            if tracker is not None:
                tracker.close()

    def as_dspy_metric(self, *, probability: bool = False) -> Callable[..., float]:
        """This judge as a DSPy metric: each input field is taken from the prediction when it
        has one, else from the example. Returns 1.0 when the verdict is the positive label
        (binary) or, with ``probability=True``, the judge's P(positive); for other tasks,
        1.0 when the verdict equals the example's own label field."""
        spec = self.fitted.task.spec

        def metric(example: Any, prediction: Any, trace: Any = None) -> float:
            inputs = {}
            for name in spec.input_names:
                value = _field(prediction, name)
                inputs[name] = value if value is not None else _field(example, name)
            verdict = self(**{k: v for k, v in inputs.items() if v is not None})
            if spec.positive is not None:
                if probability and verdict.probabilities:
                    return float(verdict.probability_of(spec.positive) or 0.0)
                return float(verdict.label == spec.positive)
            return float(verdict.label is not None and verdict.label == _field(example, spec.decision_field))

        metric.__name__ = f"judgecal_{self.fitted.name}"
        return metric

    def as_mlflow_scorer(self, name: str | None = None) -> Any:
        """This judge as an MLflow GenAI scorer for ``mlflow.genai.evaluate(scorers=[...])``."""
        return mlflow_scorer(self.fitted, name=name)


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    try:
        return obj.get(name) if hasattr(obj, "get") else getattr(obj, name, None)
    except Exception:
        return None


def mlflow_scorer(judge: FittedJudge, *, name: str | None = None) -> Any:
    """A calibrated judge as an MLflow GenAI scorer. Each judge input is looked up by name
    in the evaluation row's ``outputs`` (when a dict), then ``inputs``, then
    ``expectations``, and so are ``reference_judges`` (which a judge calibrated on recorded
    verdicts reads); an ``outputs`` string fills the single input still missing. The
    feedback value is the verdict (a bool for yes/no judges, so MLflow averages it), with
    the confidence as metadata."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    from judgecal.judges.program import RowFailedError

    names = judge.task.spec.input_names

    def judge_row(inputs: Any = None, outputs: Any = None, expectations: Any = None) -> Feedback:
        fields: dict[str, Any] = {}
        for source in (outputs, inputs, expectations):
            if isinstance(source, dict):
                for key in (*names, "reference_judges"):
                    if key not in fields and key in source:
                        fields[key] = source[key]
        missing = [key for key in names if key not in fields]
        if isinstance(outputs, str) and len(missing) == 1:
            fields[missing[0]] = outputs
        try:
            verdict = judge(**fields)
        except RowFailedError as error:
            return Feedback(value=None, error=error.reason)
        if verdict.label is None:
            return Feedback(value=None, error=verdict.error or "no verdict")
        return Feedback(
            value=verdict.label,
            rationale=verdict.rationale,
            metadata={"confidence": verdict.confidence, "judge": judge.name},
        )

    return scorer(judge_row, name=name or judge.name.replace("/", "_"))


class JudgeFileResult(BaseModel):
    """What one run of :func:`judge_file` did."""

    judged: int = Field(description="Rows judged and written in this run.")
    already_done: int = Field(description="Rows found in the output from earlier runs.")
    failed: int = Field(default=0, description="Rows without a verdict this run, listed in the errors file.")
    errors_file: Path | None = Field(default=None, description="Where the failed rows are listed, if any failed.")
    retried: dict[str, int] = Field(
        default_factory=dict, description="Calls retried after a transient failure, by reason ('HTTP 429', ...)."
    )


NO_MODEL_CHUNK = 2048
"""Rows a judge that calls no model judges (and ``judge_file`` syncs) at once."""


def errors_file_of(output: Path) -> Path:
    """``verdicts.jsonl`` → ``verdicts.errors.jsonl``: the rows the last run could not judge."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.errors.jsonl")


def judge_file(
    judge: FittedJudge,
    source: Path,
    output: Path,
    *,
    num_threads: int = 1,
    chunk: int = 16,
    progress: ProgressFactory | None = None,
) -> JudgeFileResult:
    """Judge every row of ``source`` into ``output`` (JSONL), resuming where an earlier run
    stopped. Each verdict is one ``write`` of one whole line, synced per chunk; a line cut
    short by a crash is dropped on resume. Lines read back as a verdicts file
    (``{"id", "verdict", "probability"}``), so they can be calibrated in turn.

    Only verdicts are written there. A row the judge gave none for (its call kept
    failing, its answer could not be read, it is longer than the model's context) goes to
    :func:`errors_file_of` instead, with its id, input line and the error, so the next run
    judges it again. The errors file lists the failures of the latest run only."""
    import dspy

    from judgecal.backends.calls import RetryCounter
    from judgecal.data.rows import load_rows

    rows = load_rows(source, judge.task.spec, labelled=False).rows
    done = _completed_ids(output)
    todo = [row for row in rows if row.id not in done]
    errors_path = errors_file_of(output)
    errors_path.unlink(missing_ok=True)
    tracker = progress(len(todo), f"{judge.name}: judging") if progress and todo else None
    threads = 1 if judge.in_process else num_threads
    chunk = _sync_every(judge, chunk, threads)
    retries = RetryCounter()
    try:
        with (
            _append_only(output, errors_path) as files,
            dspy.context(callbacks=[*(dspy.settings.get("callbacks", None) or []), retries]),
        ):
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                _judge_chunk(judge, part, files, threads=threads, num_threads=num_threads, tracker=tracker)
    finally:
        if tracker is not None:
            tracker.close()
    return JudgeFileResult(
        judged=files.judged,
        already_done=len(done),
        failed=files.failed,
        errors_file=errors_path if files.failed else None,
        retried=dict(retries.retries),
    )


def _sync_every(judge: FittedJudge, chunk: int, threads: int) -> int:
    """Rows judged between two syncs of the output."""
    if judge.uses_lm and threads > 1:
        return max(chunk, threads * 4)  # every thread busy between two syncs
    if not judge.uses_lm:
        return max(chunk, NO_MODEL_CHUNK)  # a crash costs a second of work; a sync per 16 rows cost a quarter
    return chunk


# Every line goes to the end of its file, whatever another handle wrote before it.
APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


@dataclass
class _VerdictFiles:
    """The two append-only files of a judging run and what went into them: verdicts into
    the output, rows without one into the errors file, opened when the first row fails.
    Each line is one ``write``, so a crash can cut only the last line short."""

    output: int
    errors_path: Path
    errors: int | None = None
    judged: int = 0
    failed: int = 0

    def write_verdict(self, line: dict[str, Any]) -> None:
        os.write(self.output, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        self.judged += 1

    def write_failure(self, row: LabeledRow, why: str | None) -> None:
        if self.errors is None:
            self.errors = os.open(self.errors_path, APPEND, 0o644)
        line = json.dumps({"id": row.id, "line": row.line, "error": why}, ensure_ascii=False)
        os.write(self.errors, (line + "\n").encode("utf-8"))
        self.failed += 1

    def sync(self) -> None:
        os.fsync(self.output)
        if self.errors is not None:
            os.fsync(self.errors)

    def close(self) -> None:
        os.close(self.output)
        if self.errors is not None:
            os.close(self.errors)


@contextmanager
def _append_only(output: Path, errors_path: Path) -> Iterator[_VerdictFiles]:
    output.parent.mkdir(parents=True, exist_ok=True)
    files = _VerdictFiles(output=os.open(output, APPEND, 0o644), errors_path=errors_path)
    try:
        yield files
    finally:
        files.close()


def _judge_chunk(
    judge: FittedJudge,
    part: list[LabeledRow],
    files: _VerdictFiles,
    *,
    threads: int,
    num_threads: int,
    tracker: Any,
) -> None:
    """Judge one chunk and write each row's line, then sync: a crash loses at most this
    chunk. A judge that fails on each of its first rows stops the run."""
    from judgecal.judges.program import FAILING_START, JudgeFailedError

    for row, (verdict, why) in zip(part, _judge_rows(judge, part, threads, num_threads), strict=True):
        if verdict is not None and verdict.label is None:
            why = f"no valid verdict: {verdict.error or 'the answer could not be read'}"
        if why is None and verdict is not None:
            files.write_verdict(_verdict_line(judge, row, verdict))
        else:
            files.write_failure(row, why)
            if files.judged == 0 and files.failed >= FAILING_START:
                raise JudgeFailedError(
                    f"judge '{judge.name}' failed on its first {files.failed} rows (listed in {files.errors_path}); "
                    f"the last error: {why}"
                )
        if tracker is not None:
            tracker.advance()
    files.sync()


def _judge_rows(
    judge: FittedJudge, part: list[LabeledRow], threads: int, num_threads: int
) -> Iterator[tuple[Verdict | None, str | None]]:
    """(verdict, None) or (None, why) per row, in order. An LM judge is called row by
    row (``num_threads`` rows at once for a remote model), so that one failed row costs
    only itself; other judges make no calls and run as a batch."""
    from judgecal.judges.program import RowFailedError, run_concurrently

    if not judge.uses_lm:
        yield from ((v, None) for v in CalibratedJudge(judge).batch(part, num_threads=num_threads, progress=False))
        return

    def one(row: LabeledRow) -> tuple[Verdict | None, str | None]:
        try:
            return judge.predict([row])[0], None
        except RowFailedError as error:
            return None, error.reason

    if threads <= 1:
        yield from (one(row) for row in part)  # one at a time: a failing judge stops after its first rows
    else:
        yield from run_concurrently(one, part, threads)


def _verdict_line(judge: FittedJudge, row: LabeledRow, verdict: Verdict) -> dict[str, Any]:
    """One row's line of the output, readable back as a verdicts file."""
    positive = judge.task.spec.positive
    return {
        "id": row.id,
        "verdict": verdict.label,
        "probability": verdict.probability_of(positive) if positive is not None else None,
        "confidence": verdict.confidence,
        "probabilities": verdict.probabilities,
        "judge": judge.name,
    }


def _completed_ids(output: Path) -> set[str]:
    """Ids already judged in ``output``; a trailing partial line (a crash mid-write) is cut."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with output.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    done = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{output}:{number}: not a verdict line; refusing to append to it") from None
    return done
