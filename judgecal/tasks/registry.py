"""Named judge tasks: a DSPy signature plus the row shape read off it.

Built-in names map to the signatures in ``signatures/``; any other name is a reference
to a signature class, ``package.module:ClassName`` or ``path/to/file.py:ClassName``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judgecal.signatures import JudgePairwise, JudgeRelevance, VerifyAttribute
from judgecal.tasks.spec import TaskSpec

BUILTIN_SIGNATURES: dict[str, Any] = {
    "relevance": JudgeRelevance,
    "pairwise": JudgePairwise,
    "attribute": VerifyAttribute,
}


@dataclass(frozen=True)
class Task:
    """A judge's signature and the shape of its labelled rows."""

    name: str
    signature: Any
    spec: TaskSpec
    reference: str

    @property
    def decision_field(self) -> str:
        return self.spec.decision_field


def resolve_task(reference: str) -> Task:
    """Resolve a built-in task name or a ``module:Class`` / ``file.py:Class`` reference."""
    if reference in BUILTIN_SIGNATURES:
        signature = BUILTIN_SIGNATURES[reference]
        name = reference
    else:
        signature = _import_signature(reference)
        name = signature.__name__
    return Task(name=name, signature=signature, spec=TaskSpec.from_signature(name, signature), reference=reference)


def _import_signature(reference: str) -> Any:
    import dspy

    if ":" not in reference:
        known = ", ".join(sorted(BUILTIN_SIGNATURES))
        raise ValueError(
            f"unknown task {reference!r}: use one of {known}, or 'package.module:Signature' / "
            "'path/to/file.py:Signature'"
        )
    location, _, attribute = reference.rpartition(":")
    if location.endswith(".py"):
        path = Path(location).resolve()
        if not path.exists():
            raise FileNotFoundError(f"{location}: no such signature file (from task {reference!r})")
        module_name = f"judgecal_user_signatures.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{location}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as error:
            if error.name is None or not f"{location}.".startswith(f"{error.name}."):
                raise  # the module is there; something it imports is not
            raise ImportError(
                f"task {reference!r}: {error}; install its package (pip install -e . in its project) or put "
                "its folder on PYTHONPATH (PYTHONPATH=. judgecal ...): the judgecal command does not import "
                "from the working directory"
            ) from None
    try:
        signature = getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"{location} has no attribute {attribute!r} (from task {reference!r})") from None
    if not (isinstance(signature, type) and issubclass(signature, dspy.Signature)):
        raise TypeError(f"{reference} is not a dspy.Signature subclass")
    return signature


_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "object": dict,
}


def signature_spec(signature: Any) -> dict[str, Any]:
    """A plain-JSON description of a judge signature: enough to rebuild it without importing
    the module that defined it (a loaded bundle runs no code of its author's)."""
    from pydantic import TypeAdapter

    def schema(annotation: Any) -> dict[str, Any]:
        try:
            return TypeAdapter(annotation).json_schema()
        except Exception:
            return {}

    fields = []
    for name, info in signature.fields.items():
        extra = info.json_schema_extra or {}
        fields.append(
            {
                "name": name,
                "role": extra.get("__dspy_field_type", "input"),
                "description": extra.get("desc", ""),
                "schema": schema(info.annotation),
            }
        )
    return {"name": signature.__name__, "instructions": signature.instructions, "fields": fields}


def signature_from_spec(spec: dict[str, Any]) -> Any:
    """Rebuild a signature from :func:`signature_spec`. Input types come back as the JSON
    types they serialise to (objects as dicts); the decision keeps its exact labels."""
    from typing import Literal

    import dspy

    fields: dict[str, Any] = {}
    for field in spec["fields"]:
        schema = field.get("schema") or {}
        if field["role"] == "output":
            if schema.get("type") == "boolean":
                annotation: Any = bool
            elif "enum" in schema:
                annotation = Literal[tuple(schema["enum"])]
            else:
                raise ValueError(
                    f"the decision field {field['name']!r} of bundle signature {spec['name']!r} "
                    "is neither boolean nor an enum"
                )
            fields[field["name"]] = (annotation, dspy.OutputField(desc=field.get("description", "")))
        else:
            annotation = _JSON_TYPES.get(schema.get("type", "string"), str)
            fields[field["name"]] = (annotation, dspy.InputField(desc=field.get("description", "")))
    return dspy.make_signature(fields, spec.get("instructions", ""), signature_name=spec["name"])


class UntrustedTaskError(ValueError):
    """A bundle names code for its task but carries no description to rebuild it from."""


def task_from_spec(reference: str, spec: dict[str, Any] | None) -> Task:
    """A bundle's task: built-ins by name, anything else rebuilt from its stored spec.

    Never imports what the bundle names: a custom task without a stored spec is refused,
    and the caller's own (trusted) code has to supply it.
    """
    if reference in BUILTIN_SIGNATURES:
        return resolve_task(reference)
    if spec is None:
        raise UntrustedTaskError(
            f"the bundle's task {reference!r} is not built in and the bundle carries no signature "
            "description; loading a bundle never imports the code it names. If you trust that code, "
            f"resolve the task in your own code and pass it: load_judge(path, task=resolve_task({reference!r})), "
            "or on the command line: judgecal judge --task MODULE:SIGNATURE"
        )
    signature = signature_from_spec(spec)
    return Task(
        name=spec["name"],
        signature=signature,
        spec=TaskSpec.from_signature(spec["name"], signature),
        reference=reference,
    )


def task_of(value: Task | Any, reference: str) -> Task:
    """A task given by trusted code: a :class:`Task` as it is, or a signature class wrapped."""
    if isinstance(value, Task):
        return value
    name = getattr(value, "__name__", None)
    if name is None or not hasattr(value, "fields"):
        raise TypeError(f"task= takes a Task (resolve_task(...)) or a dspy.Signature class, got {value!r}")
    return Task(name=name, signature=value, spec=TaskSpec.from_signature(name, value), reference=reference)
