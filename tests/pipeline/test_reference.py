"""The configuration page and the starter file are generated from the config models; the
flags `judgecal calibrate` documents set the keys they name; `judgecal init` writes a
file that loads, holds every key, and is its own experiment."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from judgecal.cli import _load, _parser, main
from judgecal.pipeline.config import load_config
from judgecal.pipeline.reference import FLAGS, config_keys, configuration_markdown
from tests.conftest import REPO

# A value for each flag, and what the key reads after it.
FLAG_VALUES = {
    "--name": ("other", "other"),
    "--task": ("pairwise", "pairwise"),
    "--limit": ("40", 40),
    "--recorded": ("gpt-4", "gpt-4"),
    "--register": ("mine", "mine"),
    "--model": ("openai/o4-mini", "openai/o4-mini"),
    "--api-base": ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
    "--temperature": ("0.7", 0.7),
    "--max-tokens": ("16000", 16000),
    "--split-seed": ("3", 3),
    "--max-train-rows": ("50", 50),
    "--max-dev-rows": ("20", 20),
    "--max-test-rows": ("30", 30),
    "--max-gate-rows": ("10", 10),
    "--strategy": ("verifier", "verifier"),
    "--seed": ("5", 5),
    "--precision": ("true=0.7,false=0.95", {"true": 0.7, "false": 0.95}),
    "--num-threads": ("4", 4),
}


def test_the_configuration_page_is_the_one_the_config_models_generate() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == configuration_markdown(), (
        "docs/configuration.md is out of date: run `make docs` (python -m judgecal.pipeline.reference)"
    )


def test_every_key_says_what_it_means() -> None:
    assert [key.dotted for key in config_keys() if not key.description] == []


def test_every_documented_flag_exists_and_sets_its_key(tmp_path: Path) -> None:
    rows, verdicts, gate = (tmp_path / name for name in ("rows.jsonl", "verdicts.jsonl", "gate.jsonl"))
    config = tmp_path / "exp.toml"
    config.write_text('[judge]\nname = "t"\ntask = "relevance"\ndata = "x.jsonl"\n')
    parser = _parser()
    for dotted, flag in FLAGS.items():
        if dotted.startswith("search."):
            assert flag in parser._subparsers._group_actions[0].choices["calibrate"]._option_string_actions
            continue
        if flag in ("--data", "--verdicts", "--gate-data"):
            path = {"--data": rows, "--verdicts": verdicts, "--gate-data": gate}[flag]
            text, expected = str(path), path
        else:
            text, expected = FLAG_VALUES[flag]
        args = parser.parse_args(["calibrate", str(config), flag, text])
        loaded = _load(config, args)
        section, key = dotted.split(".")
        assert getattr(getattr(loaded, section), key) == expected, flag


def test_num_threads_is_a_flag_for_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "exp.toml"
    config.write_text('[judge]\nname = "t"\ntask = "relevance"\ndata = "x.jsonl"\n[calibration]\nnum_threads = 2\n')
    assert load_config(config).calibration.num_threads == 2
    assert (
        _load(config, _parser().parse_args(["calibrate", str(config), "--num-threads", "8"])).calibration.num_threads
        == 8
    )
    with pytest.raises(SystemExit) as stopped:
        main(["calibrate", str(config), "--num-threads", "0", "--no-track"])
    assert stopped.value.code == 2 and "--num-threads" in capsys.readouterr().err


def test_set_reaches_any_other_key_and_a_misspelt_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text('[judge]\nname = "t"\ntask = "relevance"\ndata = "x.jsonl"\n')
    args = _parser().parse_args(
        ["calibrate", str(config), "--set", "report.n_resamples=500", "--set", 'calibration.params={head = "logistic"}']
    )
    loaded = _load(config, args)
    assert loaded.report.n_resamples == 500
    assert loaded.calibration.params == {"head": "logistic"}
    assert main(["calibrate", str(config), "--set", "report.n_resampels=500", "--no-track"]) == 2
    assert "field 'report.n_resampels'" in capsys.readouterr().err


def test_a_selective_section_takes_set_a_flag_and_one_target_per_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exp.toml"
    judge = '[judge]\nname = "t"\ntask = "relevance"\ndata = "x.jsonl"\n'
    config.write_text(judge + "\n[selective]\nprecision = { true = 0.70, false = 0.95 }\n")
    loaded = _load(config, _parser().parse_args(["calibrate", str(config), "--set", "selective.delta=0.05"]))
    assert loaded.selective is not None and loaded.selective.delta == 0.05
    assert loaded.selective.precision == {"true": 0.70, "false": 0.95}
    assert loaded.split.calibration == 0.2  # held back for the band unless set
    assert load_config(config, {"split.calibration": 0.3}).split.calibration == 0.3
    assert loaded.selective.procedure == "holm" and loaded.selective.starts == 1
    sequenced = _load(
        config, _parser().parse_args(["calibrate", str(config), "--set", "selective.procedure=fixed-sequence"])
    )
    assert sequenced.selective is not None and sequenced.selective.procedure == "fixed-sequence"
    assert main(["calibrate", str(config), "--set", "selective.procedure=bonferroni", "--no-track"]) == 2
    assert "field 'selective.procedure'" in capsys.readouterr().err
    plain = tmp_path / "plain.toml"
    plain.write_text(judge)
    assert load_config(plain).selective is None and load_config(plain).split.calibration is None
    flagged = _load(plain, _parser().parse_args(["calibrate", str(plain), "--precision", "true=0.6,false=0.9"]))
    assert flagged.selective is not None and flagged.selective.precision == {"true": 0.6, "false": 0.9}
    # A verdict the task does not have: one line naming the file, the line and the field, exit 2.
    config.write_text(judge + "\n[selective]\ndelta = 0.1\nprecision = { yes = 0.70, no = 0.95 }\n")
    assert main(["calibrate", str(config), "--no-track"]) == 2
    error = capsys.readouterr().err
    assert f"{config}:8: field 'selective.precision': expected one target for each verdict" in error
    assert "(true, false)" in error and len(error.strip().splitlines()) == 1
    config.write_text(judge + "[split]\ncalibration = 0\n[selective]\nprecision = { true = 0.7, false = 0.9 }\n")
    assert main(["calibrate", str(config), "--no-track"]) == 2
    assert f"{config}:6: field 'split.calibration': [selective] chooses its band" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["calibrate", str(plain), "--precision", "true=1.5", "--no-track"])
    assert stopped.value.code == 2
    assert "--precision: expected VERDICT=SHARE pairs" in capsys.readouterr().err


SIGNATURE = '''
from typing import Literal

import dspy


class RateHelpfulness(dspy.Signature):
    """Rate how helpful the answer is."""

    question: str = dspy.InputField()
    answer: str = dspy.InputField()
    rating: Literal[1, 2, 3, 4, 5] = dspy.OutputField()
'''


@pytest.mark.parametrize("task", ["relevance", "pairwise", "attribute", "custom"])
def test_init_writes_its_own_experiment_with_every_key(tmp_path: Path, task: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if task == "custom":
        (tmp_path / "judges.py").write_text(SIGNATURE)
        task = "judges.py:RateHelpfulness"
    assert main(["init", "my-judge", "--task", task]) == 0
    text = (tmp_path / "my-judge.toml").read_text()
    document = tomllib.loads(text)
    assert document["judge"] == {
        "name": "my-judge",
        "task": task,
        "data": "my-judge.jsonl",
        "register_as": "my-judge",
    }
    assert document["split"] == {"gate": 0.15}
    assert "search" not in document  # a [search] section would start a search
    for key in config_keys():
        assert f"\n{key.name} = " in text or f"\n# {key.name} = " in text, key.dotted
    # the row template at the top is a valid row of the task
    template = next(line for line in text.splitlines() if line.startswith("#   {"))
    (tmp_path / "my-judge.jsonl").write_text(template.removeprefix("#   ") + "\n")
    from judgecal.data.rows import load_rows
    from judgecal.tasks.registry import resolve_task

    config = load_config(tmp_path / "my-judge.toml")
    [row] = load_rows(config.judge.data, resolve_task(task).spec).rows
    assert row.id == "row-1"


def test_init_never_overwrites(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text("# my own\n")
    assert main(["init", "mine", "--task", "relevance"]) == 2
    assert (tmp_path / "mine.toml").read_text() == "# my own\n"
    assert "mine.toml exists" in capsys.readouterr().err


def test_a_cross_fitted_band_holds_no_rows_back_and_refuses_what_it_cannot_cross_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exp.toml"
    judge = '[judge]\nname = "t"\ntask = "relevance"\ndata = "x.jsonl"\n'
    selective = '[selective]\nprecision = { true = 0.7, false = 0.9 }\nrows = "cross-fit"\n'
    config.write_text(judge + '[calibration]\nstrategy = "stacking"\n' + selective)
    loaded = load_config(config)
    assert loaded.selective is not None and loaded.selective.rows == "cross-fit" and loaded.selective.folds == 5
    assert loaded.split.calibration is None  # no calibration rows held back
    assert load_config(config, {"selective.folds": 8}).selective.folds == 8  # type: ignore[union-attr]
    refusals = {
        '[calibration]\nstrategy = "stacking"\n[split]\ncalibration = 0.2\n': "remove [split] calibration",
        '[calibration]\nstrategy = "mipro"\n': "'mipro' calls the model to fit",
        "": "'bootstrap_random_search' calls the model to fit",  # the default strategy
        '[calibration]\nstrategy = "stacking"\n[search]\ntrials = 4\n': "a search chooses its winner",
    }
    for section, words in refusals.items():
        config.write_text(judge + section + selective)
        assert main(["calibrate", str(config), "--no-track"]) == 2
        error = capsys.readouterr().err
        line = 1 + (judge + section + selective).splitlines().index('rows = "cross-fit"')
        assert f"{config}:{line}: field 'selective.rows': " in error and words in error, error
        assert len(error.strip().splitlines()) == 1
    # A search asked for by its flags alone is refused as well, before any work.
    config.write_text(judge + '[calibration]\nstrategy = "stacking"\n' + selective)
    assert main(["calibrate", str(config), "--strategies", "verifier", "--no-track"]) == 2
    error = capsys.readouterr().err
    assert f"{config}:9: field 'selective.rows': " in error and "a search chooses its winner" in error, error
    assert len(error.strip().splitlines()) == 1
