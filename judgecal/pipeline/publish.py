"""The export step of a calibration, in one place and in this order: the judge bundle,
the MLflow model made from it, and the registry's champion gate, all into the run that
tracking made. It returns the run with what was exported (or why nothing was) and the
registry's decision; it changes nothing it was given."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from judgecal.artifacts import BUNDLE_DIR
from judgecal.export.bundle import JudgeBundle, bundle_digest, bundle_from_judge, save_bundle
from judgecal.export.flavor import log_model
from judgecal.export.reference import reference_sketch
from judgecal.export.registry import RegistryDecision, register_judge
from judgecal.judges.fitted import NotPortableError
from judgecal.pipeline.results import CalibrationReport, Prepared, TrackedRun
from judgecal.report.selective import selective_metrics


def export_judge(
    report: CalibrationReport, prepared: Prepared, tracked: TrackedRun, *, log: Any = print
) -> tuple[TrackedRun, RegistryDecision | None]:
    """Bundle → MLflow model → registry for the calibrated judge of ``report``. A judge
    that cannot judge new rows (verdicts read from a file by row id) exports nothing: the
    run says why, and so does the returned :class:`TrackedRun`."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        bundle = judge_bundle(report)
    except NotPortableError as reason:
        why = f"no judge bundle or model was exported: {reason}"
        client.set_tag(tracked.run_id, "judgecal.exported", why)
        log(why)
        return dataclasses.replace(tracked, not_exported=why), None
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_bundle(bundle, Path(scratch) / BUNDLE_DIR).parent
        client.set_tag(tracked.run_id, "judgecal.bundle_digest", bundle_digest(bundle))
        client.log_artifacts(tracked.run_id, str(folder), artifact_path=BUNDLE_DIR)
    with mlflow.start_run(run_id=tracked.run_id):  # MLflow logs a model into the active run
        model_uri = log_model(bundle).model_uri
    exported = dataclasses.replace(tracked, model_uri=model_uri)
    name = report.config.judge.register_as
    if not name:
        return exported, None
    decision = register(report, prepared, exported, name)
    log(decision.reason)
    return exported, decision


def judge_bundle(report: CalibrationReport) -> JudgeBundle:
    """The calibrated judge as a bundle: its state, LM settings, calibration settings, test
    metrics and its own evaluation, with the data and split fingerprints, and a sketch of
    the test rows with its probabilities on them (before any band) to compare new rows with."""
    config = report.config
    assert report.calibrated_judge is not None, "a calibration report carries its calibrated judge"
    metrics = {f"test.{k}": v for k, v in report.calibrated.metrics.items()}
    if report.selective is not None:
        metrics |= {f"test.{k}": v for k, v in selective_metrics(report.selective).items()}
    return bundle_from_judge(
        report.calibrated_judge,
        config.lm,
        calibration={"strategy": report.strategy, **config.calibration.model_dump(exclude={"strategy"})},
        metrics=metrics,
        evaluation=bundle_evaluation(report),
        data_fingerprint=report.split.data_fingerprint,
        split_fingerprint=report.split.fingerprint,
        reference=reference_sketch(
            report.split.test.rows,
            report.calibrated.verdicts,
            report.task.spec,
            source="test rows of the calibration",
            seed=config.report.seed,
        ),
    )


def bundle_evaluation(report: CalibrationReport) -> dict[str, Any] | None:
    """What a bundle says about its own quality: test metrics with intervals, the
    comparison with the raw judge, the human ceiling; a selective judge's coverage and
    precision on the rows it answers (the other metrics are its verdicts before the band)."""
    agreement = report.agreement
    if agreement is None:
        return None
    calibrated = agreement.judge("calibrated")
    selective = None
    if report.selective is not None:
        selective = report.selective.model_dump(mode="json", include={"rows", "groups", "answered", "coverage"})
        selective |= report.selective.model_dump(mode="json", include={"precision", "recall", "targets"})
    return {
        "selective": selective,
        "split": agreement.split,
        "rows": agreement.rows,
        "groups": agreement.groups,
        "metrics": {name: estimate.model_dump() for name, estimate in calibrated.metrics.items()},
        "confidence": {name: estimate.model_dump() for name, estimate in calibrated.confidence_metrics.items()},
        "comparison": agreement.comparison.model_dump() if agreement.comparison else None,
        "human_ceiling": agreement.ceiling.model_dump() if agreement.ceiling else None,
        "fraction_of_ceiling": calibrated.fraction_of_ceiling.model_dump() if calibrated.fraction_of_ceiling else None,
        "group_share": _group_share(report),
    }


def _group_share(report: CalibrationReport) -> dict[str, float] | None:
    """The mean over test groups of the share of each group's answered rows the calibrated
    judge got right, with its interval: what ``judgecal monitor`` tracks, so its level."""
    from judgecal.stats.sequential import group_share_estimate

    record = report.record
    if record is None or "calibrated" not in record.judges:
        return None
    verdicts = record.judges["calibrated"].verdicts
    answered = [i for i, v in enumerate(verdicts) if v is not None]
    correct = [verdicts[i] == record.human[i] for i in answered]
    groups = [record.groups[i] for i in answered]
    config = report.config.report
    return group_share_estimate(correct, groups, n_resamples=config.n_resamples, seed=config.seed).model_dump()


def register(report: CalibrationReport, prepared: Prepared, tracked: TrackedRun, name: str) -> RegistryDecision:
    """A new version of the registered model ``name``; the champion moves only if it is
    beaten on the gate rows (:mod:`judgecal.export.registry`)."""
    from judgecal.report import summary

    assert tracked.model_uri is not None, "only an exported model is registered"
    config = report.config
    agreement = report.agreement
    words = agreement.comparison.statement if agreement and agreement.comparison else ""
    if report.band is not None:
        words = " ".join(part for part in (words, report.band.guarantee.statement) if part)
    title = summary.title(agreement, config.judge.name) if agreement else config.judge.name
    return register_judge(
        tracked.run_id,
        tracked.model_uri,
        name,
        report.gate,
        gate_rows=list(prepared.gate_rows),
        summary=f"{title}. {words}",
        n_resamples=config.report.n_resamples,
        seed=config.report.seed,
        workspace=prepared.workspace,
    )
