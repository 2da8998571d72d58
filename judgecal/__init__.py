"""judgecal: calibrate LLM-as-judge models against human labels.

Public entry points are imported lazily so that ``import judgecal`` stays cheap.
"""

from __future__ import annotations

import os
from typing import Any

# LiteLLM fetches its model cost map from the network at import unless told not to; on
# an offline machine that leaves a retrying thread behind (and hangs `mlflow ui`).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# DSPy reads its cache folder at import: keep LM responses in the project, not the home folder.
if "DSPY_CACHEDIR" not in os.environ:
    from judgecal.paths import dspy_cache_dir

    os.environ["DSPY_CACHEDIR"] = str(dspy_cache_dir())
# MLflow draws a progress bar for every small artifact it moves; judgecal draws its own.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"

_EXPORTS = {
    "load_judge": "judgecal.export",
    "JudgeBundle": "judgecal.export",
    "Judge": "judgecal.judges",
    "JudgeProgram": "judgecal.judges",
    "Verdict": "judgecal.judges",
    "LMConfig": "judgecal.lm",
    "build_lm": "judgecal.lm",
    "load_rows": "judgecal.data",
    "split_by_group": "judgecal.data",
    "DataError": "judgecal.data",
    "resolve_task": "judgecal.tasks",
    "load_config": "judgecal.experiment",
    "run_calibration": "judgecal.experiment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'judgecal' has no attribute {name!r}")
