"""Greedy decode throughput: pocketchat's Engine vs transformers' generate() on the same weights, same run.

Models: a random model of the `tiny` preset's shape, and SmolLM2-135M-Instruct when `pocketchat.gguf_import`
can load it (skipped with a note otherwise). Each row: a 32-token prompt per sequence -> 128 new tokens
(stop tokens ignored, so both sides generate exactly that many), best of --repeats runs, prefill included.
Usage:
    python benchmarks/bench_decode.py [--batches 1,16] [--dtypes float32,bfloat16] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pocketchat.engine import Engine, KVCache, SamplingParams
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer
from pocketchat.train.pretrain import PRESETS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tiny_folder(root: Path) -> tuple[Path, Tokenizer]:
    """A random model of the tiny preset's shape saved as an HF folder, with a small tokenizer (decoding only)."""
    p = PRESETS["tiny"]
    config = ModelConfig(**{k: p[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads")},
                         max_position_embeddings=p["seq_len"])
    torch.manual_seed(0)
    CausalLM(config).save_pretrained(root / "tiny")
    return root / "tiny", Tokenizer.train([__doc__ * 10], vocab_size=300)


def smollm_folder(root: Path) -> tuple[Path, Tokenizer] | None:
    try:
        from pocketchat.gguf_import import import_gguf, smollm2_gguf

        folder = import_gguf(smollm2_gguf(), root / "smollm2")
    except (ImportError, UserError) as e:
        print(f"note: SmolLM2-135M-Instruct skipped: {e}")
        return None
    return folder, Tokenizer.load(folder)


def best_times(fns: list, repeats: int) -> list[tuple[float, object]]:
    """Best wall time of each function; the functions take turns, so a busy machine slows them alike."""
    best = [(float("inf"), None)] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            out = fn()
            best[i] = (min(best[i][0], time.perf_counter() - start), out)
    return best


def bench(name: str, folder: Path, tok: Tokenizer, dtype: torch.dtype, batch: int, args) -> dict:
    import transformers

    ours = Engine(CausalLM.from_pretrained(folder, dtype=dtype), tok)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    config = ours.config
    torch.manual_seed(batch)
    prompts = torch.randint(8, config.vocab_size, (batch, args.prompt_len))
    params = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
    n = args.new_tokens

    def run_ours():
        return [c.token_ids for c in ours.generate(prompts.tolist(), params)]

    def run_theirs():
        with torch.inference_mode():
            out = theirs.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=n,
                                  min_new_tokens=n, pad_token_id=tok.pad_id if tok.pad_id is not None else 0)
        return out[:, args.prompt_len :].tolist()

    run_ours(), run_theirs()  # warm up allocators and caches
    (t_ours, ids_ours), (t_theirs, ids_theirs) = best_times([run_ours, run_theirs], args.repeats)
    same = sum(a == b for a, b in zip(ids_ours, ids_theirs))
    kv = KVCache(config, batch, args.prompt_len + n, dtype, "cpu").nbytes  # what the engine allocates
    return dict(model=name, dtype=str(dtype).removeprefix("torch."), batch=batch, ours=batch * n / t_ours,
                theirs=batch * n / t_theirs, same=f"{same}/{batch}", kv_mib=kv / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-smollm", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [("tiny (random)", *tiny_folder(Path(tmp)))]
        if not args.skip_smollm and (smollm := smollm_folder(Path(tmp))) is not None:
            models.append(("SmolLM2-135M", *smollm))
        for name, folder, tok in models:
            for dtype in args.dtypes.split(","):
                for batch in map(int, args.batches.split(",")):
                    rows.append(bench(name, folder, tok, DTYPES[dtype], batch, args))
                    r = rows[-1]
                    print(f"  {r['model']} {r['dtype']} batch {r['batch']}: {r['ours']:.0f} vs {r['theirs']:.0f} tokens/s",
                          flush=True)

    print(f"\ngreedy, {args.prompt_len}-token prompts -> {args.new_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}; tokens/s counts new tokens over the whole generate call (prefill included)\n")
    print("| model | dtype | batch | pocketchat tok/s | transformers tok/s | speedup | same tokens | KV cache MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['ours']:.0f} | {r['theirs']:.0f} | "
              f"{r['ours'] / r['theirs']:.2f}x | {r['same']} | {r['kv_mib']:.1f} |")


if __name__ == "__main__":
    main()
