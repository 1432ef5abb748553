"""Token shards: a corpus tokenized once into flat binary files that training reads by memory map.

Layout of a data folder:
    train_000.bin, train_001.bin, ...   uint16 token ids (uint32 if the vocabulary has more than 65,536),
    val_000.bin, ...                     no header, so `np.memmap(path, dtype)` reads one; every shard but a
                                         split's last holds exactly `shard_tokens` tokens
    meta.json                            written last; without it the folder is not a build. Keys:
                                         vocab_size, dtype, eot_id, shard_tokens, tokenizer {path, sha256},
                                         source, and per split ("train", "val"): tokens, bytes (UTF-8 bytes
                                         of the text, for bits per byte), documents, shards (file names)
Every document is preceded by <|endoftext|> (the tokenizer's eos id), so the model learns where
documents start and a window that crosses a boundary sees the separator.

Tokenization streams: documents are cut into ~1 MB chunks (at points that leave the tokens unchanged)
and encoded by a pool of worker processes with a bounded number of chunks in flight, so memory stays
flat whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pocketchat.data.corpus import SPLITS, VAL_FRACTION, Document, iter_split_documents, split_text
from pocketchat.errors import UserError
from pocketchat.tokenizer import Tokenizer

SHARD_TOKENS = 100_000_000  # 200 MB per uint16 shard
CHUNK_CHARS = 1 << 20  # unit of work for one worker process
_SHARD_NAME = re.compile(r"^(train|val)_\d{3,}\.bin$")
_TEMP_NAME = re.compile(r"^\.((train|val)_\d{3,}\.bin|meta\.json)\.tmp$")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


# -- tokenizing in worker processes ------------------------------------------------------------------------------

Chunk = tuple[str, list[tuple[str, bool]]]  # (split, [(text, starts a document), ...])


def _encode_chunk(tokenizer: Tokenizer, chunk: Chunk) -> tuple[str, np.ndarray, int, int]:
    """(split, token ids, UTF-8 bytes of the text, documents started) for one chunk."""
    split, pieces = chunk
    ids: list[int] = []
    n_bytes = n_docs = 0
    for text, starts_document in pieces:
        if starts_document:
            ids.append(tokenizer.eos_id)
            n_docs += 1
        ids.extend(tokenizer.encode(text))
        n_bytes += len(text.encode("utf-8"))
    return split, np.array(ids, dtype=token_dtype(tokenizer.vocab_size)), n_bytes, n_docs


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(chunk: Chunk) -> tuple[str, np.ndarray, int, int]:
    return _encode_chunk(_worker_tokenizer, chunk)


def _chunks(labelled_docs: Iterable[tuple[str, Document]]) -> Iterator[Chunk]:
    """Group documents, per split and in order, into chunks of at most CHUNK_CHARS characters; a longer
    document is cut into several."""
    pending: dict[str, list[tuple[str, bool]]] = {split: [] for split in SPLITS}
    size = dict.fromkeys(SPLITS, 0)
    for split, doc in labelled_docs:
        for i, piece in enumerate(split_text(doc.text, CHUNK_CHARS)):
            if size[split] + len(piece) > CHUNK_CHARS and pending[split]:
                yield split, pending[split]
                pending[split], size[split] = [], 0
            pending[split].append((piece, doc.part == 0 and i == 0))
            size[split] += len(piece)
    for split in SPLITS:
        if pending[split]:
            yield split, pending[split]


def _ordered_imap(pool, fn, items: Iterable, in_flight: int) -> Iterator:
    """Like pool.imap, but reads `items` only as results are consumed: Pool.imap would pull the whole
    corpus into its task queue up front."""
    pending = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# -- writing -----------------------------------------------------------------------------------------------------

class _ShardWriter:
    """Appends tokens to a split's shards under temporary names; `commit` gives them their real names."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.names: list[str] = []
        self.file = None
        self.room = 0  # tokens the open shard can still take

    def temp(self, name: str) -> Path:
        return self.out_dir / f".{name}.tmp"

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.room == 0:
                self.close()
                self.names.append(f"{self.split}_{len(self.names):03d}.bin")
                self.file = open(self.temp(self.names[-1]), "wb")
                self.room = self.shard_tokens
            head, tokens = tokens[:self.room], tokens[self.room:]
            self.file.write(head.tobytes())
            self.room -= len(head)

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

    def commit(self) -> None:
        for name in self.names:
            os.replace(self.temp(name), self.out_dir / name)

    def discard(self) -> None:
        self.close()
        for name in self.names:
            self.temp(name).unlink(missing_ok=True)


def _source_bytes(source) -> int | None:
    """Size of a plain-text source, for the progress bar's total (other formats' sizes aren't text bytes)."""
    path = Path(source)
    if str(source) != "embedded" and path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.txt") if p.is_file())
    if path.suffix == ".txt" and path.is_file():
        return path.stat().st_size
    return None


def build_shards(source, tokenizer: Tokenizer | str | os.PathLike, out_dir, *, workers: int = os.cpu_count() or 1,
                 val_fraction: float = VAL_FRACTION, text_field: str = "text",
                 shard_tokens: int = SHARD_TOKENS, progress: bool = True) -> dict:
    """Tokenize `source` (see pocketchat.data.corpus.iter_documents) into token shards in `out_dir` and
    return the meta.json contents. Shards are written under temporary names; an error or a kill before
    the end leaves an existing build in out_dir as it was, and a new build counts once meta.json is
    written, last."""
    tokenizer_path = None if isinstance(tokenizer, Tokenizer) else os.path.abspath(tokenizer)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    if shard_tokens < 1:
        raise UserError(f"shard_tokens must be positive, got {shard_tokens}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if _TEMP_NAME.match(path.name):
            path.unlink()  # left by a build that was killed
    writers = {split: _ShardWriter(out, split, shard_tokens) for split in SPLITS}
    totals = {split: {"tokens": 0, "bytes": 0, "documents": 0} for split in SPLITS}
    chunks = _chunks(iter_split_documents(source, text_field, val_fraction))
    bar = tqdm(total=_source_bytes(source), unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
    pool = Pool(workers, initializer=_init_worker, initargs=(tok,)) if workers > 1 else None
    try:
        results = (map(partial(_encode_chunk, tok), chunks) if pool is None
                   else _ordered_imap(pool, _encode_in_worker, chunks, in_flight=2 * workers))
        for split, tokens, n_bytes, n_docs in results:
            writers[split].write(tokens)
            totals[split]["tokens"] += len(tokens)
            totals[split]["bytes"] += n_bytes
            totals[split]["documents"] += n_docs
            bar.update(n_bytes)
        for writer in writers.values():
            writer.close()
        _check_splits(source, totals, val_fraction)
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    meta = {
        "format": "pocketchat-token-shards/1",
        "source": str(source),
        "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size).name,
        "eot_id": tok.eos_id,
        "shard_tokens": shard_tokens,
        "tokenizer": {"path": tokenizer_path, "sha256": tokenizer_sha256(tok)},
        **{split: {**totals[split], "shards": writers[split].names} for split in SPLITS},
    }
    # Commit: remove the old meta.json first, so a crash from here on leaves "not built", never a new
    # meta over old shards or the reverse.
    (out / "meta.json").unlink(missing_ok=True)
    for writer in writers.values():
        writer.commit()
    keep = {name for writer in writers.values() for name in writer.names}
    for path in out.iterdir():
        if _SHARD_NAME.match(path.name) and path.name not in keep:
            path.unlink()  # a shard of an older, larger build
    temp = out / ".meta.json.tmp"
    temp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, out / "meta.json")
    return meta


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """Fingerprint of a tokenizer's vocabulary and rules, to check that shards match a model."""
    return hashlib.sha256(tokenizer.hf.to_str().encode("utf-8")).hexdigest()


def _check_splits(source, totals: dict, val_fraction: float) -> None:
    if totals["train"]["documents"] == 0:
        raise UserError(f"{source}: no documents in the train split")
    if val_fraction > 0 and totals["val"]["documents"] == 0:
        raise UserError(f"{source}: none of its {totals['train']['documents']} documents fell in the val split "
                        f"(val_fraction={val_fraction}, chosen per document); give more documents "
                        "(e.g. a folder of .txt files or a .jsonl) or val_fraction=0")


# -- reading -----------------------------------------------------------------------------------------------------

class TokenArray:
    """One split's tokens as a single read-only 1-D sequence over its memory-mapped shards.

    `arr[a:b]` returns an int64 copy (what embedding lookups want), crossing shard boundaries as needed.
    """

    def __init__(self, shards: list[np.memmap], num_bytes: int):
        self._shards = shards
        self._starts = np.cumsum([0] + [len(s) for s in shards])  # token offset of each shard, then the end
        self.num_bytes = num_bytes  # UTF-8 bytes of the split's text
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("TokenArray slices must be contiguous (step 1)")
            return self._read(start, max(start, stop))
        index = int(key)  # an int or numpy integer
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"token index {key} out of range for {len(self)} tokens")
        return int(self._read(index, index + 1)[0])

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            shard_start = int(self._starts[i])
            take = min(stop, int(self._starts[i + 1])) - pos
            out[pos - start:pos - start + take] = self._shards[i][pos - shard_start:pos - shard_start + take]
            pos += take
            i += 1
        return out


def read_meta(data_dir) -> dict:
    """meta.json of a built data folder, with a clear error if there is none."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such data folder")
    path = folder / "meta.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a built token-shard folder (no meta.json); build it with build_shards")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: corrupt meta.json ({e.msg}); rebuild the folder") from e
    if (not isinstance(meta, dict) or meta.get("dtype") not in ("uint16", "uint32")
            or any(not isinstance(meta.get(s), dict) or not {"tokens", "bytes", "shards"} <= meta[s].keys()
                   for s in SPLITS)):
        raise UserError(f"{path}: corrupt meta.json (needs dtype, and tokens, bytes, shards for train and val); "
                        "rebuild the folder")
    return meta


def load_tokens(data_dir, split: str) -> TokenArray:
    """The tokens of `split` in a folder written by build_shards."""
    meta = read_meta(data_dir)
    folder = Path(data_dir)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    info = meta[split]
    if info["tokens"] == 0:
        raise UserError(f"{folder}: split {split!r} is empty")
    dtype = np.dtype(meta["dtype"])
    shards, total = [], 0
    for name in info["shards"]:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: shard listed in meta.json is missing; rebuild the folder")
        size = path.stat().st_size
        if size == 0 or size % dtype.itemsize:
            raise UserError(f"{path}: size {size} bytes is not a positive multiple of {dtype.itemsize} "
                            f"({dtype.name}); corrupt shard")
        total += size // dtype.itemsize
        shards.append(np.memmap(path, dtype=dtype, mode="r"))
    if total != info["tokens"]:
        raise UserError(f"{folder}: {split} shards hold {total} tokens but meta.json says {info['tokens']}; "
                        "rebuild the folder")
    return TokenArray(shards, info["bytes"])
