"""The MLflow model registry gate: a new judge version becomes ``champion`` only when it
beats the current champion on gate rows, significantly.

Every calibration registered under a name becomes a new version. The ``champion`` alias
moves to it only when the paired group-bootstrap interval of Δκ (new − champion) on the
**gate** rows lies above zero: rows neither version was fitted, selected or reported on
(``[split] gate``, or fresh rows from ``--gate-data``). Test rows are never used, so the
test metrics a version reports stay unbiased however often people register. When the
champion was gated on other rows, it judges the new gate rows now, unless it was fitted
or selected on some of them; then no fair comparison exists and the champion stays. The
decision, its reason and the gate rows it used are recorded on the run and the version.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from judgecal.artifacts import GATE_FILE, REGISTRY_DECISION_FILE, ROWS_FILE
from judgecal.data.rows import LabeledRow
from judgecal.report.agreement import compare_judges
from judgecal.report.records import EvaluationRecord, JudgeRecord, read_record
from judgecal.stats.uncertainty import DEFAULT_RESAMPLES, GroupIndex
from judgecal.workspace import Workspace

CHAMPION = "champion"


class RegistryDecision(BaseModel):
    name: str
    version: str
    moved: bool
    champion_version: str | None
    reason: str
    gate_rows: int = 0
    gate_fingerprint: str | None = None


def register_judge(
    run_id: str,
    model_uri: str,
    name: str,
    gate: EvaluationRecord | None,
    *,
    gate_rows: list[LabeledRow] | None = None,
    summary: str = "",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    workspace: Workspace | None = None,
) -> RegistryDecision:
    """Register the run's ``judge`` model under ``name`` and move ``champion`` if earned on
    the gate rows (``gate``: the new version's verdicts on them). A champion that must judge
    the gate rows now is loaded into ``workspace`` (the run's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    registered = mlflow.register_model(model_uri, name)
    version = str(registered.version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    fingerprint = gate.split_fingerprint if gate is not None else None
    if champion is None:
        decision = RegistryDecision(
            name=name,
            version=version,
            moved=True,
            champion_version=None,
            reason=f"no champion yet: v{version}, the first registered version, becomes champion",
        )
    elif gate is None:
        decision = RegistryDecision(
            name=name,
            version=version,
            moved=False,
            champion_version=str(champion.version),
            reason=f"v{version} has no gate rows to be compared with champion v{champion.version} on, so the "
            "champion stays; give [split] gate (a share of groups) or --gate-data (fresh labelled rows)",
        )
    else:
        decision = _compare(
            client, name, version, champion, gate, gate_rows, n_resamples=n_resamples, seed=seed, workspace=workspace
        )
    decision.gate_rows = len(gate.ids) if gate is not None else 0
    decision.gate_fingerprint = fingerprint
    if decision.moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    description = f"{summary}\n\nChampion decision: {decision.reason}" if summary else decision.reason
    client.update_model_version(name, version, description=description)
    client.set_model_version_tag(name, version, "judgecal.champion", "moved" if decision.moved else "kept")
    client.set_tag(run_id, "judgecal.registry", f"{name} v{version}")
    client.set_tag(run_id, "judgecal.registry.champion", "moved" if decision.moved else "kept")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / REGISTRY_DECISION_FILE
        path.write_text(decision.model_dump_json(indent=2))
        client.log_artifact(run_id, str(path))
    return decision


def _download_json(run_id: str, path: str) -> Any:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def _compare(
    client: Any,
    name: str,
    version: str,
    champion: Any,
    gate: EvaluationRecord,
    gate_rows: list[LabeledRow] | None,
    *,
    n_resamples: int,
    seed: int,
    workspace: Workspace | None,
) -> RegistryDecision:
    def stays(reason: str) -> RegistryDecision:
        return RegistryDecision(
            name=name, version=version, moved=False, champion_version=str(champion.version), reason=reason
        )

    try:
        previous: EvaluationRecord | None = read_record(_download_json(champion.run_id, GATE_FILE))
    except Exception:
        previous = None
    if previous is None or previous.ids != gate.ids:
        # The champion judges these gate rows now, if none of them shaped it.
        try:
            used = json.loads(_download_json(champion.run_id, ROWS_FILE).read_text())
        except Exception:
            return stays(
                f"champion v{champion.version} records neither gate verdicts on these rows nor which rows it was "
                "fitted on, so it cannot be compared fairly; the champion stays"
            )
        shaped = set(used.get("train", [])) | set(used.get("dev", []))
        overlap = shaped & set(gate.ids)
        if overlap:
            return stays(
                f"champion v{champion.version} was fitted or selected on {len(overlap)} of these gate rows "
                f"(e.g. {sorted(overlap)[:3]}); a fair comparison is impossible, so the champion stays"
            )
        if gate_rows is None:
            return stays(f"champion v{champion.version} was gated on other rows; the champion stays")
        previous = _judge_gate_with(champion, name, gate, gate_rows, workspace)
    paired = gate.model_copy(
        update={"judges": {"champion": previous.judges["calibrated"], "candidate": gate.judges["calibrated"]}}
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
        f"{delta.high:+.3f}] on {len(gate.ids)} gate rows in {len(set(gate.groups))} groups that neither "
        "version was fitted, selected or reported on" + ("" if moved else "; an improvement needs the interval above 0")
    )
    return RegistryDecision(
        name=name, version=version, moved=moved, champion_version=str(champion.version), reason=reason
    )


def _judge_gate_with(
    champion: Any, name: str, gate: EvaluationRecord, rows: list[LabeledRow], workspace: Workspace | None
) -> EvaluationRecord:
    from judgecal.export.flavor import load_judge

    judge = load_judge(f"models:/{name}/{champion.version}", workspace=workspace)
    verdicts = judge.predict(rows)
    return gate.model_copy(update={"judges": {"calibrated": JudgeRecord(verdicts=[v.label for v in verdicts])}})
