"""Benchmark of sentence embedding: what one forward pass per text costs, and why.

    .venv/bin/python experiments/bench_embeddings.py [--data FILE] [--max-texts N]

The texts are the ones an embedding verifier encodes for the relevance rows of ``--data``
(``../shared/data/relevance/dev.jsonl`` when it is there, otherwise the demo's
illustrative rows): each distinct prompt and attribute, and each of their sentences.
They are encoded by the pinned all-MiniLM-L6-v2, once per batch size, in the same process
after one warm-up pass, and once more in batches of texts of equal token length (no
padding). Printed per batch size: seconds, texts per second, and how many vectors differ
from the text's vector encoded alone (padding and the batch's shape move the last
digits), with the largest difference. ``judgecal`` encodes one text
per forward pass (batch size 1), so a text's vector never depends on its batch mates.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from judgecal.judges.embeddings import embeddings_available, load_minilm
from judgecal.judges.features import sentences

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"
DEMO = REPO / "experiments" / "data" / "relevance_demo.jsonl"


def verifier_texts(path: Path) -> list[str]:
    """Distinct prompts and attributes, then their sentences, in file order."""
    texts: dict[str, None] = {}
    with path.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    for row in rows:
        texts.setdefault(row["prompt"])
        texts.setdefault(row["attribute"])
    for row in rows:
        for field in ("prompt", "attribute"):
            for sentence in sentences(row[field]):
                texts.setdefault(sentence)
    return list(texts)


def equal_length_batches(encoder: Any, texts: list[str]) -> np.ndarray:
    """Each batch holds texts of one token length, so nothing is padded."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        by_length[len(encoder.tokenizer(text, truncation=True, max_length=encoder.max_seq_length)["input_ids"])].append(
            i
        )
    out = np.zeros((len(texts), encoder.get_embedding_dimension()), dtype=np.float32)
    for batch in by_length.values():
        out[batch] = encoder.encode(
            [texts[i] for i in batch], batch_size=len(batch), normalize_embeddings=True, show_progress_bar=False
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else DEMO)
    parser.add_argument("--max-texts", type=int, default=None)
    parser.add_argument("--batch-sizes", default="1,8,64")
    args = parser.parse_args()
    console = Console()
    if not embeddings_available():
        console.print('needs the embeddings extra: pip install -e ".[embeddings]" in the clone')
        return 2
    texts = verifier_texts(args.data)[: args.max_texts]
    encoder = load_minilm()
    encoder.encode(texts[:64], batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    vectors: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    for size in sorted(set([1, *sizes])):
        started = time.perf_counter()
        vectors[size] = np.asarray(
            encoder.encode(texts, batch_size=size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )
        seconds[size] = time.perf_counter() - started
    started = time.perf_counter()
    vectors[0] = equal_length_batches(encoder, texts)
    seconds[0] = time.perf_counter() - started
    table = Table(title=f"{len(texts)} texts from {args.data}, all-MiniLM-L6-v2 on CPU", title_justify="left")
    for column in ("batch size", "seconds", "texts/s", "vectors unlike the text's alone", "largest |Δ|"):
        table.add_column(column, justify="right")
    for size in [*sorted(size for size in seconds if size), 0]:
        differences = np.abs(vectors[size] - vectors[1]).max(axis=1)
        table.add_row(
            str(size) if size else "equal-length batches",
            f"{seconds[size]:.1f}",
            f"{len(texts) / seconds[size]:.0f}",
            f"{int((differences > 0).sum())} of {len(texts)}",
            f"{differences.max():.1e}",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
