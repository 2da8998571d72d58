"""The optimizer's metric: class-balanced, so answering the majority class earns nothing."""

from __future__ import annotations

import dspy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score

from judgecal.calibrate.optimizers import class_balanced_metric, to_examples
from judgecal.data.rows import LabeledRow
from judgecal.tasks.registry import resolve_task

RELEVANCE = resolve_task("relevance")


def relevance_rows(
    part: str, prompts: list[str], *, groups: int | None = None, positive_every: int = 2
) -> list[LabeledRow]:
    """Rows ``{part}0``, ``{part}1``, ... with these prompts: a group each, or ``groups``
    groups shared in turn; every ``positive_every``-th row relevant."""
    return [
        LabeledRow(
            id=f"{part}{i}",
            group=f"{part}{i if groups is None else i % groups}",
            inputs={"prompt": prompt, "attribute": "a"},
            label=i % positive_every == 0,
        )
        for i, prompt in enumerate(prompts)
    ]


def score(metric, labels: list[bool], answers: list[bool | None]) -> float:
    examples = [dspy.Example(prompt="p", attribute="a", relevant=label) for label in labels]
    predictions = [dspy.Prediction(relevant=answer) for answer in answers]
    return float(np.mean([metric(e, p) for e, p in zip(examples, predictions, strict=True)]))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=80).filter(
        lambda pairs: len({label for label, _ in pairs}) == 2
    )
)
def test_mean_of_the_metric_over_dev_is_balanced_accuracy(pairs: list[tuple[bool, bool]]) -> None:
    labels = [label for label, _ in pairs]
    answers = [answer for _, answer in pairs]
    metric = class_balanced_metric(RELEVANCE, labels)
    assert score(metric, labels, answers) == pytest.approx(balanced_accuracy_score(labels, answers))


def test_always_answering_the_majority_scores_like_a_coin() -> None:
    labels = [True] * 17 + [False] * 83
    metric = class_balanced_metric(RELEVANCE, labels)
    assert score(metric, labels, [False] * 100) == pytest.approx(0.5)
    assert score(metric, labels, labels) == pytest.approx(1.0)


def test_while_bootstrapping_the_metric_only_says_right_or_wrong() -> None:
    metric = class_balanced_metric(RELEVANCE, [True, False, False, False])
    example = dspy.Example(prompt="p", attribute="a", relevant=True)
    assert metric(example, dspy.Prediction(relevant=True), trace=[]) == 1.0
    assert metric(example, dspy.Prediction(relevant="maybe"), trace=[]) == 0.0


def test_examples_keep_row_ids_and_come_in_group_order() -> None:
    rows = [
        LabeledRow(id="b1", group="b", inputs={"prompt": "p", "attribute": "x"}, label=True),
        LabeledRow(id="a1", group="a", inputs={"prompt": "p", "attribute": "y"}, label=False),
    ]
    examples = to_examples(RELEVANCE, rows)
    assert [e.row_id for e in examples] == ["a1", "b1"]
    assert set(examples[0].inputs().keys()) == {"prompt", "attribute"}


def test_every_optimizer_name_has_a_way_to_compile() -> None:
    from judgecal.calibrate.optimizers import COMPILERS, OPTIMIZERS, CalibrationConfig, _compile

    assert set(COMPILERS) == set(OPTIMIZERS)
    student = object()
    assert _compile(student, [], [], lambda *a: 0.0, CalibrationConfig(optimizer="none"), None) is student
    unknown = CalibrationConfig.model_construct(optimizer="annealing")
    with pytest.raises(ValueError, match="unknown optimizer 'annealing'; choose one of none, labeled_few_shot"):
        _compile(student, [], [], lambda *a: 0.0, unknown, None)


# -- LM failures while compiling: counted, never scored ----------------------------------


def test_a_prompt_too_long_for_the_model_while_compiling_does_not_stop_the_calibration(chat_server) -> None:
    """A call whose prompt does not fit the model's context fails the same way every time:
    no answer was lost to the server, the candidate (or proposal) that made it just cannot
    be used on that row. MIPROv2's instruction proposals on a small model's 4,096 tokens
    hit this; the calibration goes on, and a server failure still stops it (above)."""
    from judgecal.calibrate.optimizers import CalibrationConfig, calibrate_program

    chat_server.respond = lambda text, attempt: "too-long" if "very long" in text else "ok"
    lm = dspy.LM("openai/judge", api_base=chat_server.url, num_retries=0, cache=False)
    train = relevance_rows("t", ["one", "a very long prompt", "three", "four"])
    dev = relevance_rows("d", ["five", "six", "seven", "eight"])
    config = CalibrationConfig(optimizer="bootstrap_few_shot", max_bootstrapped_demos=2, max_labeled_demos=0)
    result = calibrate_program(RELEVANCE, lm, train, dev, config)
    assert any("very long" in text for text in chat_server.requests)
    assert result.program is not None and result.lm_calls >= 2


@pytest.mark.parametrize("optimizer", ["bootstrap_few_shot", "bootstrap_random_search"])
def test_an_lm_call_that_keeps_failing_while_compiling_stops_the_calibration(chat_server, optimizer: str) -> None:
    """DSPy's optimizers score a failed call as a wrong answer (``failure_score=0``) or skip
    it; the calibration counts those calls and refuses to return a program chosen on them."""
    from judgecal.calibrate.optimizers import CalibrationConfig, calibrate_program
    from judgecal.judges.program import JudgeFailedError

    chat_server.respond = lambda text, attempt: 503 if "down" in text else "ok"
    lm = dspy.LM("openai/judge", api_base=chat_server.url, num_retries=0, cache=False)

    train = relevance_rows("t", ["one", "two", "three", "four"])
    dev = relevance_rows("d", ["server down", "five", "six", "seven"])
    config = CalibrationConfig(optimizer=optimizer, max_bootstrapped_demos=1, max_labeled_demos=1)
    config = config.model_copy(update={"num_candidate_programs": 1})
    if optimizer == "bootstrap_few_shot":
        train, dev = dev, train  # BootstrapFewShot only runs the program on train
    with pytest.raises(JudgeFailedError, match=rf"LM calls failed during {optimizer}") as failed:
        calibrate_program(RELEVANCE, lm, train, dev, config)
    message = str(failed.value)
    assert "were not scored" in message and "LMServerError" in message and "run again" in message
    assert any("down" in text for text in chat_server.requests)


def test_copro_prints_nothing_of_its_own(chat_server, capsys: pytest.CaptureFixture[str]) -> None:
    """COPRO builds a debug message from ``prompt_model.inspect_history``, which prints the
    whole last prompt to stdout whatever the log level: the proposer's history stays quiet."""
    from judgecal.calibrate.optimizers import CalibrationConfig, calibrate_program

    chat_server.answer = {
        "relevant": True,
        "proposed_instruction": "Say whether the attribute matters.",
        "proposed_prefix_for_output_field": "Relevant:",
    }
    lm = dspy.LM("openai/judge", api_base=chat_server.url, num_retries=0, cache=False)
    rows = relevance_rows("r", ["one", "two", "three", "four"])
    config = CalibrationConfig(optimizer="copro", breadth=2, depth=1)
    calibrate_program(RELEVANCE, lm, rows[:2], rows[2:], config)
    assert any("basic_instruction" in text or "instruction" in text for text in chat_server.requests)
    out = capsys.readouterr().out
    assert "System message" not in out and "User message" not in out, out[:300]


def test_simba_chooses_on_at_most_max_select_rows_of_train(chat_server) -> None:
    """SIMBA scores every candidate program on every row it is given to learn from, at the
    end: on a train set of thousands that is thousands of calls per candidate. It gets a
    sample of train across groups, as large as the optimizers' selection on dev."""
    from judgecal.calibrate.optimizers import CalibrationConfig, calibrate_program

    lm = dspy.LM("openai/judge", api_base=chat_server.url, num_retries=0, cache=False)
    train = relevance_rows("t", [f"train {i}" for i in range(48)], groups=8, positive_every=3)
    dev = relevance_rows("d", [f"dev {i}" for i in range(4)])
    config = CalibrationConfig(optimizer="simba", max_steps=1, batch_size=4, max_labeled_demos=1, max_select_rows=12)
    calibrate_program(RELEVANCE, lm, train, dev, config)
    asked = {
        f"train {i}"
        for i in range(48)
        if any(f"train {i}\n" in t or t.endswith(f"train {i}") for t in chat_server.requests)
    }
    assert 4 <= len(asked) <= 12, sorted(asked)


def test_gepa_has_budget_left_after_scoring_its_starting_program(chat_server) -> None:
    """GEPA first scores the starting program on its whole validation set, against the
    metric-call budget: with 100 dev rows and the default budget of 60 it stopped there
    and returned the program it was given. It gets a validation sample that leaves two
    thirds of the budget to reflect and try new instructions."""
    from judgecal.calibrate.optimizers import CalibrationConfig, calibrate_program

    lm = dspy.LM("openai/judge", api_base=chat_server.url, num_retries=0, cache=False)
    chat_server.answer = {"relevant": False}  # wrong on every positive row: there is feedback to reflect on
    train = relevance_rows("t", [f"train {i}" for i in range(20)], groups=5)
    dev = relevance_rows("d", [f"dev {i}" for i in range(100)], groups=10)
    calibrate_program(RELEVANCE, lm, train, dev, CalibrationConfig(optimizer="gepa"))
    assert any("[[ ## current_instruction ## ]]" in text for text in chat_server.requests)  # it reflected


@pytest.mark.parametrize("optimizer", ["bootstrap_few_shot", "bootstrap_random_search"])
def test_the_bootstrapping_optimizers_print_nothing_of_their_own(
    chat_server, optimizer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """DSPy's bootstrapping optimizers print() their progress ("Bootstrapped 2 full traces
    ...", "Scores so far: ...") rather than log it, so it landed between judgecal's lines
    whatever the log level; what judgecal itself prints while they run still shows."""
    from judgecal.calibrate.optimizers import CalibrationConfig, calibrate_program

    chat_server.respond = lambda text, attempt: "ok"
    lm = dspy.LM("openai/judge", api_base=chat_server.url, num_retries=0, cache=False)
    rows = relevance_rows("r", ["one", "two", "three", "four", "five", "six"])
    config = CalibrationConfig(optimizer=optimizer, max_bootstrapped_demos=1, max_labeled_demos=1)
    config = config.model_copy(update={"num_candidate_programs": 1})
    calibrate_program(RELEVANCE, lm, rows[:3], rows[3:], config)
    print("judgecal's own line")
    out = capsys.readouterr().out
    assert "Bootstrapped" not in out and "Scores so far" not in out and "Going to sample" not in out, out[:300]
    assert "judgecal's own line" in out
