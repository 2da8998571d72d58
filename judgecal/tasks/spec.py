"""The shape of a task's rows, read off its DSPy signature: the input fields, the one
decision field and its labels, and how to read a label as people write it (``yes``,
``1``, ``Tie``).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model

from judgecal.data.rows import LabelValue


class TaskSpec(BaseModel):
    """What rows of one judge look like: its inputs, its decision field and label values."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    inputs_model: type[BaseModel]
    decision_field: str
    labels: tuple[LabelValue, ...]
    positive: LabelValue | None = Field(
        default=None, description="The label whose rate is reported as the selected rate (binary tasks)."
    )

    @property
    def is_binary(self) -> bool:
        return self.labels == (True, False)

    @property
    def is_pairwise(self) -> bool:
        """Two responses compared: inputs ``response_a`` and ``response_b``, labels ``A`` and
        ``B`` (and maybe a tie). Such a task is judged in both orders by default, its
        verifiers and stacks are symmetric under swapping the two, and its reports measure
        position and verbosity bias."""
        return {"response_a", "response_b"} <= set(self.input_names) and {"A", "B"} <= set(self.labels)

    @property
    def negative(self) -> LabelValue | None:
        """A binary task's other label (what a verdict below the cut is); ``None`` for a
        task without a positive label."""
        if self.positive is None:
            return None
        return next(label for label in self.labels if label != self.positive)

    @property
    def is_ordinal(self) -> bool:
        """Ratings such as 1-5: integer labels whose order and distance matter."""
        return all(isinstance(label, int) and not isinstance(label, bool) for label in self.labels)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs_model.model_fields)

    def parse_label(self, value: Any) -> LabelValue:
        """Coerce a label as users write it (``yes``/``no``, ``1``/``0``, ``a``/``B``/``Tie``)."""
        if self.is_binary:
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float) and value in (0, 1):
                return bool(value)
            if isinstance(value, str):
                text = value.strip().lower()
                if text in _TRUE_WORDS:
                    return True
                if text in _FALSE_WORDS:
                    return False
            raise ValueError(f"expected a yes/no label (true/false, yes/no, 1/0), got {value!r}")
        if self.is_ordinal:
            number = value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                number = int(value.strip())
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            if isinstance(number, int) and not isinstance(number, bool) and number in self.labels:
                return number
        if isinstance(value, str):
            by_key = {str(label).lower(): label for label in self.labels}
            found = by_key.get(value.strip().lower())
            if found is not None:
                return found
        allowed = ", ".join(repr(label) for label in self.labels)
        raise ValueError(f"expected one of {allowed}, got {value!r}")

    @classmethod
    def from_signature(cls, name: str, signature: Any) -> TaskSpec:
        """Derive the row shape from a DSPy signature with one bool or Literal output."""
        outputs = dict(signature.output_fields)
        if len(outputs) != 1:
            raise TypeError(
                f"signature {signature.__name__} must have exactly one output field (the decision); "
                f"it has {sorted(outputs)}"
            )
        decision, field_info = next(iter(outputs.items()))
        annotation = field_info.annotation
        if annotation is bool:
            labels: tuple[LabelValue, ...] = (True, False)
            positive: LabelValue | None = True
        elif get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation)):
            labels = tuple(get_args(annotation))
            positive = None
        elif get_origin(annotation) is Literal and all(
            isinstance(v, int) and not isinstance(v, bool) for v in get_args(annotation)
        ):
            labels = tuple(sorted(get_args(annotation)))
            positive = None
        else:
            raise TypeError(
                f"the decision field '{decision}' of {signature.__name__} must be bool, "
                f"Literal[...] of strings, or Literal[...] of integers (a rating), not {annotation!r}"
            )
        fields: dict[str, Any] = {}
        for input_name, info in signature.input_fields.items():
            input_type = info.annotation
            if _admits_none(input_type):
                fields[input_name] = (input_type, None)
            elif get_origin(input_type) is list:
                fields[input_name] = (input_type, Field(default_factory=list))
            else:
                fields[input_name] = (input_type, ...)
        model = create_model(  # type: ignore[call-overload]
            f"{signature.__name__}Inputs", __config__=ConfigDict(extra="forbid"), **fields
        )
        return cls(name=name, inputs_model=model, decision_field=decision, labels=labels, positive=positive)


_TRUE_WORDS = {"true", "yes", "y", "1", "t", "relevant", "accept", "accepted"}


_FALSE_WORDS = {"false", "no", "n", "0", "f", "irrelevant", "not relevant", "reject", "rejected"}


def _admits_none(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return type(None) in get_args(annotation)
    return annotation is None or annotation is type(None)
