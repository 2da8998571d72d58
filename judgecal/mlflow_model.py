"""MLflow pyfunc model defined from code: MLflow logs this file, not a pickle.

Loaded with ``mlflow.pyfunc.load_model(uri)``; ``predict`` takes a DataFrame whose
columns are the judge's inputs and returns one row per input with ``label`` (JSON
spelling: ``true``, ``A``, ...), ``confidence`` and ``error``.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CalibratedJudgeModel(PythonModel):
    def load_context(self, context) -> None:
        from judgecal.export import judge_from_bundle, read_bundle

        self.judge = judge_from_bundle(read_bundle(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from judgecal.judges import answer_key

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
