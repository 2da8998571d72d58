"""MLflow pyfunc model defined from code: MLflow logs this file, not a pickle.

MLflow copies this file into every model folder it saves and executes that copy when the
model is loaded (``mlflow.pyfunc.load_model``, ``spark_udf``); the bundle's digest does not
cover it. So it does nothing but hand ``judge.json`` to judgecal's own loader.

Loaded with ``mlflow.pyfunc.load_model(uri)`` or as a Spark UDF
(``mlflow.pyfunc.spark_udf(spark, uri, result_type="label string, confidence double, error
string, abstained boolean")``); ``predict`` takes a DataFrame whose columns are the judge's
inputs and returns one row per input with ``label`` (JSON spelling: ``true``, ``A``, ...;
empty when the judge gave none), ``confidence`` (NaN when it has none), ``error`` (empty
when there is none) and ``abstained`` (true where the judge chose not to answer: an empty
label that is not an error). Empty strings rather than missing values, because MLflow's
Spark UDF turns a missing value in a string column into the text ``None``.

The bundle is loaded as :func:`judgecal.load_judge` loads it: its digest is checked and
its endpoint is not used. ``load_model(uri, model_config={...})`` takes the same choices:
``model``, ``api_base``, ``trust_endpoint``, ``allow_modified``.
"""

import math
import warnings

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

LOAD_OPTIONS = ("model", "api_base", "trust_endpoint", "allow_modified")
OUTPUT_COLUMNS = ["label", "confidence", "error", "abstained"]


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
        """One row out per row in. A judge that calls no model judges the whole frame at once;
        a model-calling judge goes row by row, and a row its model gave no answer for (the
        call kept failing, the row is longer than the context) carries the error in its
        ``error`` column instead of failing the batch (or the Spark task) it is part of. A
        row the judge abstained on has an empty label, no error and ``abstained`` true."""
        from judgecal.data.rows import LabeledRow
        from judgecal.judges.program import RowFailedError
        from judgecal.judges.verdict import answer_key

        spec = self.judge.task.spec
        rows = []
        for index, record in enumerate(model_input.to_dict(orient="records")):
            validated = spec.inputs_model.model_validate(
                {name: value for name, value in record.items() if name in spec.input_names}
            )
            inputs = {name: getattr(validated, name) for name in spec.input_names}
            rows.append(LabeledRow(id=str(index), group="-", inputs=inputs, label=None))
        if not self.judge.uses_lm:
            verdicts = self.judge.predict(rows)
            out = [(v.label, v.confidence, v.error, v.abstained) for v in verdicts]
        else:
            out = []
            for row in rows:
                try:
                    verdict = self.judge.predict([row])[0]
                except RowFailedError as error:
                    out.append((None, None, error.reason, False))
                    continue
                out.append((verdict.label, verdict.confidence, verdict.error, verdict.abstained))
        frame = pd.DataFrame(
            [
                {
                    "label": "" if label is None else answer_key(label),
                    "confidence": math.nan if confidence is None else confidence,
                    "error": error or "",
                    "abstained": abstained,
                }
                for label, confidence, error, abstained in out
            ],
            columns=OUTPUT_COLUMNS,
        )
        return frame.astype({"abstained": bool})


mlflow.models.set_model(CalibratedJudgeModel())
