"""Throughput and memory of the pretraining data pipeline.

    python benchmarks/bench_data.py [--size-mb 1024] [--workers 1,2]

1. build_shards on a synthetic text file of --size-mb MB (embedded corpus lines, shuffled and repeated:
   realistic English, one huge document, so it also exercises chunking). Each run is a fresh process, so
   peak RSS (getrusage) is that run's alone: the main process and its largest worker. Flat memory as the
   file grows is the point: a 1 GB input must not need 1 GB of RAM.
2. Encoding speed of the two tokenizer engines (HF `tokenizers` vs the tiktoken encoding built from the
   same ranks) on the embedded corpus.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import time
from pathlib import Path

from pocketchat.data.corpus import embedded_documents
from pocketchat.data.shards import build_shards
from pocketchat.tokenizer import Tokenizer

WORK = Path("/tmp/pocketchat-bench-data")


def make_corpus(size_mb: int) -> Path:
    """A .txt file of at least size_mb MB of shuffled corpus lines (reused if already there)."""
    path = WORK / f"corpus_{size_mb}mb.txt"
    target = size_mb * 1_000_000
    if path.exists() and path.stat().st_size >= target:
        return path
    lines = [line for doc in embedded_documents("train") for line in doc.text.splitlines(keepends=True)]
    rng = random.Random(0)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            block = "".join(lines[:200_000])
            f.write(block)
            written += len(block.encode("utf-8"))
    return path


def bench_encoders(tok: Tokenizer) -> None:
    docs = [doc.text for doc in embedded_documents("train")]
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    plain = Tokenizer.load(WORK / "tokenizer")
    plain._tiktoken = None  # force the HF engine for comparison
    runs = [("tiktoken, encode() one doc at a time", lambda: [tok.encode(d) for d in docs]),
            ("tiktoken, encode_batch() (threads)", lambda: tok.encode_batch(docs)),
            ("HF tokenizers, encode() one doc at a time", lambda: [plain.encode(d) for d in docs]),
            ("HF tokenizers, encode_batch() (threads)", lambda: plain.encode_batch(docs))]
    print(f"\nencoding {mb:.1f} MB (embedded train split, {len(docs)} documents), vocab {tok.vocab_size}")
    print(f"| {'engine':<42} | {'MB/s':>6} |\n|{'-' * 44}|{'-' * 8}|")
    reference = None
    for name, fn in runs:
        t0 = time.perf_counter()
        ids = fn()
        seconds = time.perf_counter() - t0
        reference = reference or ids
        assert ids == reference, f"{name} gave different ids"
        print(f"| {name:<42} | {mb / seconds:6.2f} |")


def _build(path: str, workers: int, queue) -> None:
    t0 = time.perf_counter()
    meta = build_shards(path, WORK / "tokenizer", WORK / f"shards_w{workers}", workers=workers,
                        val_fraction=0.0, progress=False)
    seconds = time.perf_counter() - t0
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    queue.put((seconds, self_mb, child_mb, meta["train"]["tokens"]))


def _prepare(size_mb: int) -> None:
    Tokenizer.train((d.text for d in embedded_documents("train")), vocab_size=4096).save(WORK / "tokenizer")
    make_corpus(size_mb)


def _in_fresh_process(target, *args) -> None:
    """Run target(*args) in a spawned process. The parent stays small: a child's peak RSS starts from
    its parent's size at the fork, so heavy work here would inflate every measurement after it."""
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {proc.exitcode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the synthetic corpus")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    _in_fresh_process(_prepare, args.size_mb)

    path = make_corpus(args.size_mb)
    mb = path.stat().st_size / 1e6
    print(f"build_shards on {path} ({mb:.0f} MB), vocab 4096; parent process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB at spawn time (a floor for RSS)")
    print("| workers | seconds |  MB/s | peak RSS main (MB) | peak RSS worker (MB) | tokens        |")
    print("|---------|---------|-------|--------------------|----------------------|---------------|")
    for workers in (int(w) for w in args.workers.split(",")):
        queue = mp.get_context("spawn").Queue()
        _in_fresh_process(_build, str(path), workers, queue)
        seconds, self_mb, child_mb, tokens = queue.get()
        worker = f"{child_mb:20.0f}" if workers > 1 else f"{'-':>20}"
        print(f"| {workers:7d} | {seconds:7.1f} | {mb / seconds:5.2f} | {self_mb:18.0f} | {worker} | {tokens:13,d} |")

    bench_encoders(Tokenizer.load(WORK / "tokenizer"))


if __name__ == "__main__":
    main()
