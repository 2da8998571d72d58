"""Batch judging on Spark: a registered judge as ``mlflow.pyfunc.spark_udf`` over a
DataFrame of the task's inputs, on a local Spark session (``local[2]``), gives the verdicts
``judge.batch`` gives on the same rows."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from judgecal.backends.settings import LMConfig
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.export.adapters import CalibratedJudge
from judgecal.judges.verdict import answer_key
from judgecal.tasks.registry import resolve_task
from tests.helpers import recorded_rows

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="Java is absent: Spark needs Java 17 or newer"),
    pytest.mark.service,  # a JVM for the module
    pytest.mark.xdist_group("spark"),  # on one pytest-xdist worker: one JVM
]
pytest.importorskip("pyspark", reason='needs the spark extra: pip install -e ".[spark]"')

RELEVANCE = resolve_task("relevance")
VERDICT = "label string, confidence double, error string"


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """A local Spark session whose Python workers run this interpreter and share the
    test's DSPy cache folder."""
    from pyspark.sql import SparkSession

    saved = {key: os.environ.get(key) for key in ("PYSPARK_PYTHON", "DSPY_CACHEDIR")}
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["DSPY_CACHEDIR"] = str(tmp_path_factory.mktemp("spark-dspy-cache"))
    session = (
        SparkSession.builder.master("local[2]")
        .appName("judgecal-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def register_champion(judge, name: str, lm_config: LMConfig | None = None) -> str:
    """Log the judge as judgecal does, register it and point the alias ``champion`` at it."""
    import mlflow

    from judgecal.export.flavor import log_model
    from judgecal.workspace import Workspace

    Workspace.find().open_tracking()
    mlflow.set_experiment(name)
    with mlflow.start_run():
        info = log_model(judge, lm_config=lm_config)
    version = mlflow.register_model(info.model_uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)
    return f"models:/{name}@champion"


def judged_on_spark(spark, uri: str, rows: list[dict]) -> list[dict]:
    import mlflow

    # One partition: one Python worker starts (importing judgecal takes seconds) and is
    # reused by the next tests; experiments/bench_spark.py keeps both workers busy.
    frame = spark.createDataFrame(rows).coalesce(1)
    verdict = mlflow.pyfunc.spark_udf(spark, uri, result_type=VERDICT)
    judged = frame.withColumn("verdict", verdict(*RELEVANCE.spec.input_names))  # as the README shows it
    return [row.asDict() for row in judged.select("id", "verdict.*").orderBy("id").collect()]


def test_a_verifier_judge_judges_a_dataframe_on_spark_as_batch_does(spark) -> None:
    from judgecal.calibrate.trained import VerifierJudge

    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    verifier = VerifierJudge(task=RELEVANCE, name="relevance").fit(split.train.rows, split.dev.rows)
    uri = register_champion(verifier, "relevance")
    rows = sorted(split.test.rows[:12], key=lambda row: row.id)
    results = judged_on_spark(spark, uri, [{"id": row.id, **row.inputs} for row in rows])
    expected = CalibratedJudge(verifier).batch(rows, progress=False)
    assert [r["id"] for r in results] == [row.id for row in rows]
    assert [r["label"] for r in results] == [answer_key(v.label) for v in expected]
    assert [r["confidence"] for r in results] == pytest.approx([v.confidence for v in expected])
    assert {r["error"] for r in results} == {""}


@pytest.mark.slow
def test_an_embedded_model_judge_judges_on_spark_as_batch_does(spark, embedded_lm) -> None:
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram

    judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), embedded_lm, "relevance-embedded")
    uri = register_champion(judge, "relevance-embedded", LMConfig(max_tokens=48))
    rows = [
        {"id": "r1", "prompt": "Plan a picnic for my family.", "attribute": "The user is vegan."},
        {"id": "r2", "prompt": "Fix my CSS grid layout.", "attribute": "The user is vegan."},
        {"id": "r3", "prompt": "Suggest a weekend workout.", "attribute": "The user has a knee injury."},
    ]
    results = judged_on_spark(spark, uri, rows)
    expected = CalibratedJudge(judge).batch([{k: v for k, v in r.items() if k != "id"} for r in rows], progress=False)
    assert [r["label"] for r in results] == [answer_key(v.label) for v in expected]
    assert [r["confidence"] for r in results] == pytest.approx([v.confidence for v in expected], abs=1e-3)


def test_a_row_the_model_gives_no_answer_for_is_an_error_in_its_row_not_a_failed_job(
    spark, chat_server, tmp_path: Path
) -> None:
    """A remote judge whose server fails on one row and answers garbage on another: those
    rows carry their error, the others their verdict, and the Spark job finishes."""
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram

    chat_server.respond = lambda text, attempt: 503 if "down" in text else "garbage" if "odd" in text else "ok"
    judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), None, "remote")
    config = LMConfig(model="openai/judge", api_base=chat_server.url, cache=False, num_retries=0)
    uri = register_champion(judge, "relevance-remote", config)
    rows = [{"id": f"r{i}", "prompt": text, "attribute": "a"} for i, text in enumerate(["fine", "down", "odd"])]
    import mlflow

    frame = spark.createDataFrame(rows).coalesce(1)
    verdict = mlflow.pyfunc.spark_udf(
        spark,
        uri,
        result_type=VERDICT,
        model_config={"api_base": chat_server.url},
        extra_env={"OPENAI_API_KEY": os.environ["OPENAI_API_KEY"]},
    )
    judged = frame.withColumn("verdict", verdict(frame["prompt"], frame["attribute"]))
    results = {row["id"]: row for row in judged.select("id", "verdict.*").collect()}
    assert (results["r0"]["label"], results["r0"]["error"]) == ("true", "")
    assert results["r1"]["label"] == "" and "LMServerError" in results["r1"]["error"]
    assert results["r2"]["label"] == "" and results["r2"]["error"]
