"""Benchmark of batch judging: ``judgecal judge`` in one process against Spark.

    .venv/bin/python experiments/bench_spark.py [--rows 100000]

A verifier judge (TF-IDF + logistic regression) is fitted on the relevance demo rows and
saved as judgecal saves it: a bundle and an MLflow model. ``--rows`` rows are drawn from
the demo file's prompts and attributes (seeded) into one JSONL file, which is judged

* by ``judgecal judge --judge BUNDLE --input rows.jsonl --output verdicts.jsonl``, one
  process (its start-up included);
* by ``mlflow.pyfunc.spark_udf`` on a local Spark session (``local[2]``: two Python
  workers), reading the same file and writing the verdicts to Parquet.

Needs Java 17 or newer for Spark. Printed: seconds and rows/s for each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from judgecal.backends.settings import LMConfig
from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.rows import load_rows
from judgecal.export.bundle import bundle_from_judge, save_bundle
from judgecal.export.flavor import save_model
from judgecal.tasks.registry import resolve_task

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "data" / "relevance_demo.jsonl"
VERDICT = "label string, confidence double, error string"


def write_rows(path: Path, count: int, seed: int = 0) -> None:
    records = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    prompts = sorted({r["prompt"] for r in records})
    attributes = sorted({r["attribute"] for r in records})
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(count):
            row = {"id": f"r{i}", "prompt": rng.choice(prompts), "attribute": rng.choice(attributes)}
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    console = Console()
    task = resolve_task("relevance")
    results: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        verifier = VerifierJudge(task=task, name="relevance").fit(load_rows(DEMO, task.spec).rows)
        save_bundle(bundle_from_judge(verifier, LMConfig()), folder / "bundle")
        save_model(folder / "bundle", folder / "model")
        source = folder / "rows.jsonl"
        write_rows(source, args.rows)

        started = time.perf_counter()
        command = [sys.executable, "-m", "judgecal.cli", "judge", "--judge", str(folder / "bundle")]
        command += ["--input", str(source), "--output", str(folder / "verdicts.jsonl")]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "JUDGECAL_HOME": scratch})
        results.append(("judgecal judge (one process)", time.perf_counter() - started, args.rows))

        os.environ["PYSPARK_PYTHON"] = sys.executable
        import mlflow
        from pyspark.sql import SparkSession

        started = time.perf_counter()
        spark = (
            SparkSession.builder.master(args.master)
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "2g")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        session = time.perf_counter() - started
        try:
            started = time.perf_counter()
            frame = spark.read.schema("id string, prompt string, attribute string").json(str(source))
            verdict = mlflow.pyfunc.spark_udf(spark, str(folder / "model"), result_type=VERDICT)
            judged = frame.withColumn("verdict", verdict(frame["prompt"], frame["attribute"]))
            judged.select("id", "verdict.*").write.parquet(str(folder / "verdicts.parquet"))
            seconds = time.perf_counter() - started
            written = spark.read.parquet(str(folder / "verdicts.parquet")).count()
        finally:
            spark.stop()
        results.append(
            (f"Spark {args.master}, spark_udf (session start-up {session:.0f} s not included)", seconds, written)
        )
        results.append((f"Spark {args.master}, session start-up included", seconds + session, written))

    table = Table(title=f"A verifier judge on {args.rows:,} rows", title_justify="left")
    for column in ("how", "seconds", "rows/s"):
        table.add_column(column, justify="left" if column == "how" else "right")
    for how, seconds, rows in results:
        table.add_row(how, f"{seconds:.1f}", f"{rows / seconds:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
