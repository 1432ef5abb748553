"""Building an index from the user's documents: read, chunk, embed, store.

Documents: a folder of .txt / .md files (searched recursively, one document per file), one such file, or
a .jsonl file with one document per line in a string field (`text_field`); a JSON line's other fields
ride along as the metadata of each of its chunks (e.g. an "id" or "title"), with `source` saying where
the chunk came from: the file's path in the folder, or `file.jsonl:LINE`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pocketchat.errors import UserError
from pocketchat.rag.chunk import chunk_text
from pocketchat.rag.embed import Embedder
from pocketchat.rag.store import FlatStore

TEXT_SUFFIXES = (".txt", ".md")


def _read_text(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not valid UTF-8 near byte {e.start}") from None


def _read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    for lineno, line in enumerate(_read_text(path, str(path)).splitlines(), 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UserError(f"{where}: expected a JSON object with a string field {text_field!r}")
        meta = {k: v for k, v in record.items() if k != text_field}
        yield record[text_field], {**meta, "source": f"{path.name}:{lineno}"}


def read_documents(source: str | Path, text_field: str = "text") -> Iterator[tuple[str, dict]]:
    """(text, metadata) of every document in `source` (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{source}: folder has no .txt or .md files")
        for path in files:
            yield _read_text(path, str(path)), {"source": path.relative_to(source).as_posix()}
    elif not source.is_file():
        raise UserError(f"{source}: no such file or folder")
    elif source.suffix in TEXT_SUFFIXES:
        yield _read_text(source, str(source)), {"source": source.name}
    elif source.suffix == ".jsonl":
        yield from _read_jsonl(source, text_field)
    else:
        raise UserError(f"{source}: expected a folder of .txt/.md files, a .txt/.md file or a .jsonl file")


def build_index(source: str | Path, embedder: Embedder, chunk_tokens: int = 128, overlap: int = 24,
                text_field: str = "text") -> FlatStore:
    """A FlatStore of every chunk of `source`, sized in the embedder's tokens; chunk metadata is the
    document's plus `chunk` (its position in the document)."""
    texts, metadata = [], []
    for text, meta in read_documents(source, text_field):
        for i, chunk in enumerate(chunk_text(text, embedder.tokenize, chunk_tokens, overlap)):
            texts.append(chunk)
            metadata.append({**meta, "chunk": i})
    if not texts:
        raise UserError(f"{source}: no text to index")
    store = FlatStore(embedder, {"source": str(source), "chunk_tokens": chunk_tokens, "overlap": overlap})
    store.add(texts, metadata)
    return store
