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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judgecal.backends.settings import LMConfig
from judgecal.calibrate.optimizers import CalibrationConfig
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
        return ExperimentConfig.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DataError(first["msg"], path=path, field=where) from None
