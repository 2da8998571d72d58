"""The experiment file: a TOML document validated by the models below.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error
naming the file and the key, not a silently ignored setting. The data files of
``[judge]`` are relative to the experiment file; command-line flags override keys by
dotted name.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from judgecal.backends.settings import LMConfig
from judgecal.calibrate.optimizers import CalibrationConfig, strategy_name
from judgecal.calibrate.search import SearchConfig
from judgecal.data.rows import DataError
from judgecal.data.split import SplitSpec


class JudgeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Names the MLflow experiment (judgecal/<name>) and the bundle.")
    task: str = Field(
        description="'relevance', 'pairwise', 'attribute', 'package.module:Signature' (importable: its package "
        "installed, or its folder on PYTHONPATH) or 'path/to/file.py:Signature' (relative to the working directory)."
    )
    data: Path = Field(description="Labelled rows (JSONL or CSV); relative to the config file.")
    limit: int | None = Field(default=None, gt=0, description="Use only the first N rows of the file.")
    recorded: str | None = Field(
        default=None,
        description="Calibrate verdicts the rows already hold (reference_judges.<name>) instead of a live model.",
    )
    register_as: str | None = Field(
        default=None,
        description="Register the calibrated judge under this MLflow model name; 'champion' moves to it only "
        "when it beats the current champion significantly on the gate rows.",
    )
    verdicts: Path | None = Field(
        default=None,
        description="Calibrate verdicts from a JSONL file of {id, verdict, probability?} instead of a live model; "
        "relative to the config file. New rows have no verdicts there, so only a verifier calibrated this way is "
        "exported; use recorded for a judge you can use afterwards.",
    )
    gate_data: Path | None = Field(
        default=None,
        description="Fresh labelled rows for the registry's champion gate, instead of a [split] gate share; "
        "relative to the config file.",
    )


class ReportConfig(BaseModel):
    """How intervals are computed for the report and the judge card."""

    model_config = ConfigDict(extra="forbid")

    n_resamples: int = Field(default=2000, ge=100, description="Group-bootstrap resamples.")
    seed: int = Field(default=0, description="Seed of the bootstrap resamples.")


class SelectiveConfig(BaseModel):
    """A judge that abstains where it is unsure, with a guarantee on the verdicts it gives."""

    model_config = ConfigDict(extra="forbid")

    precision: dict[str, Annotated[float, Field(gt=0, lt=1)]] = Field(
        description="Per verdict, the share of its verdicts people must agree with, e.g. "
        "{ true = 0.70, false = 0.95 } (pairwise: { A = 0.9, B = 0.9, tie = 0.6 }); one target for each label "
        "of the task. Setting it makes the calibrated judge selective."
    )
    delta: float = Field(default=0.1, gt=0, lt=1, description="The targets hold with probability at least 1 - delta.")
    groups: Literal["design_effect", "independent"] = Field(
        default="design_effect",
        description="How rows of one group count: 'design_effect' (rows of a prompt share its error; approximate, "
        "for rows of new prompts) or 'independent' (finite-sample, for rows drawn like the calibration rows).",
    )
    allow_never: bool = Field(
        default=False,
        description="A verdict no threshold meets its target for may be never given (the judge then only says "
        "the other verdicts or abstains), instead of leaving no band.",
    )
    procedure: Literal["fixed-sequence", "holm"] = Field(
        default="holm",
        description="The test over each verdict's candidate thresholds: 'fixed-sequence' (in the order of their "
        "values, most confident first from the first where the verdict is given on enough rows to pass, stopping at "
        "the first that fails; no label is read to order them) or 'holm' (Holm's procedure over all of them).",
    )
    starts: int = Field(
        default=1,
        ge=1,
        description="With procedure = 'fixed-sequence': equally spaced starts along each verdict's sequence, each "
        "tested at its share of the verdict's delta and going on until a candidate fails.",
    )
    rows: Literal["split", "cross-fit"] = Field(
        default="split",
        description="Which rows the band is chosen on: 'split' (the [split] calibration share, held back from "
        "fitting and selection, so the band is tested on the judge it is applied to) or 'cross-fit' (nothing held "
        "back: the strategy is fitted again on grouped folds of train + dev, each row scored by the fit that left "
        "its group out, and the band chosen on those scores is applied to the judge fitted on all rows; "
        "approximate, for few groups; refused for strategies that call the model to fit and with [search]).",
    )
    folds: int = Field(
        default=5,
        ge=2,
        description="With rows = 'cross-fit': how many grouped folds of train + dev (groups = prompts).",
    )


# Share of groups held back for a selective judge's band when [split] calibration is not set.
DEFAULT_CALIBRATION_SHARE = 0.2


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: JudgeSection
    lm: LMConfig = Field(default_factory=LMConfig)
    split: SplitSpec = Field(default_factory=SplitSpec)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    order_swap: bool | None = Field(
        default=None, description="Also judge pairs with responses swapped (default: pairwise tasks)."
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    search: SearchConfig | None = Field(
        default=None, description="A [search] section makes the calibration an Optuna search over strategies."
    )
    selective: SelectiveConfig | None = Field(
        default=None,
        description="A [selective] section makes the calibrated judge abstain where it cannot meet the targets.",
    )

    @model_validator(mode="after")
    def _calibration_share(self) -> ExperimentConfig:
        """A selective judge's band chosen on a split needs rows of its own: [split]
        calibration, 0.2 unless set."""
        if self.selective is None or self.selective.rows != "split":
            return self
        if self.split.calibration is None:
            self.split = self.split.model_copy(update={"calibration": DEFAULT_CALIBRATION_SHARE})
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML experiment; ``overrides`` use dotted keys (``{"lm.model": "openai/gpt-4o"}``)."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such experiment file", path=path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(error))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error))
        line = int(where.group(1)) if where else None
        column = f" (column {where.group(2)})" if where else ""
        raise DataError(f"invalid TOML: {message}{column}", path=path, line=line) from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = document
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    for key in ("data", "verdicts", "gate_data"):
        value = document.get("judge", {}).get(key)
        if value is not None and not Path(value).is_absolute() and (overrides or {}).get(f"judge.{key}") is None:
            document["judge"][key] = str((path.parent / value).resolve())
    try:
        config = ExperimentConfig.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DataError(first["msg"], path=path, field=where) from None
    check_selective(config, path)
    return config


def check_selective(config: ExperimentConfig, path: Path) -> None:
    """A [selective] section needs calibration rows and one target per verdict of the task
    (a task that does not resolve is reported where the rows are loaded)."""
    from judgecal.judges.verdict import answer_key
    from judgecal.tasks.registry import resolve_task

    if config.selective is None:
        return
    text = path.read_text(encoding="utf-8")
    if config.selective.rows == "cross-fit":
        check_cross_fit(config, path, text)
    elif config.split.calibration == 0:
        raise DataError(
            "[selective] chooses its band on calibration rows the judge never saw: set a share above 0 "
            f"(default {DEFAULT_CALIBRATION_SHARE})",
            path=path,
            line=_line_of(text, "split", "calibration"),
            field="split.calibration",
        )
    try:
        task = resolve_task(config.judge.task)
    except (ValueError, ImportError):
        return
    keys = [answer_key(label) for label in task.spec.labels]
    given = list(config.selective.precision)
    if set(given) != set(keys):
        example = "{ " + ", ".join(f"{key} = 0.9" for key in keys) + " }"
        raise DataError(
            f"expected one target for each verdict of task {config.judge.task!r} ({', '.join(keys)}), e.g. "
            f"{example}; got {', '.join(given) or 'none'}",
            path=path,
            line=_line_of(text, "selective", "precision"),
            field="selective.precision",
        )


def check_cross_fit(config: ExperimentConfig, path: Path, text: str) -> None:
    """Cross-fitting holds no rows back, fits the strategy once per fold without calling the
    model, and chooses the band on rows nothing selected the judge on."""
    from judgecal.calibrate.strategies import STRATEGIES

    where = {"path": path, "line": _line_of(text, "selective", "rows"), "field": "selective.rows"}
    if config.split.calibration:
        raise DataError(
            '[selective] rows = "cross-fit" chooses the band on out-of-fold scores of train + dev and holds no '
            'calibration rows back: remove [split] calibration, or choose the band on it with rows = "split"',
            **where,
        )
    if config.search is not None:
        refuse_cross_fit_search(path)
    spec = STRATEGIES.get(strategy_name(config.calibration))
    if spec is not None and spec.calls_lm_to_fit:
        raise DataError(
            f'[selective] rows = "cross-fit" fits the strategy {config.selective.folds} more times, and '
            f'{spec.name!r} calls the model to fit: use rows = "split", or a strategy fitted without the model '
            "(threshold, base_rate, verifier, embedding_verifier, stacking)",
            **where,
        )


def refuse_cross_fit_search(path: Path) -> None:
    """A search (its [search] section, or ``--strategies`` / ``--trials`` / ``--worker``)
    chooses its winner on train + dev, the rows a cross-fitted band would be chosen on."""
    raise DataError(
        '[selective] rows = "cross-fit" needs rows nothing selected the judge on, and a search chooses its winner '
        'on train + dev: use rows = "split" with a search',
        path=path,
        line=_line_of(path.read_text(encoding="utf-8"), "selective", "rows"),
        field="selective.rows",
    )


def _line_of(text: str, section: str, key: str) -> int | None:
    """The line of ``key`` in ``[section]`` of a TOML text (None when set from the command line)."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
    return None
