"""BM25 keyword scores, and hybrid retrieval: dense and BM25 rankings fused by reciprocal rank.

Embedders blur rare exact strings (a made-up name, a product code) that keyword search matches
exactly, while keyword search misses paraphrases; fusing their rankings is robust without tuning a
weight between two incomparable score scales (Cormack et al., 2009: score = sum of 1 / (60 + rank)).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np

from pocketchat.errors import UserError
from pocketchat.rag.store import FlatStore, Hit

MODES = ("dense", "bm25", "hybrid")
RRF_K = 60  # the fusion constant: damps the influence of top ranks from either list
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25:
    """Okapi BM25 over a fixed list of texts, as an inverted index: term -> (text indices, term counts)."""

    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75):
        self.size = len(texts)
        lengths = np.array([len(words(t)) for t in texts], dtype=np.float32)
        norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if self.size else 1.0, 1.0))
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, text in enumerate(texts):
            for term, tf in Counter(words(text)).items():
                postings[term].append((i, tf))
        self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, plist in postings.items():
            ids = np.array([i for i, _ in plist])
            tf = np.array([c for _, c in plist], dtype=np.float32)
            idf = math.log(1 + (self.size - len(ids) + 0.5) / (len(ids) + 0.5))
            self.index[term] = (ids, idf * tf * (k1 + 1) / (tf + norm[ids]))

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.size, dtype=np.float32)
        for term in set(words(query)):
            if term in self.index:
                ids, weights = self.index[term]
                out[ids] += weights
        return out


class HybridRetriever:
    """Searches a FlatStore's chunks by BM25 alone ("bm25") or fused with its dense ranking ("hybrid")."""

    def __init__(self, store: FlatStore, mode: str = "hybrid", depth: int = 100):
        if mode not in ("bm25", "hybrid"):
            raise UserError(f"HybridRetriever mode must be bm25 or hybrid, got {mode!r}")
        self.store, self.mode, self.depth = store, mode, depth
        self.bm25 = BM25(store.texts)

    def search(self, query: str, k: int) -> list[Hit]:
        lexical = self.bm25.scores(query)
        if self.mode == "bm25":
            return [h for h in self.store.hits(lexical, k) if h.score > 0]  # no shared word: not a match
        fused = np.zeros(len(self.store), dtype=np.float32)
        for scores, keep in ((self.store.scores(query), None), (lexical, lexical > 0)):
            top = np.argsort(-scores, kind="stable")[: self.depth]
            if keep is not None:
                top = top[keep[top]]
            fused[top] += 1.0 / (RRF_K + 1 + np.arange(len(top)))
        return self.store.hits(fused, k)


def retriever(store: FlatStore, mode: str = "hybrid"):
    """The store searched by `mode`: dense (embeddings), bm25 (keywords) or hybrid (both, fused)."""
    if mode not in MODES:
        raise UserError(f"unknown retrieval mode {mode!r}: use {', '.join(MODES)}")
    return store if mode == "dense" else HybridRetriever(store, mode)
