"""The MLflow model registry gate: a new judge version becomes ``champion`` only when it
beats the current champion on the same test rows, significantly.

Every calibration registered under a name becomes a new version. The ``champion`` alias
moves to it only when the paired group-bootstrap interval of Δκ (new − champion, on the
champion's test rows) lies above zero. Runs on different test rows cannot be compared, so
the alias stays where it is and the reason says so. The decision and its reason are
recorded on the run and on the model version.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from judgecal.evaluation import EvaluationRecord, compare_judges, read_record
from judgecal.uncertainty import DEFAULT_RESAMPLES, GroupIndex

CHAMPION = "champion"


class RegistryDecision(BaseModel):
    name: str
    version: str
    moved: bool
    champion_version: str | None
    reason: str


def register_judge(
    run_id: str, name: str, record: EvaluationRecord, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> RegistryDecision:
    """Register the run's ``judge`` model under ``name`` and move ``champion`` if earned."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    registered = mlflow.register_model(f"runs:/{run_id}/judge", name)
    version = str(registered.version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        decision = RegistryDecision(
            name=name,
            version=version,
            moved=True,
            champion_version=None,
            reason="no champion yet: the first registered version becomes champion",
        )
    else:
        decision = _compare(client, name, version, champion, record, n_resamples=n_resamples, seed=seed)
    if decision.moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "judgecal.champion_decision", decision.reason[:5000])
    client.set_tag(run_id, "judgecal.registry", f"{name} v{version}")
    client.set_tag(run_id, "judgecal.registry.champion", "moved" if decision.moved else "kept")
    client.set_tag(run_id, "judgecal.registry.reason", decision.reason[:5000])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "registry_decision.json"
        path.write_text(decision.model_dump_json(indent=2))
        client.log_artifact(run_id, str(path))
    return decision


def _compare(
    client: Any, name: str, version: str, champion: Any, record: EvaluationRecord, *, n_resamples: int, seed: int
) -> RegistryDecision:
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="evaluation.json")
        previous = read_record(Path(local))
    except Exception as error:
        return RegistryDecision(
            name=name,
            version=version,
            moved=False,
            champion_version=str(champion.version),
            reason=f"champion v{champion.version} has no readable evaluation record ({error}); kept it",
        )
    if previous.split_fingerprint != record.split_fingerprint or previous.ids != record.ids:
        return RegistryDecision(
            name=name,
            version=version,
            moved=False,
            champion_version=str(champion.version),
            reason=f"v{version} was tested on other rows than champion v{champion.version} "
            f"(split {(record.split_fingerprint or '?')[:12]} vs {(previous.split_fingerprint or '?')[:12]}); "
            "a fair comparison is impossible, so the champion stays",
        )
    paired = record.model_copy(
        update={"judges": {"champion": previous.judges["calibrated"], "candidate": record.judges["calibrated"]}}
    )
    metric = "weighted_kappa" if paired.ordinal else "kappa"
    comparison = compare_judges(
        paired,
        "champion",
        "candidate",
        paired.space,
        GroupIndex.from_groups(paired.groups),
        metric,
        n_resamples=n_resamples,
        seed=seed,
    )
    delta = comparison.deltas[metric]
    moved = comparison.outcome == "improved"
    verdict = "moved to" if moved else "stays with"
    reason = (
        f"champion {verdict} v{version if moved else champion.version}: Δ{metric} of v{version} over "
        f"v{champion.version} = {delta.value:+.3f}, 95% group-bootstrap interval [{delta.low:+.3f}, "
        f"{delta.high:+.3f}] on the same {len(record.ids)} test rows"
        + ("" if moved else "; an improvement needs the interval above 0")
    )
    return RegistryDecision(
        name=name, version=version, moved=moved, champion_version=str(champion.version), reason=reason
    )


def decision_json(decision: RegistryDecision) -> str:
    return json.dumps(decision.model_dump(), indent=2)
