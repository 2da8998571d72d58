"""MLflow pyfunc model defined from code: MLflow logs this file, not a pickle.

Loaded with ``mlflow.pyfunc.load_model(uri)``; ``predict`` takes a DataFrame whose
columns are the judge's inputs and returns one row per input with ``label`` (JSON
spelling: ``true``, ``A``, ...), ``confidence`` and ``error``.

The bundle is loaded as :func:`judgecal.load_judge` loads it: its digest is checked and
its endpoint is not used. ``load_model(uri, model_config={...})`` takes the same choices:
``model``, ``api_base``, ``trust_endpoint``, ``allow_modified``.
"""

import warnings

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

LOAD_OPTIONS = ("model", "api_base", "trust_endpoint", "allow_modified")


class CalibratedJudgeModel(PythonModel):
    def load_context(self, context) -> None:
        from judgecal.export.bundle import BundleNote
        from judgecal.export.flavor import open_judge

        config = dict(getattr(context, "model_config", None) or {})
        options = {key: config[key] for key in LOAD_OPTIONS if config.get(key) is not None}
        loaded = open_judge(context.artifacts["bundle"], **options)
        for note in loaded.notes:
            warnings.warn(note, BundleNote, stacklevel=2)
        self.judge = loaded.judge
        self.digest = loaded.digest

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from judgecal.judges.verdict import answer_key

        spec = self.judge.task.spec
        rows = []
        for record in model_input.to_dict(orient="records"):
            validated = spec.inputs_model.model_validate(
                {name: value for name, value in record.items() if name in spec.input_names}
            )
            inputs = {name: getattr(validated, name) for name in spec.input_names}
            verdict = self.judge(**inputs)
            rows.append(
                {
                    "label": None if verdict.label is None else answer_key(verdict.label),
                    "confidence": verdict.confidence,
                    "error": verdict.error,
                }
            )
        return pd.DataFrame(rows, columns=["label", "confidence", "error"])


mlflow.models.set_model(CalibratedJudgeModel())
