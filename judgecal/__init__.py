"""judgecal: calibrate LLM-as-judge models against human labels.

The package is laid out as the pipeline (see ARCHITECTURE.md): ``data`` → ``tasks`` →
``backends`` → ``judges`` → ``calibrate`` → ``report`` → ``export`` → ``pipeline`` →
``cli``, with ``stats`` beside them (it imports only ``data``; ``judges``, ``calibrate``
and ``report`` use it). Public entry points are imported lazily, so ``import judgecal``
loads nothing heavy and changes nothing about the process.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_judge": "judgecal.export.flavor",
    "save_model": "judgecal.export.flavor",
    "log_model": "judgecal.export.flavor",
    "load_model": "judgecal.export.flavor",
    "CalibratedJudge": "judgecal.export.adapters",
    "JudgeBundle": "judgecal.export.bundle",
    "Judge": "judgecal.judges.program",
    "JudgeProgram": "judgecal.judges.program",
    "Verdict": "judgecal.judges.verdict",
    "LMConfig": "judgecal.backends.settings",
    "build_lm": "judgecal.backends.models",
    "load_rows": "judgecal.data.rows",
    "split_by_group": "judgecal.data.split",
    "DataError": "judgecal.data.rows",
    "resolve_task": "judgecal.tasks.registry",
    "load_config": "judgecal.pipeline.config",
    "run_calibration": "judgecal.pipeline.calibration",
    "run_search": "judgecal.pipeline.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'judgecal' has no attribute {name!r}")
