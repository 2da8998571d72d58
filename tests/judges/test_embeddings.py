import numpy as np
import pytest

from judgecal.judges import embeddings
from judgecal.judges.embeddings import SentenceEncoder
from judgecal.workspace import LoadedModels

pytestmark = pytest.mark.skipif(
    not embeddings.embeddings_available(), reason='needs the embeddings extra: pip install -e ".[embeddings]"'
)


def test_a_texts_embedding_does_not_depend_on_the_texts_encoded_with_it(loaded_models):
    """Batching pads every text to the longest one beside it, which moves the last digits
    of its vector: enough to move a fitted verifier's cut and change a verdict."""
    text = "The user enjoys hiking in the mountains."
    alone = SentenceEncoder(loaded_models).encode([text])[0]
    fresh = LoadedModels()  # no vector of the first encoding to serve
    long_text = "The user is writing a long report about sustainable farming in dry regions. " * 6
    beside_a_long_text = SentenceEncoder(fresh).encode([long_text, text])[1]
    assert np.array_equal(alone, beside_a_long_text)


def test_an_encoder_keeps_its_vectors_in_its_models_and_on_its_disk(tmp_path, loaded_models):
    """Encoders that share loaded models share the model and the vectors it made; with a
    disk cache, a new process (new models) reads the vectors back without the model."""
    import diskcache

    texts = ["A first text about gardens.", "A second one, about bicycles."]
    disk = diskcache.Cache(str(tmp_path / "embeddings"))
    first = SentenceEncoder(loaded_models, disk).encode(texts)
    again = SentenceEncoder(loaded_models).encode(texts)
    assert np.array_equal(first, again)
    later = LoadedModels()
    assert np.array_equal(SentenceEncoder(later, disk).encode(texts), first)
    assert len(later) == 1  # the vectors' memo: the model itself was never loaded


def test_encoding_changes_no_environment_variable(monkeypatch, loaded_models):
    """The encoder is told to read only its own files (local_files_only), rather than
    switching the Hugging Face libraries offline through os.environ while threads run."""
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    before = dict(os.environ)
    SentenceEncoder(LoadedModels()).encode(["Any text at all."])
    assert dict(os.environ) == before
