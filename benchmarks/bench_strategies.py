"""Prompting strategies on held-out task instances: accuracy and the compute each one spent.

For each `--model DIR` (the local engine) and/or `--endpoint URL` (any OpenAI-compatible server), one
Markdown table: direct vs chain of thought vs self-consistency (k=5 and k=10) vs a calculator tool on the
`--tasks` (test split), and direct / CoT / Tree of Thoughts on a search puzzle (`--search-task`: reach or
game24), with tokens per instance (prompt + generated, counted as an API bills them: a prompt shared by the
k samples counts once) and model calls per instance. Then the targets, checked and stated:
self-consistency beats single-sample CoT; tools beat no tools on arithmetic. Then RAG on the unseen-facts
corpus (`pocketchat.tasks.facts`): recall@5 and MRR of retrieval (dense all-MiniLM-L6-v2, BM25, hybrid),
and answer accuracy with vs without the retrieved passages. The talk's two prompting claims, each paired on the
same instances (95% CI, McNemar's p): expert CoT (an expert persona + "Let's work this out in a step by step way
to be sure we have the right answer") vs CoT; and with `--base-model`, a base model prompted as an assistant (a
helpful-dialogue transcript with --dialogue-shots solved train instances, plain-text completion) vs each model's
direct answers.

How it runs: the problems of a cell run `--workers` at a time, their model calls batched together by the
engine's continuous batcher (`LocalLLM.batched`); self-consistency's k samples of one problem are one
`complete(n=k)` call. k=5 is the vote of the first 5 of the k=10 samples: exactly the samples a k=5 run
draws (sample i uses seed + i), so both columns come from one run. CoT and the tool strategy decode
greedily; self-consistency and ToT sample at --temperature. "tool" is the checkpoint's native tool calls
(<tool_call> JSON, the engine runs the calculator) when its tokenizer has the tags, else ReAct with the
calculator (Action: calculator[...], any chat model can). Number answers are read leniently ("The answer
is 118." -> 118), as evaluation harnesses do for chat models.

Not like for like: on the search puzzle, Tree of Thoughts gets help from the program that direct and CoT don't
(`strategies/tot.py`, `CountdownToT`): of each step the model writes, only "a op b =" is read; the program
computes the result and the numbers left, drops steps that use a number not on the table, writes the answer's
expression from the steps, and scores a finished state by the exact check against the target, not by the model.
The table says so under its rows (TOT_GIVEN).

Usage:
    python benchmarks/bench_strategies.py --model runs/smollm2 [--model runs/default/sft] [--endpoint URL]
        [--base-model runs/default/base] [--dialogue-shots 3]
        [--tasks add2] [--search-task reach] [--n 20] [--n-search 10] [--n-rag 30] [--workers 16]
        [--threads 1] [--dtype auto] [--tool auto|tool|react] [--skip rag,tot] [--json out.json]
Defaults take roughly 10 minutes per 135M-parameter model on 2 busy CPU cores (--threads 1 there: two
processes each asking for both cores run far slower than one core each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from pocketchat.errors import UserError
from pocketchat.strategies.consistency import tally
from pocketchat.strategies.llm import LocalLLM, OpenAILLM, Usage
from pocketchat.stats import binomial_two_sided, paired_test
from pocketchat.strategies.run import Settings, demonstrations, solve_all, summarize, task_problems

SECTIONS = ("direct", "cot", "expert", "sc", "tool", "tot", "rag", "dialogue")


# -- statistics -------------------------------------------------------------------------------------------

def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: honest about how little 20 instances say."""
    if n == 0:
        return 0.0, 1.0
    p = right / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


# -- one model ------------------------------------------------------------------------------------------------

def cell(llm, strategy: str, task: str, problems, settings: Settings, workers: int, label: str | None = None,
         shots: list[list[dict]] = ()) -> dict:
    """One strategy on the problems; a cell the model cannot run (a prompt longer than its context) is n/a."""
    start = time.perf_counter()
    try:
        results = solve_all(llm, strategy, problems, settings, shots, workers=workers)
    except UserError as e:
        return {"task": task, "strategy": strategy, "label": label or strategy, "n": len(problems), "accuracy": None,
                "note": str(e), "seconds": time.perf_counter() - start, "correct": [], "results": []}
    row = summarize(task, strategy, problems, results)
    row.update(label=label or strategy, seconds=time.perf_counter() - start,
               correct=[bool(p.grade(r.answer)) for p, r in zip(problems, results)])
    return row | {"results": results}


def sc_rows(sc: dict, problems, ks: list[int]) -> list[dict]:
    """Self-consistency at each k from the samples of one run with the largest k (see the module docstring)."""
    rows = []
    for k in ks:
        correct, usage, sample_right, sample_count = [], Usage(), 0, 0
        for p, r in zip(problems, sc["results"]):
            samples = r.trace["samples"][:k]
            winner, _ = tally(samples, p.normalize)
            correct.append(bool(p.grade(winner)))
            sample_right += sum(bool(p.grade(s["answer"])) for s in samples)
            sample_count += len(samples)
            usage.prompt_tokens += r.usage.prompt_tokens  # the shared prompt, read once
            usage.completion_tokens += sum(s["tokens"] for s in samples)
            usage.calls += r.usage.calls
        n = len(problems)
        rows.append({"task": sc["task"], "strategy": "sc", "label": f"self-consistency k={k}", "n": n,
                     "accuracy": sum(correct) / n, "tokens": usage.total / n,
                     "completion_tokens": usage.completion_tokens / n,
                     "calls": usage.calls / n, "correct": correct, "sample_accuracy": sample_right / sample_count,
                     "seconds": sc["seconds"] * (k / max(ks) if k != max(ks) else 1.0)})
    return rows


def has_native_tools(llm) -> bool:
    if not isinstance(llm, LocalLLM):
        return True  # an endpoint takes OpenAI `tools`
    return llm.engine.can_run_tools


def bench_model(llm, args, ks: list[int]) -> list[dict]:
    settings = Settings(n=max(ks), temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed,
                        breadth=args.tot_breadth, n_evaluate=args.tot_evaluate)
    tool = args.tool if args.tool != "auto" else ("tool" if has_native_tools(llm) else "react")
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        if row["accuracy"] is None:
            print(f"  {row['task']:>14} {row['label']:<24} n/a: {row['note']}", file=sys.stderr, flush=True)
            return
        print(f"  {row['task']:>14} {row['label']:<24} {row['accuracy']:6.1%}  {row['tokens']:7.0f} tok  "
              f"{row['seconds']:5.0f} s", file=sys.stderr, flush=True)

    for task in args.tasks:
        problems = task_problems(task, "test", args.n, args.seed)
        arithmetic = any(p.reference("tool")[1].get("tool_calls") for p in problems)  # the task has calculator steps
        for strategy in ("direct", "cot", "expert"):
            if strategy not in args.skip:
                label = {"direct": "direct", "cot": "CoT", "expert": "expert CoT"}[strategy]
                add(cell(llm, strategy, task, problems, settings, args.workers, label))
        if "sc" not in args.skip:
            sc = cell(llm, "sc", task, problems, settings, args.workers)
            for row in sc_rows(sc, problems, ks) if sc["accuracy"] is not None else [sc]:
                add(row)
        if "tool" not in args.skip and arithmetic:
            add(cell(llm, tool, task, problems, settings, args.workers,
                     "calculator tool" if tool == "tool" else "calculator (ReAct)"))
    if "tot" not in args.skip and args.search_task:
        task = args.search_task
        problems = task_problems(task, "test", args.n_search, args.seed)
        for strategy, label in (("direct", "direct"), ("cot", "CoT"), ("tot", "Tree of Thoughts")):
            if strategy in args.skip:
                continue
            add(cell(llm, strategy, task, problems, settings, args.workers, label))
    return rows


# -- RAG --------------------------------------------------------------------------------------------------------

def rag_setup(args):
    """The facts corpus, chunked (as tests/test_rag.py does: 64 tokens, about a paragraph) and embedded with
    MiniLM; None (with a note) when MiniLM is not installed."""
    from pocketchat.rag import build_index, load_embedder, retriever
    from pocketchat.tasks.facts import facts_corpus, write_documents

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        embedder = load_embedder("minilm")
    except UserError as e:
        print(f"note: RAG skipped: {e}")
        return None
    docs, questions = facts_corpus(args.rag_docs, 2, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "facts.jsonl"
        write_documents(docs, path)
        store = build_index(path, embedder, chunk_tokens=args.chunk_tokens, overlap=args.overlap)
    return store, {mode: retriever(store, mode) for mode in ("dense", "bm25", "hybrid")}, docs, questions


def retrieval_table(rag, args) -> str:
    from pocketchat.strategies.rag import rag_eval

    store, retrievers, docs, questions = rag
    k = args.rag_k

    class NoModel:  # retrieval metrics need no answers
        def complete(self, messages, **kwargs):
            from pocketchat.strategies.llm import Generation
            return [Generation("", 0, 0, "stop")]

    lines = [f"Retrieval on the unseen-facts corpus: {len(docs)} documents, {len(store)} chunks "
             f"({args.chunk_tokens} MiniLM tokens, overlap {args.overlap}), all {len(questions)} of its questions; "
             "a hit is a chunk of the question's document that holds the answer span.", "",
             f"| retrieval | recall@{k} | MRR@{k} |", "|---|---|---|"]
    for mode, r in retrievers.items():
        report = rag_eval(NoModel(), r, questions, k)
        name = {"dense": "dense (all-MiniLM-L6-v2)", "bm25": "BM25", "hybrid": "hybrid (RRF of both)"}[mode]
        lines.append(f"| {name} | {report['recall']:.1%} | {report['mrr']:.3f} |")
    return "\n".join(lines)


def rag_rows(llm, rag, args) -> dict:
    from pocketchat.strategies.rag import rag_eval

    _, retrievers, _, questions = rag
    start = time.perf_counter()
    for k in sorted({args.rag_k, 1}, reverse=True):  # a small context may hold one passage, not five
        try:
            report = rag_eval(llm, retrievers[args.retrieval], questions[: args.n_rag], k,
                              max_tokens=args.rag_max_tokens, workers=args.workers)
        except UserError as e:
            print(f"  RAG with top {k}: n/a: {e}", file=sys.stderr, flush=True)
            continue
        note = "" if k == args.rag_k else f" (top {args.rag_k} does not fit in the model's context)"
        return report | {"seconds": time.perf_counter() - start, "note": note}
    return None


# -- output -----------------------------------------------------------------------------------------------------

TOT_GIVEN = ("Tree of Thoughts is given what direct and CoT are not: the program does each step's arithmetic, "
             "drops steps that use a number not on the table, writes the answer from the steps and checks finished "
             "states against the target; the model proposes steps and rates unfinished states.")


def table(rows: list[dict]) -> str:
    lines = ["| task | strategy | n | accuracy | 95% CI | tokens / instance (prompt + generated) | generated | calls |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["accuracy"] is None:
            lines.append(f"| {r['task']} | {r['label']} | {r['n']} | n/a: {r['note']} | | | | |")
            continue
        lo, hi = wilson(sum(r["correct"]), r["n"])
        lines.append(f"| {r['task']} | {r['label']} | {r['n']} | {r['accuracy']:.1%} | {lo:.0%}–{hi:.0%} | "
                     f"{r['tokens']:.0f} | {r['completion_tokens']:.0f} | {r['calls']:.1f} |")
    return "\n".join(lines)


def paired(a: dict, b: dict) -> str:
    """b against a on the same instances: the difference with its 95% CI and McNemar's p."""
    t = paired_test(a["correct"], b["correct"])
    return (f"{b['label']} {t.mean_b:.1%} vs {a['label']} {t.mean_a:.1%}: {t.diff:+.1%} [{t.ci_low:+.1%}, {t.ci_high:+.1%}], "
            f"{t.wins} won / {t.losses} lost, McNemar p = {t.p:.2g} (n = {t.n})")


def compare(a: dict, b: dict) -> str:
    wins = sum(x and not y for x, y in zip(a["correct"], b["correct"]))
    losses = sum(y and not x for x, y in zip(a["correct"], b["correct"]))
    return (f"{a['label']} {a['accuracy']:.1%} vs {b['label']} {b['accuracy']:.1%} "
            f"({wins} won, {losses} lost; sign test p = {binomial_two_sided(wins, wins + losses):.2f})")


def targets(rows: list[dict], tasks: list[str], base_rows: list[dict] = ()) -> list[str]:
    """The claims the table tests, each on the same instances: self-consistency and tools (PASS/FAIL against the
    targets), and the talk's prompting claims, stated whichever way they come out."""
    out = []
    for task in tasks:
        by = {r["label"]: r for r in rows if r["task"] == task and r["accuracy"] is not None}
        cot = by.get("CoT")
        for r in (v for k, v in by.items() if k.startswith("self-consistency")):
            if cot:
                verdict = "PASS" if r["accuracy"] > cot["accuracy"] else "FAIL"
                out.append(f"- {verdict}: self-consistency beats single-sample CoT on {task}: {compare(r, cot)}; "
                           f"one sampled chain alone is right {r['sample_accuracy']:.1%} of the time")
        if "expert CoT" in by and cot:
            out.append(f"- asking for success on {task}: {paired(cot, by['expert CoT'])}")
        if by.get("direct") and base_rows:
            for b in (r for r in base_rows if r["task"] == task and r["accuracy"] is not None):
                out.append(f"- a base model prompted as an assistant on {task}: {paired(by['direct'], b)}")
        tool = next((v for k, v in by.items() if k.startswith("calculator")), None)
        plain = [by[k] for k in ("direct", "CoT") if k in by]
        if tool and plain:
            best = max(plain, key=lambda r: r["accuracy"])
            verdict = "PASS" if tool["accuracy"] > best["accuracy"] else "FAIL"
            out.append(f"- {verdict}: tools beat no tools on {task} (arithmetic): {compare(tool, best)} "
                       f"(the better of direct and CoT)")
    return out


def load_llm(spec: str, kind: str, args):
    if kind == "endpoint":
        return OpenAILLM(spec, args.model_name), spec
    from pocketchat.chat_format import tool_turn_renderer
    from pocketchat.engine import Engine
    from pocketchat.hardware import cpu_has_native_bf16, resolve_device
    from pocketchat.lora import load_model
    from pocketchat.tokenizer import Tokenizer

    device = resolve_device(args.device)
    if args.dtype == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
        dtype = torch.bfloat16 if bf16 else torch.float32
    else:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = load_model(spec, device=device).eval()
    tokenizer = Tokenizer.load(spec)
    engine = Engine(model, tokenizer, dtype=dtype, tool_turn=tool_turn_renderer(tokenizer))
    params = sum(p.numel() for p in model.parameters())
    return LocalLLM(engine), f"{spec} ({params / 1e6:.1f} M parameters, {str(dtype).removeprefix('torch.')}, {device})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], help="a model folder (repeatable)")
    p.add_argument("--endpoint", action="append", default=[], help="an OpenAI-compatible endpoint (repeatable)")
    p.add_argument("--model-name", help="the endpoint's model (default: the first it lists)")
    p.add_argument("--tasks", default="add2", help="comma-separated tasks for direct / CoT / SC / tool")
    p.add_argument("--search-task", default="reach", help="the ToT puzzle: reach or game24 ('' to skip)")
    p.add_argument("--n", type=int, default=20, help="held-out instances per task cell")
    p.add_argument("--n-search", type=int, default=10, help="held-out puzzles for the ToT cells")
    p.add_argument("--n-rag", type=int, default=30, help="questions for the RAG answers")
    p.add_argument("--rag-docs", type=int, default=40, help="documents in the facts corpus")
    p.add_argument("--rag-k", type=int, default=5, help="passages retrieved per question")
    p.add_argument("--rag-max-tokens", type=int, default=32)
    p.add_argument("--chunk-tokens", type=int, default=64, help="RAG chunk size, in MiniLM tokens")
    p.add_argument("--overlap", type=int, default=16, help="RAG chunk overlap")
    p.add_argument("--retrieval", default="hybrid", choices=("dense", "bm25", "hybrid"), help="for the RAG answers")
    p.add_argument("--k", default="5,10", help="self-consistency sample counts")
    p.add_argument("--temperature", type=float, default=0.7, help="self-consistency and ToT sampling")
    p.add_argument("--max-tokens", type=int, default=128, help="per completion")
    p.add_argument("--tot-breadth", type=int, default=3)
    p.add_argument("--tot-evaluate", type=int, default=1, help="ToT ratings per state (the paper: 3)")
    p.add_argument("--tool", default="auto", choices=("auto", "tool", "react"))
    p.add_argument("--base-model", help="a base (pretrained, not chat) model folder, prompted as an assistant with the "
                                        "dialogue transcript and compared with each model's direct answers")
    p.add_argument("--dialogue-shots", type=int, default=3, help="solved train instances in the base model's transcript")
    p.add_argument("--workers", type=int, default=16, help="problems in flight at once (their calls batched)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--skip", default="", help=f"sections to leave out: {', '.join(SECTIONS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write every row here")
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.skip = {s for s in args.skip.split(",") if s}
    ks = sorted({int(k) for k in args.k.split(",") if k})
    if not args.model and not args.endpoint:
        p.error("give at least one --model or --endpoint")
    if unknown := args.skip - set(SECTIONS):
        p.error(f"--skip: unknown sections {', '.join(sorted(unknown))} (valid: {', '.join(SECTIONS)})")
    if args.threads:
        torch.set_num_threads(args.threads)

    rag = None if "rag" in args.skip else rag_setup(args)
    report = {"args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}, "models": []}
    print(f"# Strategies benchmark\n\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.workers} problems in flight; held-out (test split) instances, seed {args.seed}; "
          f"max {args.max_tokens} tokens per completion, sampling temperature {args.temperature}.\n")
    if rag is not None:
        print(retrieval_table(rag, args) + "\n")
    base_rows = []
    if args.base_model and "dialogue" not in args.skip:
        base_llm, base_name = load_llm(args.base_model, "model", args)
        settings = Settings(max_tokens=args.max_tokens, seed=args.seed)
        for task in args.tasks:
            shots = demonstrations(task, "direct", args.dialogue_shots, args.seed)
            base_rows.append(cell(base_llm, "dialogue", task, task_problems(task, "test", args.n, args.seed), settings,
                                  args.workers, f"base model, dialogue prompt, {args.dialogue_shots} shots", shots))
        print(f"## {base_name}, prompted as an assistant\n\n{table(base_rows)}\n")
        report["base_model"] = {"model": base_name, "rows": [{k: v for k, v in r.items() if k != "results"} for r in base_rows]}
    for spec, kind in [*((m, "model") for m in args.model), *((e, "endpoint") for e in args.endpoint)]:
        try:
            llm, name = load_llm(spec, kind, args)
        except UserError as e:
            print(f"note: {spec} skipped: {e}\n")
            continue
        start = time.perf_counter()
        print(f"{name}:", file=sys.stderr, flush=True)
        rows = bench_model(llm, args, ks)
        rag_report = rag_rows(llm, rag, args) if rag is not None else None
        minutes = (time.perf_counter() - start) / 60
        print(f"## {name}\n\n{table(rows)}\n")
        if any(r["strategy"] == "tot" for r in rows):
            print(TOT_GIVEN + "\n")
        checks = targets(rows, args.tasks, base_rows)
        if checks:
            print("Targets:\n" + "\n".join(checks) + "\n")
        if rag_report:
            r = rag_report
            print(f"| RAG ({r['n']} questions, {args.retrieval} top {r['k']}{r['note']}) | accuracy | "
                  f"tokens / question |\n|---|---|---|\n"
                  f"| closed book (the bare question) | {r['accuracy_closed_book']:.1%} | {r['tokens_closed_book']:.0f} |\n"
                  f"| with retrieval | {r['accuracy_rag']:.1%} | {r['tokens_rag']:.0f} |\n")
        print(f"({minutes:.1f} minutes)\n", flush=True)
        report["models"].append({"model": name, "rows": [{k: v for k, v in r.items() if k != "results"} for r in rows],
                                 "rag": rag_report, "minutes": minutes})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
