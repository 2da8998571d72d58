"""Every key of the experiment file, read off the pydantic models in :mod:`judgecal.pipeline.config`:
the configuration page of the documentation (``docs/configuration.md``) and the starter
file ``judgecal init`` writes are both generated from here, so neither can drift from the
code.

Which settings have a flag of their own: those that change from one run of an experiment
to the next (what is judged, the model and how it samples, the strategy, the seeds, a
selective judge's precision targets, how many rows each part of the split may cost, the
search's budget and where it is kept).
Everything else is set in the file, or for one run with ``--set section.key=VALUE``.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from judgecal.pipeline.config import ExperimentConfig
from judgecal.tasks.registry import resolve_task

FLAGS: dict[str, str] = {
    "judge.name": "--name",
    "judge.task": "--task",
    "judge.data": "--data",
    "judge.limit": "--limit",
    "judge.recorded": "--recorded",
    "judge.verdicts": "--verdicts",
    "judge.register_as": "--register",
    "judge.gate_data": "--gate-data",
    "lm.model": "--model",
    "lm.api_base": "--api-base",
    "lm.temperature": "--temperature",
    "lm.max_tokens": "--max-tokens",
    "split.seed": "--split-seed",
    "split.max_train_rows": "--max-train-rows",
    "split.max_dev_rows": "--max-dev-rows",
    "split.max_test_rows": "--max-test-rows",
    "split.max_gate_rows": "--max-gate-rows",
    "calibration.strategy": "--strategy",
    "calibration.seed": "--seed",
    "calibration.num_threads": "--num-threads",
    "selective.precision": "--precision",
    "search.strategies": "--strategies",
    "search.trials": "--trials",
    "search.storage": "--storage",
    "search.study_name": "--study-name",
    "search.worker": "--worker",
    "search.max_lm_calls": "--max-lm-calls",
    "search.max_cost_usd": "--max-cost",
}
"""Experiment keys with a ``judgecal calibrate`` flag of their own."""

FLAG_RULE = (
    "A setting has a flag of its own when it changes from one run of an experiment to the next: what is "
    "judged (data, name, task, limit, recorded verdicts, registry name, gate rows), the model and how it "
    "samples (model, api_base, temperature, max_tokens), how many rows it judges at once (num_threads), the "
    "strategy and the seeds, a selective judge's "
    "precision targets, the caps on how many "
    "rows each part of the split may cost, and the search's strategies, trials, storage, study, worker and budget. "
    "Every other key is set in the experiment file, or for one run with `--set section.key=VALUE` "
    "(the value is read as TOML: `--set report.n_resamples=500`, `--set 'calibration.params={C = 0.5}'`)."
)

SECTION_NOTES = {
    "judge": "What is judged, where the rows are, and where the result goes.",
    "lm": "The judge model. API keys come from the provider's environment variables, never from this file.",
    "split": "The grouped split: fractions count groups, and no group is in two parts.",
    "calibration": "The strategy, and the settings of the DSPy optimizers and of the other strategies.",
    "report": "How intervals are computed for the report and the judge card.",
    "search": "Present, it makes `judgecal calibrate` run an Optuna search over strategies "
    "(so do `--strategies`, `--trials` and `--worker`; `--strategy` runs one strategy instead).",
    "selective": "Present (or `--precision`), it makes the calibrated judge selective: it abstains where its "
    "verdicts cannot meet the precision targets, with the band chosen on `[split] calibration` rows "
    "(docs/selective.md).",
}


@dataclass(frozen=True)
class ConfigKey:
    """One key of the experiment file."""

    section: str | None
    name: str
    type: str
    default: Any
    required: bool
    description: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def flag(self) -> str | None:
        return FLAGS.get(self.dotted)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(value) for value in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " | ".join(names) + (" (optional)" if type(None) in get_args(annotation) else "")
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "table"
    names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}
    name = getattr(annotation, "__name__", str(annotation))
    return names.get(name, name)


def _default(info: FieldInfo) -> Any:
    if info.is_required():
        return None
    return info.get_default(call_default_factory=True)


def _key(section: str | None, name: str, info: FieldInfo) -> ConfigKey:
    return ConfigKey(
        section=section,
        name=name,
        type=_type_name(info.annotation),
        default=_default(info),
        required=info.is_required(),
        description=(info.description or "").strip(),
    )


def _section_model(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    candidates = get_args(annotation) if get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def sections() -> list[tuple[str | None, str, list[ConfigKey]]]:
    """The experiment file's keys, section by section (top-level keys under ``None``), each
    section's required keys first."""
    top: list[ConfigKey] = []
    out: list[tuple[str | None, str, list[ConfigKey]]] = []
    for name, info in ExperimentConfig.model_fields.items():
        model = _section_model(info)
        if model is None:
            top.append(_key(None, name, info))
            continue
        keys = [_key(name, key, field) for key, field in model.model_fields.items()]
        keys.sort(key=lambda k: not k.required)
        out.append((name, SECTION_NOTES.get(name, (model.__doc__ or "").strip()), keys))
    return [(None, "Keys outside any section.", top), *out]


def config_keys() -> list[ConfigKey]:
    return [key for _, _, keys in sections() for key in keys]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def _shown_default(key: ConfigKey) -> str:
    if key.required:
        return "required"
    if key.default is None:
        return "not set"
    return f"`{_toml_value(key.default)}`"


def configuration_markdown() -> str:
    """``docs/configuration.md``: every key of the experiment file with its type, default,
    flag and meaning."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from the pydantic models in judgecal/pipeline/config.py by "
        "`python -m judgecal.pipeline.reference > docs/configuration.md` (or `make docs`); "
        "tests/pipeline/test_reference.py fails when this page differs. Do not edit by hand. -->",
        "",
        "An experiment is a TOML file; `judgecal init NAME --task TASK` writes one with every key below. "
        "Every section refuses keys it does not know, so a misspelt key is an error naming the file and "
        "the key. The files `data`, `verdicts` and `gate_data` are relative to the experiment file (given as "
        "flags, to the working directory); a task `path/to/file.py:Signature` and a `.gguf` model path are "
        "relative to the working directory. A task `package.module:Signature` is imported: install its package "
        "(`pip install -e .` in its project) or put its folder on `PYTHONPATH` (`PYTHONPATH=. judgecal calibrate "
        "...`), since the `judgecal` command does not import from the working directory.",
        "",
        "**Which settings have flags.** " + FLAG_RULE,
        "",
        "A flag overrides the file for that run only; `judgecal calibrate --help` lists them.",
        "",
    ]
    for section, note, keys in sections():
        lines += [f"## [{section}]" if section else "## Top level", "", note, ""]
        lines += ["| key | type | default | flag | meaning |", "|---|---|---|---|---|"]
        for key in keys:
            flag = f"`{key.flag}`" if key.flag else "–"
            meaning = key.description.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{key.name}` | {key.type} | {_shown_default(key)} | {flag} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def _example(name: str, annotation: Any) -> Any:
    """A placeholder value of a field's type: a list holds one item, a choice its first value."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _example(name, next(arg for arg in get_args(annotation) if arg is not type(None)))
    if origin is Literal:
        return get_args(annotation)[0]
    if origin is list:
        return [_example(f"{name} item", get_args(annotation)[0])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {field: _example(field, info.annotation) for field, info in annotation.model_fields.items()}
    return f"<{name}>"


def row_template(task_reference: str) -> tuple[dict[str, Any], list[str]]:
    """One example row for a task (JSONL) and the CSV header for the same row."""
    spec = resolve_task(task_reference).spec
    row: dict[str, Any] = {"id": "row-1", "group": "prompt-1"}
    for name, info in spec.inputs_model.model_fields.items():
        row[name] = _example(name, info.annotation)
    row["label"] = spec.labels[0]
    return row, list(row)


def starter_experiment(name: str, task_reference: str, data: str) -> str:
    """The experiment file ``judgecal init`` writes: required keys set, every other key
    present as a comment with its default, flag and meaning."""
    task = resolve_task(task_reference)
    row, header = row_template(task_reference)
    labels = " / ".join(json.dumps(label) for label in task.spec.labels)
    lines = [
        f"# {name}: an experiment file written by `judgecal init {name} --task {task_reference}`.",
        "# Set keys are required or chosen for this experiment; every other key is shown commented out",
        "# with its default. Flags of `judgecal calibrate` override keys for one run (shown as '--flag').",
        "# data, verdicts and gate_data are relative to this file. Every key: docs/configuration.md",
        "#",
        f"# Rows for `data` (JSONL, one object per line); the label is one of {labels}:",
        f"#   {json.dumps(row, ensure_ascii=False)}",
        f"# or CSV with this header (list columns hold JSON text): {','.join(header)}",
        "# Optional columns: annotator_labels (a list of every annotator's label), reference_judges",
        "# (in CSV: one column reference_judges.<judge> per judge), soft_label; any other column is kept.",
        "",
    ]
    chosen = {
        "judge.name": name,
        "judge.task": task_reference,
        "judge.data": data,
        "judge.register_as": name,
        "split.gate": 0.15,
    }
    why = {
        "judge.name": "MLflow experiment judgecal/<name>; this experiment's own",
        "judge.task": "the judge's signature: inputs and verdict",
        "judge.data": "your labelled rows",
        "judge.register_as": "registered model name, champion alias gated; remove to register nothing",
        "split.gate": "groups the champion gate compares registered versions on (never fitted or reported on)",
    }
    for section, note, keys in sections():
        comment_section = section in ("search", "selective")
        if section:
            lines.append(f"# {note}")
            lines.append(f"{'# ' if comment_section else ''}[{section}]")
        for key in keys:
            flag = f"{key.flag}: " if key.flag else ""
            description = key.description.replace("\n", " ")
            if key.dotted in chosen:
                value = _toml_value(chosen[key.dotted])
                lines.append(f"{key.name} = {value}  # {flag}{why[key.dotted]}")
                continue
            value = f"<{key.type}>" if key.default is None else _toml_value(key.default)
            text = f"# {key.name} = {value}"
            comment = f"{flag}{description}".strip()
            lines.append(f"{text}  # {comment}" if comment else text)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(configuration_markdown(), end="")
