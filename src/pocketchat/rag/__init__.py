"""Retrieval for RAG: chunk documents, embed them, store and search them.

    store = build_index("docs/", load_embedder("minilm"), chunk_tokens=128, overlap=24)
    store.save("docs.idx")
    hits = retriever(FlatStore.load("docs.idx"), "hybrid").search("Who is the mayor of Brenth?", k=5)
    for text, score in hits: ...          # a Hit also carries .metadata

`pocketchat index DOCS --out INDEX` does the first two lines; `pocketchat.strategies.rag` answers with it.
"""

from pocketchat.rag.bm25 import BM25, MODES, HybridRetriever, retriever
from pocketchat.rag.chunk import chunk_text
from pocketchat.rag.embed import Embedder, MiniLMEmbedder, ModelEmbedder, load_embedder
from pocketchat.rag.index import build_index, read_documents
from pocketchat.rag.store import FlatStore, Hit, Retriever, VectorStore

__all__ = ["BM25", "MODES", "Embedder", "FlatStore", "Hit", "HybridRetriever", "MiniLMEmbedder", "ModelEmbedder",
           "Retriever", "VectorStore", "build_index", "chunk_text", "load_embedder", "read_documents", "retriever"]
