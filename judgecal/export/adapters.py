"""A calibrated judge in other people's pipelines: called on inputs, over many rows with a
progress bar, as a DSPy metric, as an MLflow GenAI scorer, and over a whole file
(resumable, failed rows kept apart and judged again on the next run, rows the judge
abstained on queued for people).

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

from judgecal.data.judged import QUEUE_KEY
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
        1.0 when the verdict equals the example's own label field. Where the judge abstains
        it returns its P(positive) (binary; 0.5 when it gives none), else its probability of
        the example's label: a score between 0 and 1 that an optimizer can average, as
        DSPy metrics are, where 0 would punish the abstention as a "no"."""
        spec = self.fitted.task.spec

        def metric(example: Any, prediction: Any, trace: Any = None) -> float:
            inputs = {}
            for name in spec.input_names:
                value = _field(prediction, name)
                inputs[name] = value if value is not None else _field(example, name)
            verdict = self(**{k: v for k, v in inputs.items() if v is not None})
            if spec.positive is not None:
                if verdict.abstained and not verdict.probabilities:
                    return 0.5
                if verdict.abstained or (probability and verdict.probabilities):
                    return float(verdict.probability_of(spec.positive) or 0.0)
                return float(verdict.label == spec.positive)
            expected = _field(example, spec.decision_field)
            if verdict.abstained:
                return float(verdict.probability_of(expected) or 0.0) if expected is not None else 0.0
            return float(verdict.label is not None and verdict.label == expected)

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
    the confidence, the probabilities and whether it abstained as metadata. An abstention
    is an answer without a value: ``value=None`` (which MLflow leaves out of the scorer's
    aggregates), no error, ``rationale="abstained"``, ``metadata["abstained"] = True``; a
    row the judge could not answer is ``value=None`` with the error."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    from judgecal.judges.program import RowFailedError

    names, positive = judge.task.spec.input_names, judge.task.spec.positive

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
        metadata: dict[str, Any] = {
            "confidence": verdict.confidence,
            "judge": judge.name,
            "abstained": verdict.abstained,
            # MLflow keeps metadata values as text: JSON reads back, a dict's repr does not.
            "probabilities": json.dumps(verdict.probabilities),
        }
        if positive is not None:
            metadata["probability"] = verdict.probability_of(positive)
        if verdict.abstained:
            return Feedback(value=None, rationale=verdict.rationale or "abstained", metadata=metadata)
        if verdict.label is None:
            return Feedback(value=None, error=verdict.error or "no verdict")
        return Feedback(value=verdict.label, rationale=verdict.rationale, metadata=metadata)

    return scorer(judge_row, name=name or judge.name.replace("/", "_"))


class JudgeFileResult(BaseModel):
    """What one run of :func:`judge_file` did."""

    judged: int = Field(description="Rows judged and written in this run.")
    already_done: int = Field(description="Rows found in the output from earlier runs.")
    failed: int = Field(default=0, description="Rows without a verdict this run, listed in the errors file.")
    errors_file: Path | None = Field(default=None, description="Where the failed rows are listed, if any failed.")
    abstained: int = Field(
        default=0, description="Rows judged in this run that the judge abstained on, written and queued."
    )
    queue_file: Path | None = Field(
        default=None, description="The queue of rows the judge abstained on, if it abstained in this run."
    )
    retried: dict[str, int] = Field(
        default_factory=dict, description="Calls retried after a transient failure, by reason ('HTTP 429', ...)."
    )


NO_MODEL_CHUNK = 2048
"""Rows a judge that calls no model judges (and ``judge_file`` syncs) at once."""


def errors_file_of(output: Path) -> Path:
    """``verdicts.jsonl`` → ``verdicts.errors.jsonl``: the rows the last run could not judge."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.errors.jsonl")


def queue_file_of(output: Path) -> Path:
    """``verdicts.jsonl`` → ``verdicts.queue.jsonl``: the rows the judge abstained on, for
    people to label (:func:`queue_line`)."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.queue.jsonl")


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

    Only answers are written there: verdicts, and abstentions (``"verdict": null,
    "abstained": true``, with the judge's probabilities), each also appended to
    :func:`queue_file_of` as the row for people to label (:func:`queue_line`), its queue
    line written before its verdicts line; on resume a queue line whose row has no verdicts
    line yet is cut, and the row judged again. A row the judge gave no answer for (its call
    kept failing, its answer could not be read, it is longer than the model's context) goes
    to :func:`errors_file_of` instead, with its id, input line and the error, so the next
    run judges it again. The errors file lists the failures of the latest run only."""
    import dspy

    from judgecal.backends.calls import RetryCounter
    from judgecal.data.rows import load_rows

    rows = load_rows(source, judge.task.spec, labelled=False).rows
    done = _completed_ids(output)
    queue_path = queue_file_of(output)
    _cut_unanswered_queue_lines(queue_path, done)
    todo = [row for row in rows if row.id not in done]
    errors_path = errors_file_of(output)
    errors_path.unlink(missing_ok=True)
    tracker = progress(len(todo), f"{judge.name}: judging") if progress and todo else None
    threads = 1 if judge.in_process else num_threads
    chunk = _sync_every(judge, chunk, threads)
    retries = RetryCounter()
    try:
        with (
            _append_only(output, errors_path, queue_path) as files,
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
        abstained=files.abstained,
        queue_file=queue_path if files.abstained else None,
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
    """The append-only files of a judging run and what went into them: answers into the
    output, rows without one into the errors file (opened when the first row fails), rows
    the judge abstained on into the queue (opened at the first abstention). Each line is
    one ``write``, so a crash can cut only the last line short."""

    output: int
    errors_path: Path
    queue_path: Path
    errors: int | None = None
    queue: int | None = None
    judged: int = 0
    failed: int = 0
    abstained: int = 0

    def write_verdict(self, line: dict[str, Any]) -> None:
        os.write(self.output, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        self.judged += 1

    def write_queued(self, line: dict[str, Any]) -> None:
        """A row the judge abstained on, before its verdicts line (see :func:`judge_file`)."""
        if self.queue is None:
            self.queue = os.open(self.queue_path, APPEND, 0o644)
        os.write(self.queue, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        self.abstained += 1

    def write_failure(self, row: LabeledRow, why: str | None) -> None:
        if self.errors is None:
            self.errors = os.open(self.errors_path, APPEND, 0o644)
        line = json.dumps({"id": row.id, "line": row.line, "error": why}, ensure_ascii=False)
        os.write(self.errors, (line + "\n").encode("utf-8"))
        self.failed += 1

    def sync(self) -> None:
        """The queue first: a queue line may outlive its verdicts line, never the reverse."""
        if self.queue is not None:
            os.fsync(self.queue)
        os.fsync(self.output)
        if self.errors is not None:
            os.fsync(self.errors)

    def close(self) -> None:
        os.close(self.output)
        for handle in (self.errors, self.queue):
            if handle is not None:
                os.close(handle)


@contextmanager
def _append_only(output: Path, errors_path: Path, queue_path: Path) -> Iterator[_VerdictFiles]:
    output.parent.mkdir(parents=True, exist_ok=True)
    files = _VerdictFiles(output=os.open(output, APPEND, 0o644), errors_path=errors_path, queue_path=queue_path)
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
        if verdict is not None and verdict.label is None and not verdict.abstained:
            why = f"no valid verdict: {verdict.error or 'the answer could not be read'}"
        if why is None and verdict is not None:
            if verdict.abstained:
                files.write_queued(queue_line(judge, row, verdict))
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
        "abstained": verdict.abstained,
        "probability": verdict.probability_of(positive) if positive is not None else None,
        "confidence": verdict.confidence,
        "probabilities": verdict.probabilities,
        "judge": judge.name,
    }


def queue_line(judge: FittedJudge, row: LabeledRow, verdict: Verdict) -> dict[str, Any]:
    """A row the judge abstained on, for people: the row in the flat form it was read in
    (id, group, its inputs, ``label`` (null for a row without one), its other columns),
    which :func:`~judgecal.data.rows.load_rows` reads back, and under ``"abstention"`` the
    judge's name, the row's line in the judged file and the judge's probabilities."""
    positive = judge.task.spec.positive
    return {
        **row.to_record(),
        QUEUE_KEY: {
            "judge": judge.name,
            "line": row.line,
            "probability": verdict.probability_of(positive) if positive is not None else None,
            "probabilities": verdict.probabilities,
        },
    }


def _completed_ids(output: Path) -> set[str]:
    """Ids already judged in ``output``; a trailing partial line (a crash mid-write) is cut."""
    return {row_id for row_id, _ in _ids_by_line(output, "verdict")}


def _cut_unanswered_queue_lines(queue: Path, done: set[str]) -> None:
    """Cut the queue's last lines whose rows have no verdicts line (a crash between the two
    writes, or a verdicts line cut short): those rows are judged, and queued, again."""
    lines = _ids_by_line(queue, "queue")
    keep = len(lines)
    while keep and lines[keep - 1][0] not in done:
        keep -= 1
    if keep < len(lines):
        with queue.open("r+b") as handle:
            handle.truncate(lines[keep - 1][1] if keep else 0)


def _ids_by_line(path: Path, kind: str) -> list[tuple[str, int]]:
    """Each line's id and the offset where the line ends, of an append-only JSONL file; a
    trailing partial line (a crash mid-write) is cut first."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    out = []
    end = 0
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        end += len(line) + 1
        if not line.strip():
            continue
        try:
            out.append((str(json.loads(line)["id"]), end))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{number}: not a {kind} line; refusing to append to it") from None
    return out
