"""Shared fixtures. Tests that need ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JUDGECAL_SHARED_DATA", REPO.parent / "shared" / "data"))
RELEVANCE_DEV = SHARED_DATA / "relevance" / "dev.jsonl"
PANDALM_DEV = SHARED_DATA / "pairwise" / "pandalm_dev.jsonl"


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (shared benchmark data)")


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own workspace: MLflow store and run artifacts stay out of the repo."""
    root = tmp_path_factory.mktemp("workspace")
    (root / "mlruns").mkdir()
    monkeypatch.setenv("JUDGECAL_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture(scope="session")
def dspy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from judgecal.lm import configure_dspy_cache

    folder = tmp_path_factory.mktemp("dspy-cache")
    configure_dspy_cache(folder)
    return folder


@pytest.fixture(scope="session")
def embedded_lm(dspy_cache: Path):
    """The embedded SmolLM2 judge model, loaded once for the session."""
    from judgecal.lm import LMConfig, build_lm

    return build_lm(LMConfig(max_tokens=48))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def relevance_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grouped slice of the shared relevance data: a few rows of each class per prompt."""
    if not RELEVANCE_DEV.exists():
        pytest.skip(f"{RELEVANCE_DEV} is absent (shared benchmark data)")
    by_group: dict[str, list[dict]] = defaultdict(list)
    with RELEVANCE_DEV.open() as handle:
        for line in handle:
            row = json.loads(line)
            by_group[row["group"]].append(row)
    rows: list[dict] = []
    for group in sorted(by_group)[:8]:
        members = by_group[group]
        rows += [r for r in members if r["label"]][:2] + [r for r in members if not r["label"]][:3]
    return write_jsonl(tmp_path_factory.mktemp("slice") / "relevance_slice.jsonl", rows)
