"""Constrained output: per-token mask overhead, and JSON validity with vs without the constraint.

Overhead: a fresh processor replays a valid output token by token (each call = advance the parser one
token, compute the mask, turn it into a bool tensor: all the work it adds to a decode step; the first
mask of a request is the costliest), at our vocabulary
size (a 4,096-token tokenizer trained on the embedded corpus) and SmolLM2's 49,152 (when
`pocketchat.gguf_import` can load it). Each replay is one run; the table gives the median over `--repeats`
runs and, in brackets, their interquartile range (the spread a busy machine adds). Validity: with
`--model DIR` (e.g. the embedded pipeline's SFT model), JSON-answer prompts of the test split, whose
sentences the SFT mixture (train split) never holds, each with a schema derived from its reference answer,
sampled at temperature 0.7 with and without the schema.
Usage:
    python benchmarks/bench_constrain.py [--model DIR] [--n 50] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from pocketchat.chat_format import render_prompt
from pocketchat.data.corpus import embedded_documents
from pocketchat.engine.constrain import choice_processor, json_schema_processor, regex_processor
from pocketchat.errors import UserError
from pocketchat.tokenizer import Tokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "address"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                         "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}},
                         "address": {"type": "object", "required": ["city", "zip"],
                                     "properties": {"city": {"type": "string"},
                                                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}
VALUE = {"name": "Drailmoth Skeavin", "age": 42, "tags": ["red", "blue"],
         "address": {"city": "Quourath upon the river Brenth", "zip": "12345"}}
DATE = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
CHOICES = ["positive", "negative", "neutral", "mixed feelings"]


def our_tokenizer() -> Tokenizer:
    texts = [d.text for d in islice(embedded_documents("train"), 12)]
    return Tokenizer.train(texts, vocab_size=4096)


def smollm_tokenizer(root: Path) -> Tokenizer | None:
    try:
        from pocketchat.gguf_import import import_gguf, smollm2_gguf

        return Tokenizer.load(import_gguf(smollm2_gguf(), root / "smollm2"))
    except (ImportError, UserError) as e:
        print(f"note: SmolLM2 tokenizer skipped: {e}")
        return None


def mask_cost(tokenizer: Tokenizer, make, text: str, repeats: int) -> list[list[float]]:
    """µs of each step of a fresh processor following `text` to its end of turn, one list per run."""
    ids = tokenizer.encode(text)
    logits = torch.zeros(tokenizer.vocab_size)
    runs = []
    for _ in range(repeats):
        processor = make()
        steps = []
        for i in range(len(ids) + 1):
            prefix = ids[:i]
            start = time.perf_counter()
            allowed = processor(prefix, logits)
            steps.append((time.perf_counter() - start) * 1e6)
            if i < len(ids) and not allowed[ids[i]]:
                raise AssertionError(f"{text!r} leaves the grammar at token {i}")
        runs.append(steps)
    return runs


def median_iqr(values: list[float]) -> str:
    """ "22.1 (21.5–23.0)": the median and the interquartile range."""
    q1, q2, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return f"{q2:.1f} ({q1:.1f}–{q3:.1f})"


def overhead_rows(tokenizer: Tokenizer, name: str, repeats: int) -> list[tuple]:
    cases = [("JSON schema", lambda: json_schema_processor(tokenizer, SCHEMA), json.dumps(VALUE)),
             ("regex (date)", lambda: regex_processor(tokenizer, DATE), "2024-06-30"),
             ("choice (4)", lambda: choice_processor(tokenizer, CHOICES), "mixed feelings")]
    rows = []
    for what, make, text in cases:
        start = time.perf_counter()
        make()
        build_ms = (time.perf_counter() - start) * 1e3
        runs = mask_cost(tokenizer, make, text, repeats)
        rows.append((name, tokenizer.vocab_size, what, len(runs[0]), median_iqr([sum(r) / len(r) for r in runs]),
                     median_iqr([r[0] for r in runs]), f"{build_ms:.1f}"))
    return rows


def schema_of(value) -> dict:
    """The schema a reference answer implies: its keys required, each value's JSON type."""
    if isinstance(value, dict):
        return {"type": "object", "additionalProperties": False, "required": list(value),
                "properties": {k: schema_of(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"type": "array", "items": schema_of(value[0])}
    return {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[type(value)]}


def validity(model_dir: str, n: int) -> list[tuple]:
    import jsonschema

    from pocketchat.cli import load_engine
    from pocketchat.data.sft_mixture import json_answer_conversations
    from pocketchat.engine import SamplingParams

    engine = load_engine(model_dir, "cpu")
    conversations = json_answer_conversations(n, random.Random("bench_constrain"), split="test")
    rows = []
    for label, constrained in (("unconstrained", False), ("JSON schema", True)):
        valid = exact = tokens = 0
        start = time.perf_counter()
        for i, conv in enumerate(conversations):
            reference = json.loads(conv[1]["content"])
            schema = schema_of(reference)
            processor = json_schema_processor(engine.tokenizer, schema) if constrained else None
            out = engine.generate([render_prompt(engine.tokenizer, conv[:1])], SamplingParams(
                temperature=0.7, max_tokens=96, seed=i, logits_processor=processor))[0]
            tokens += len(out.token_ids)
            try:
                jsonschema.validate(json.loads(out.text), schema)
                valid += 1
                exact += json.loads(out.text) == reference
            except (json.JSONDecodeError, jsonschema.ValidationError):
                pass
        rate = tokens / (time.perf_counter() - start)
        rows.append((label, n, f"{valid / n:.0%}", f"{exact / n:.0%}", f"{rate:.0f}"))
    return rows


def table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a chat model folder for the validity table (e.g. the speedrun's sft)")
    ap.add_argument("--n", type=int, default=50, help="JSON prompts for the validity table")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = overhead_rows(our_tokenizer(), "pocketchat", args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        if (smollm := smollm_tokenizer(Path(tmp))) is not None:
            rows += overhead_rows(smollm, "SmolLM2", args.repeats)
    print(f"median (interquartile range) over {args.repeats} runs")
    print(table(("tokenizer", "vocab", "constraint", "tokens", "µs/token", "first µs", "build ms"), rows))
    if args.model:
        print()
        print(table(("decoding", "prompts", "valid JSON", "exact answer", "tokens/s"), validity(args.model, args.n)))


if __name__ == "__main__":
    main()
