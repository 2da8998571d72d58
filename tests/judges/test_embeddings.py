import numpy as np
import pytest

from judgecal.judges import embeddings

pytestmark = pytest.mark.skipif(
    not embeddings.embeddings_available(), reason='needs the embeddings extra: pip install -e ".[embeddings]"'
)


def test_a_texts_embedding_does_not_depend_on_the_texts_encoded_with_it(monkeypatch):
    """Batching pads every text to the longest one beside it, which moves the last digits
    of its vector: enough to move a fitted verifier's cut and change a verdict."""
    monkeypatch.setattr(embeddings, "_embeddings", {})
    monkeypatch.setattr(embeddings, "_disk", {})
    text = "The user enjoys hiking in the mountains."
    alone = embeddings.encode([text])[0]
    embeddings._embeddings.clear()
    long_text = "The user is writing a long report about sustainable farming in dry regions. " * 6
    beside_a_long_text = embeddings.encode([long_text, text])[1]
    assert np.array_equal(alone, beside_a_long_text)
