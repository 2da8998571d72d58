"""What a search costs: every LM call counted with its tokens and price, per trial in the
leaderboard and the trials' runs, for the whole search in the parent run; counted against
a scripted OpenAI-compatible server, so that the calls the model answered are the requests
it received."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from judgecal.backends.settings import LMConfig
from judgecal.data.split import SplitSpec
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, SearchConfig
from judgecal.pipeline.search import run_search
from judgecal.workspace import Workspace
from tests.conftest import ChatServer, write_jsonl
from tests.helpers import recorded_rows

PROMPT, COMPLETION = 100, 5  # the tokens the server reports for every answer
GPT_4O_MINI = (0.15e-6, 0.6e-6)  # LiteLLM's price per prompt and completion token


def live_search_config(folder: Path, server_url: str, strategies: list[str], trials: int, **search) -> ExperimentConfig:
    data = write_jsonl(folder / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=8).rows])
    return ExperimentConfig(
        judge=JudgeSection(name="costed", task="relevance", data=data),
        # the server gives no token probabilities: a cut on P(positive) asks for stated scores
        lm=LMConfig(model="openai/gpt-4o-mini", api_base=server_url, num_retries=0, logprobs=False),
        split=SplitSpec(dev=0.25, test=0.25, gate=0.15, seed=1),
        search=SearchConfig(
            strategies=strategies, trials=trials, storage=f"sqlite:///{folder / 'optuna.db'}", **search
        ),
    )


@pytest.fixture(scope="module")
def costed_run(tmp_path_factory, loaded_models):
    """One tracked search of two strategies against the scripted server, for the module."""
    root = tmp_path_factory.mktemp("costed")
    (root / "mlruns").mkdir()
    server = ChatServer()
    server.usage = (PROMPT, COMPLETION)
    server.answer = {"relevant": True, "probability_percent": 70}  # no logprobs: it says how sure
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUDGECAL_HOME", str(root))
        patch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
        config = live_search_config(root, server.url, ["threshold", "labeled_few_shot"], 2)
        workspace = Workspace(root, models=loaded_models)
        report = run_search(config, config.search, workspace=workspace, log=lambda m: None)
        yield report, server, workspace
    server.close()


@pytest.fixture
def costed_search(costed_run):
    """The module's search, with MLflow pointed at its store (each test's teardown forgets it)."""
    import mlflow

    report, server, workspace = costed_run
    mlflow.set_tracking_uri(workspace.tracking_uri)
    return report, server


def test_the_search_counts_every_call_its_model_answered_with_tokens_and_cost(costed_search) -> None:
    report, server = costed_search
    usage = report.usage
    answered = len(server.requests)
    assert answered > 0
    assert usage.calls - usage.cached == answered
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT * answered, COMPLETION * answered)
    assert usage.cost_usd == pytest.approx(PROMPT * answered * GPT_4O_MINI[0] + COMPLETION * answered * GPT_4O_MINI[1])
    for row in report.rows:
        assert row.state == "COMPLETE", row
        assert row.prompt_tokens == PROMPT * (row.lm_calls - row.cached_calls)
        priced = row.prompt_tokens * GPT_4O_MINI[0] + row.completion_tokens * GPT_4O_MINI[1]
        assert row.cost_usd == pytest.approx(priced)
    few_shot = next(row for row in report.rows if row.strategy == "labeled_few_shot")
    assert few_shot.prompt_tokens > 0  # its compiled prompt is a new request on every dev row


def test_the_runs_and_the_leaderboard_show_the_cost(costed_search) -> None:
    import mlflow

    report, _ = costed_search
    client = mlflow.MlflowClient()
    parent = client.get_run(report.parent_run_id)
    assert parent.data.metrics["lm.prompt_tokens"] == report.usage.prompt_tokens
    assert parent.data.metrics["lm.cost_usd"] == pytest.approx(report.usage.cost_usd)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{report.parent_run_id}'"
    )
    by_trial = {int(run.data.tags["judgecal.trial"]): run for run in children}
    for row in report.rows:
        assert by_trial[row.number].data.metrics["lm.completion_tokens"] == row.completion_tokens
    folder = Path(client.download_artifacts(report.parent_run_id, ""))
    board = (folder / "leaderboard.md").read_text()
    assert "| LM calls (cached) | tokens | cost $ |" in board
    assert f"{report.usage.prompt_tokens:,} prompt" in board
    table = json.loads((folder / "leaderboard.json").read_text())
    assert {row["number"]: row["cost_usd"] for row in table} == {row.number: row.cost_usd for row in report.rows}
    card = (folder / "card" / "judge_card.md").read_text()
    assert f"${report.usage.cost_usd:.4f}" in card


# --- before the run: the dry run's bound ----------------------------------------------------------


def test_a_dry_runs_bound_is_what_a_search_of_one_dspy_strategy_then_asks(tmp_path, workspace, chat_server) -> None:
    """The demo-sized case: no trial to prune, so the bound is what the run asks (cached
    answers included, as rows with the same inputs share one): the raw judge on dev and
    test, the trial's dev rows, and the winner's test and gate rows."""
    from judgecal.pipeline.dry_run import plan

    chat_server.answer = {"relevant": True, "probability_percent": 70}
    config = live_search_config(tmp_path, chat_server.url, ["labeled_few_shot"], 1)
    planned = plan(config, config.search, workspace, log=lambda m: None)
    probed = len(chat_server.requests)
    assert planned.probe is not None and probed == planned.probe.calls  # the probe's calls, and nothing else
    report = run_search(config, config.search, workspace=workspace, track=False, log=lambda m: None)
    made = report.usage.calls
    assert made - report.usage.cached == len(chat_server.requests) - probed
    assert abs(planned.bound.total - made) <= 0.1 * made, (planned.bound, made)
    assert planned.bound.total >= made


def test_a_dry_runs_bound_holds_for_a_search_of_several_strategies(tmp_path, workspace, chat_server) -> None:
    from judgecal.pipeline.dry_run import plan

    chat_server.answer = {"relevant": True, "probability_percent": 70}
    config = live_search_config(tmp_path, chat_server.url, ["threshold", "verifier", "bootstrap_few_shot"], 3)
    planned = plan(config, config.search, workspace, probe_calls=0, log=lambda m: None)
    assert not chat_server.requests and planned.probe is None
    report = run_search(config, config.search, workspace=workspace, track=False, log=lambda m: None)
    assert report.usage.calls <= planned.bound.total
    assert {t.strategy for t in planned.bound.trials} == {"threshold", "verifier", "bootstrap_few_shot"}


# --- a budget the search keeps ------------------------------------------------------------------


def test_a_search_given_max_lm_calls_never_exceeds_it_and_says_what_it_left_out(
    tmp_path, workspace, chat_server
) -> None:
    chat_server.answer = {"relevant": True, "probability_percent": 70}
    strategies = ["threshold", "verifier", "labeled_few_shot"]
    config = live_search_config(tmp_path, chat_server.url, strategies, 3, max_lm_calls=400)
    messages: list[str] = []
    report = run_search(config, config.search, workspace=workspace, track=False, log=messages.append)
    assert report.usage.calls <= 400  # the real counter's count: trials, the raw judge, test and gate
    [skipped] = [row for row in report.rows if row.skipped]
    assert skipped.strategy == "labeled_few_shot" and "left of --max-lm-calls 400" in skipped.skipped
    assert {row.strategy for row in report.rows if row.state == "COMPLETE"} == {"threshold", "verifier"}
    assert any(m.startswith("left out to keep the budget: trial") and "labeled_few_shot" in m for m in messages)
    from judgecal.pipeline.search import leaderboard_markdown

    assert "| skipped: up to 20 LM calls" in leaderboard_markdown(report)


def test_without_a_budget_the_same_search_runs_every_trial(tmp_path, workspace, chat_server) -> None:
    chat_server.answer = {"relevant": True, "probability_percent": 70}
    config = live_search_config(tmp_path, chat_server.url, ["threshold", "verifier", "labeled_few_shot"], 3)
    report = run_search(config, config.search, workspace=workspace, track=False, log=lambda m: None)
    assert not any(row.skipped for row in report.rows)
    assert report.usage.calls > 400  # what the budget above kept the search below


def test_a_cost_limit_on_a_model_without_a_price_stops_before_any_call(tmp_path, workspace, chat_server) -> None:
    config = live_search_config(tmp_path, chat_server.url, ["threshold"], 1, max_cost_usd=1.0)
    config = config.model_copy(update={"lm": config.lm.model_copy(update={"model": "openai/my-own-model"})})
    with pytest.raises(ValueError, match=r"no price for openai/my-own-model.*price_per_million"):
        run_search(config, config.search, workspace=workspace, track=False, log=lambda m: None)
    assert not chat_server.requests


# --- a quiet terminal -----------------------------------------------------------------------------


def test_dspys_own_info_logs_stay_off_the_terminal_during_a_search(tmp_path, workspace, chat_server, capfd) -> None:
    """MIPROv2 logs its progress at INFO through a handler of DSPy's own on stderr
    ("We will evaluate the program over a series of trials ..."); judgecal draws its own."""
    import logging

    import dspy  # noqa: F401  (its import sets its logger to INFO; an earlier test may have changed that)

    dspy_logger = logging.getLogger("dspy")
    before = dspy_logger.level
    dspy_logger.setLevel(logging.INFO)  # as DSPy leaves it
    try:
        chat_server.answer = {"relevant": True, "probability_percent": 70}
        config = live_search_config(tmp_path, chat_server.url, ["mipro"], 1)
        run_search(config, config.search, workspace=workspace, track=False, log=lambda m: None)
        assert dspy_logger.level == logging.INFO  # as it was, once the search is over
    finally:
        dspy_logger.setLevel(before)
    err = capfd.readouterr().err
    assert "We will evaluate the program" not in err
    assert " INFO dspy." not in err


def test_while_trials_run_a_status_line_shows_rows_calls_tokens_and_cost_against_the_budget(
    tmp_path, workspace, chat_server
) -> None:
    from contextlib import contextmanager

    chat_server.usage = (PROMPT, COMPLETION)
    chat_server.answer = {"relevant": True, "probability_percent": 70}
    config = live_search_config(tmp_path, chat_server.url, ["threshold"], 1, max_lm_calls=1000)
    shown: list[str] = []

    @contextmanager
    def status(text):
        shown.append(text())
        yield
        shown.append(text())

    report = run_search(config, config.search, workspace=workspace, track=False, log=lambda m: None, status=status)
    before, after = shown
    assert before.startswith("starting | raw judge: 0 of 80 rows | LM calls 0 of 1,000 (0 cached) | 0 tokens | $0.0000")
    pattern = (
        r"raw judge on dev \| raw judge: 50 of 80 rows \| LM calls ([\d,]+) of 1,000 \(\d+ cached\) \| "
        r"[\d,]+ tokens \| \$0\.\d{4}"
    )
    match = re.fullmatch(pattern, after)  # train + dev answered; the trial and the winner's refit counted
    assert match is not None, after
    assert int(match.group(1).replace(",", "")) >= report.rows[0].lm_calls > 0


def test_the_dry_run_command_prints_its_table_and_tracks_nothing(tmp_path, workspace, capsys) -> None:
    from judgecal.cli import main
    from tests.calibrate.test_search import write_study_config

    config = write_study_config(tmp_path)
    code = main(["calibrate", str(config), "--strategies", "threshold,verifier", "--trials", "2", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "LM calls at most" in out and "threshold" in out and "no model is called" in out
    assert "nothing was judged or tracked" in out
    assert not (tmp_path / "optuna.db").exists()
    assert not (workspace.root / "mlruns" / "optuna.db").exists()


@pytest.mark.parametrize("cost", ["-1", "0", "nan", "inf", "five"])
def test_a_budget_that_is_not_a_positive_amount_is_refused_in_one_line(tmp_path, workspace, capsys, cost) -> None:
    from judgecal.cli import main
    from tests.calibrate.test_search import write_study_config

    config = write_study_config(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main(["calibrate", str(config), "--strategies", "threshold", "--max-cost", cost, "--dry-run"])
    err = capsys.readouterr().err
    assert refused.value.code == 2
    assert "--max-cost" in err and len(err.strip().splitlines()) == 1


def test_a_budget_with_one_strategy_is_refused_rather_than_ignored(tmp_path, workspace, capsys) -> None:
    """--strategy runs one strategy, not a search: a budget there would be silently ignored."""
    from judgecal.cli import main
    from tests.calibrate.test_search import write_study_config

    config = write_study_config(tmp_path)
    code = main(["calibrate", str(config), "--strategy", "threshold", "--max-lm-calls", "10", "--no-track"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--max-lm-calls" in err and "search" in err and len(err.strip().splitlines()) == 1


def test_the_dry_run_says_what_the_budget_sets_aside_and_which_trials_can_never_fit(
    tmp_path, workspace, chat_server
) -> None:
    from judgecal.cli.cost import budget_note
    from judgecal.pipeline.dry_run import plan

    config = live_search_config(tmp_path, chat_server.url, ["threshold", "labeled_few_shot"], 2)
    planned = plan(config, config.search, workspace, probe_calls=0, log=lambda m: None)
    reserved = sum(planned.bound.raw.values()) + planned.bound.winner.winner
    (few_shot,) = [b for b in planned.bound.trials if b.strategy == "labeled_few_shot"]
    search = config.search.model_copy(update={"max_lm_calls": reserved + few_shot.trial - 1, "max_cost_usd": 5.0})
    note = budget_note(planned, search)
    assert f"{reserved:,} set aside for the raw judge and the winner's test and gate" in note
    never = note.partition("these trials can never fit: ")[2].splitlines()[0]
    assert f"labeled_few_shot ({few_shot.trial:,})" in never  # one call more than is left
    assert "budget: $5; the whole run costs at most $" in note
    unpriced = dataclasses.replace(planned, price=None)
    assert "has no price: the search stops before any call" in budget_note(unpriced, search)


def test_the_search_table_marks_a_trial_that_gave_an_earlier_ones_judge(tmp_path, workspace, capsys) -> None:
    """On 0/1 recorded verdicts a cut and the base rate are one judge: the table says so."""
    from judgecal.cli import main
    from tests.calibrate.test_search import write_study_config

    config = write_study_config(tmp_path)
    assert main(["calibrate", str(config), "--strategies", "threshold,base_rate", "--trials", "2", "--no-track"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "same judge as" in out and "1 trials gave the same judge as an earlier one" in out
