"""The vector store: chunks, their embeddings and metadata, searched by cosine similarity, saved as one file.

`VectorStore` is the interface the rest of pocketchat uses (add / search / save / load), so a server store
(pgvector, Qdrant) can stand in for `FlatStore`, the embedded default: an exact search, one matrix-vector
product per query, which is fast enough up to a few hundred thousand chunks and needs no index tuning.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from pocketchat.errors import UserError
from pocketchat.files import atomic_write
from pocketchat.rag.embed import Embedder, load_embedder

FORMAT = "pocketchat-index"
VERSION = 1


@dataclass(frozen=True)
class Hit:
    """A retrieved passage. Unpacks as a (text, score) pair, the shape every Retriever returns."""

    text: str
    score: float
    metadata: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.text, self.score))


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[Hit]:
        """The k best passages for `query`, best first."""


class VectorStore(Retriever, Protocol):
    def add(self, texts: list[str], metadata: list[dict] | None = None) -> None: ...

    def save(self, path: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorStore: ...


class FlatStore:
    """Exact cosine search over every chunk (see the module docstring)."""

    def __init__(self, embedder: Embedder, settings: dict | None = None):
        self.embedder = embedder
        self.settings = settings or {}  # how the chunks were made (sizes, sources), kept for the record
        self.texts: list[str] = []
        self.metadata: list[dict] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: list[str], metadata: list[dict] | None = None) -> None:
        metadata = metadata if metadata is not None else [{} for _ in texts]
        if len(metadata) != len(texts):
            raise UserError(f"add: {len(texts)} texts but {len(metadata)} metadata records")
        if not texts:
            return
        vectors = self.embedder.embed(list(texts))
        self.vectors = vectors if not len(self) else np.concatenate([self.vectors, vectors])
        self.texts += texts
        self.metadata += [dict(m) for m in metadata]

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of `query` to every chunk, [len(self)]."""
        if not len(self):
            return np.zeros(0, dtype=np.float32)
        return self.vectors @ self.embedder.embed([query])[0]

    def search(self, query: str, k: int) -> list[Hit]:
        return self.hits(self.scores(query), k)

    def hits(self, scores: np.ndarray, k: int) -> list[Hit]:
        """The k chunks with the highest `scores` (one per chunk), best first; ties keep chunk order."""
        top = np.argsort(-scores, kind="stable")[:k]
        return [Hit(self.texts[i], float(scores[i]), self.metadata[i]) for i in top]

    def save(self, path: str | os.PathLike) -> None:
        """One .npz file (vectors + a JSON record of everything else), replaced atomically."""
        meta = {"format": FORMAT, "version": VERSION, "embedder": self.embedder.spec, "settings": self.settings,
                "texts": self.texts, "metadata": self.metadata}
        blob = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
                np.savez(f, vectors=self.vectors, meta=blob)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | os.PathLike, embedder: Embedder | None = None) -> FlatStore:
        """Open a saved index; its embedder is rebuilt from the stored spec unless one is given."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such index file (build one with `pocketchat index DOCS --out {path}`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                vectors, meta = data["vectors"], json.loads(data["meta"].tobytes().decode("utf-8"))
        except (ValueError, KeyError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not a pocketchat index ({e})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise UserError(f"{path}: not a version-{VERSION} pocketchat index")
        if len(meta["texts"]) != len(vectors):
            raise UserError(f"{path}: {len(meta['texts'])} chunks but {len(vectors)} vectors")
        if embedder is not None and embedder.spec != meta["embedder"]:
            raise UserError(f"{path} was embedded with {meta['embedder']!r}, not {embedder.spec!r}")
        store = cls(embedder or load_embedder(meta["embedder"]), meta["settings"])
        store.texts, store.metadata, store.vectors = meta["texts"], meta["metadata"], vectors
        return store
