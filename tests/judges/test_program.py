"""Reading verdict probabilities from token logprobs, and judging rows."""

from __future__ import annotations

import math

import dspy
import pytest

from judgecal.data.rows import LabeledRow
from judgecal.judges.program import Judge, answer_probabilities, swap_pair
from judgecal.judges.verdict import Verdict
from judgecal.tasks.registry import resolve_task


def token(text: str, logprob: float, *alternatives: tuple[str, float]) -> dict:
    return {"token": text, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives]}


def test_boolean_probabilities_come_from_the_value_token_alternatives() -> None:
    content = [
        token("{", -0.1),
        token('"', -0.1),
        token("relevant", -0.1),
        token('":', -0.1),
        token(" true", math.log(0.6), (" false", math.log(0.2)), (" True", math.log(0.15))),
        token("}", -0.1),
    ]
    probabilities = answer_probabilities({"content": content}, "relevant", [True, False])
    assert probabilities == pytest.approx({"true": 0.75, "false": 0.25})


def test_enum_probabilities_skip_the_opening_quote_token() -> None:
    content = [
        token('{"', -0.1),
        token("verdict", -0.1),
        token('":', -0.1),
        token(' "', -0.1, ("\n", -3.0)),
        token("B", math.log(0.5), ("A", math.log(0.3)), ("t", math.log(0.2))),
        token('"}', -0.1),
    ]
    probabilities = answer_probabilities({"content": content}, "verdict", ["A", "B", "tie"])
    assert probabilities == pytest.approx({"A": 0.3, "B": 0.5, "tie": 0.2})


def test_value_merged_into_the_separator_token_is_found() -> None:
    content = [token('{"accepted', -0.1), token('":false', math.log(0.9), ('":true', math.log(0.1)))]
    probabilities = answer_probabilities({"content": content}, "accepted", [True, False])
    assert probabilities == pytest.approx({"true": 0.1, "false": 0.9})


def test_no_logprobs_or_no_field_gives_none() -> None:
    assert answer_probabilities(None, "relevant", [True, False]) is None
    assert answer_probabilities({"content": [token("{}", -0.1)]}, "relevant", [True, False]) is None


def test_swap_pair_exchanges_the_responses_only() -> None:
    inputs = {"prompt": "p", "user_attributes": [], "response_a": "one", "response_b": "two"}
    assert swap_pair(inputs) == {"prompt": "p", "user_attributes": [], "response_a": "two", "response_b": "one"}


# --- the embedded model ------------------------------------------------------------------


@pytest.mark.slow
def test_verdicts_come_back_in_row_order_whatever_the_judging_order(embedded_lm) -> None:
    task = resolve_task("relevance")
    judge = Judge(task, lm=embedded_lm)
    rows = [
        LabeledRow(
            id="z", group="g2", inputs={"prompt": "Write a haiku.", "attribute": "The user is a poet."}, label=True
        ),
        LabeledRow(
            id="a", group="g1", inputs={"prompt": "Fix my SQL.", "attribute": "The user is a poet."}, label=False
        ),
    ]
    together = judge.predict(rows)
    alone = [judge.predict([row])[0] for row in rows]
    assert together == alone


def test_unreachable_judge_server_stops_instead_of_scoring_wrong_answers() -> None:
    import dspy
    from dspy.utils.exceptions import LMError

    lm = dspy.LM("openai/some-judge", api_base="http://127.0.0.1:9/v1", api_key="unused", num_retries=0, cache=False)
    judge = Judge(resolve_task("relevance"), lm=lm)
    with pytest.raises(LMError):
        judge(prompt="p", attribute="a")


def test_a_judge_failing_on_its_first_rows_is_reported_as_misconfigured() -> None:
    from judgecal.judges.program import FAILING_START, JudgeFailedError

    class Broken(Judge):
        def judge_inputs(self, inputs: dict) -> Verdict:
            return Verdict(label=None, error="ValueError: no JSON in the answer")

    rows = [LabeledRow(id=f"r{i}", group="g", inputs={"prompt": "p", "attribute": "a"}, label=False) for i in range(5)]
    with pytest.raises(JudgeFailedError, match=f"failed on its first {FAILING_START} rows.*no JSON"):
        Broken(resolve_task("relevance")).predict(rows)


# -- LM failures: retried, never scored as a verdict ------------------------------------


def _remote_judge(server, **retry: float) -> Judge:
    import dspy

    from judgecal.judges.program import RetryPolicy

    lm = dspy.LM("openai/judge", api_base=server.url, num_retries=0, cache=False)
    return Judge(resolve_task("relevance"), lm=lm, retry=RetryPolicy(first_wait=0.0, **retry))


def _rows(*texts: str) -> list[LabeledRow]:
    return [
        LabeledRow(id=f"r{i}", group="g", inputs={"prompt": text, "attribute": "a"}, label=True, line=i)
        for i, text in enumerate(texts, start=1)
    ]


def test_a_transient_server_error_is_retried_and_the_answer_scored(chat_server) -> None:
    chat_server.respond = lambda text, attempt: {1: 503, 2: 429}.get(attempt, "ok")
    [verdict] = _remote_judge(chat_server, attempts=3).predict(_rows("busy server"))
    assert verdict.label is True and verdict.error is None
    assert len(chat_server.requests) == 3


def test_a_row_whose_call_keeps_failing_is_not_scored_and_is_named(chat_server) -> None:
    from judgecal.judges.program import RowFailedError

    chat_server.respond = lambda text, attempt: 503 if "down" in text else "ok"
    with pytest.raises(RowFailedError, match=r"row 'r2' \(line 2\).*after 2 attempts.*LMServerError") as failed:
        _remote_judge(chat_server, attempts=2).predict(_rows("fine", "server down", "fine"))
    assert failed.value.row_id == "r2" and failed.value.line == 2
    assert sum("down" in text for text in chat_server.requests) == 2


def test_only_an_answer_that_cannot_be_parsed_is_an_invalid_verdict(chat_server) -> None:
    chat_server.respond = lambda text, attempt: "garbage" if "odd" in text else "ok"
    verdicts = _remote_judge(chat_server).predict(_rows("fine", "odd one"))
    assert verdicts[0].label is True
    assert verdicts[1].label is None and "AdapterParseError" in (verdicts[1].error or "")
    assert sum("odd" in text for text in chat_server.requests) == 1  # an answer arrived: not retried


def test_a_row_longer_than_the_context_is_named_not_retried(chat_server) -> None:
    from judgecal.judges.program import RowFailedError

    chat_server.respond = lambda text, attempt: "too-long" if "long" in text else "ok"
    with pytest.raises(RowFailedError, match=r"row 'r1' \(line 1\) is longer than the judge model's context"):
        _remote_judge(chat_server, attempts=3).predict(_rows("a long one"))
    assert len(chat_server.requests) == 1


def test_a_remote_judge_sends_num_threads_rows_at_once_and_dspy_callbacks_see_every_call(chat_server) -> None:
    """Calibration's judging: DSPy's parallel executor carries the call counter into the
    threads, and verdicts come back in row order."""
    from judgecal.backends.calls import LMCallCounter, RetryCounter
    from judgecal.backends.models import build_lm
    from judgecal.backends.settings import LMConfig
    from judgecal.data.rows import LabeledRow
    from judgecal.judges.program import RetryPolicy

    chat_server.hold_until = 4
    chat_server.respond = lambda text, attempt: 429 if attempt == 1 and "row 5" in text else "ok"
    task = resolve_task("relevance")
    lm = build_lm(LMConfig(model="openai/judge", api_base=chat_server.url, cache=False, num_retries=0))
    judge = Judge(task, lm=lm, num_threads=4, retry=RetryPolicy(first_wait=0.1))
    rows = [
        LabeledRow(id=f"r{i}", group=f"g{i % 3}", inputs={"prompt": f"row {i}", "attribute": "a"}, label=None)
        for i in range(8)
    ]
    calls, retries = LMCallCounter(), RetryCounter()
    with dspy.context(callbacks=[calls, retries]):
        verdicts = judge.predict(rows)
    assert [v.label for v in verdicts] == [True] * 8
    assert chat_server.most_at_once == 4
    assert calls.calls == 9  # eight rows, one of them asked twice
    assert retries.retries == {"HTTP 429": 1}
