"""PPO episode throughput: pocketchat's RLTrainer against TRL's PPOTrainer (trl.experimental.ppo, TRL 1.10.0)
on the same weights, prompts and settings, same run.

An episode = sample a batch of completions, score them with a reward model, compute reference log-probs,
values and GAE advantages, then several PPO epochs over the batch. Settings (both sides): batch 16 prompts of
at most 32 tokens (train-split task prompts in the chat format), 53-token responses (TRL's default length;
pocketchat's engine may end a sample early at an end-of-turn token, which random weights rarely produce),
sampling temperature 1, 4 PPO epochs, one optimizer step per epoch over micro-batches of 8, AdamW, fp32
(or --dtype bfloat16: autocast on both sides). The reward model and the critic start from the policy's body
with a fresh score head (pocketchat's `RewardModel.from_causal_lm`, saved as a LlamaForSequenceClassification
folder that TRL loads as its reward and value model). TRL runs with gradient checkpointing off (its default
is on, which only costs time on a model this small).

The weights default to random ones of the `tiny` pretrain preset's shape (a 4,096-token tokenizer trained
in ~2 s on part of the embedded corpus); --model DIR uses a checkpoint folder instead (e.g. an SFT run).

Per side, over the measured episodes (the first episode of each round is a warm-up and not counted):
  rollout tokens/s   completion tokens sampled / generation time
  update tokens/s    epochs x (prompt + completion tokens - 1 per sample) / the rest of the episode
                     (reference, value and reward forwards, advantages and the PPO epochs)
  s per episode      wall time of one whole episode
  update GFLOP/s     the update's estimated arithmetic (see `update_gflops`) per second: how close it runs to
                     the machine's matmul peak, which bounds any speedup there
pocketchat's figures are the ones RLTrainer logs (`rollout_tokens_per_s`, `update_tokens_per_s`,
`episode_s`); TRL's are measured by timing its generation call and its step-end callback, with the same
token counts. The sides take turns (--rounds), so a busy machine slows them alike; medians are reported.
Note that TRL's own "episode" (its `eps` metric, `total_episodes`) is one sample, not one batch: a TRL
figure of x s per episode is 16x s per episode here.

TRL runs in a subprocess under --trl-python (default: this Python), which needs `pip install trl==1.10.0`;
install it in a separate virtualenv if it would change this one's transformers, e.g.
    python -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0 && \\
        /tmp/trlvenv/bin/pip install -e . trl==1.10.0
Without it the table says so and shows pocketchat alone.

--algo grpo measures a GRPO episode against main before issue 18 (generation speed): batch 16 = 4 prompts x
group 4, up to 64 new tokens, 2 epochs, minibatch 8, the task reward (the tiny RL preset's settings), this tree
against the whole package at --old-rev (`src/pocketchat` read with `git show`), same settings, same --dtype.
Both sides run in subprocesses of their own and take turns (--rounds); medians of the RLTrainer's logged figures.
--compile sets RLConfig.compile on both sides; --compile this on this tree's side only, against main as it runs
by default (main's compiled update broke its graph at every attention call and ran slower than its eager one).

Usage:
    python benchmarks/bench_rl.py [--model DIR] [--trl-python /tmp/trlvenv/bin/python] [--episodes 3]
                                  [--rounds 2] [--batch 16] [--response-len 53] [--epochs 4] [--threads N]
    python benchmarks/bench_rl.py --algo grpo [--old-rev REV] [--episodes 3] [--rounds 2] [--threads N]
                                  [--compile [both|this]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRL_VERSION = "1.10.0"
MAIN_BEFORE_ISSUE_18 = "04167764c8dd"  # the commit --algo grpo compares against
COMPILED = {"": "eager", "both": "RLConfig.compile on both sides", "this": "RLConfig.compile on this tree only"}
REPO = Path(__file__).resolve().parent.parent


# ---- the shared setup (this process, pocketchat's environment) -------------------------------------------------

def build(root: Path, args) -> dict:
    """Policy and reward-model folders, and the prompts of every episode (the same for both sides)."""
    import torch

    from pocketchat.chat_format import CHAT_TEMPLATE
    from pocketchat.model import CausalLM, RewardModel
    from pocketchat.tokenizer import Tokenizer

    policy_dir, rm_dir = root / "policy", root / "rm"
    if args.model:
        tok = Tokenizer.load(args.model)
        policy = CausalLM.from_pretrained(args.model)
    else:
        from tiny_random import tiny_random

        policy, tok = tiny_random([__doc__ * 50])
    policy.save_pretrained(policy_dir)
    tok.save(policy_dir, chat_template=tok.chat_template or CHAT_TEMPLATE,
             model_max_length=policy.config.max_position_embeddings)
    torch.manual_seed(1)
    RewardModel.from_causal_lm(policy).save_pretrained(rm_dir)

    needed = args.batch * (args.episodes + 1) * args.rounds
    prompts = [ids for ids, _ in task_prompts(tok, needed, args.max_prompt_len)]
    # The same prompts in the same order on both sides; TRL's dataloader shuffles within what it is given.
    per_round = args.batch * (args.episodes + 1)
    rounds = [prompts[r * per_round:(r + 1) * per_round] for r in range(args.rounds)]
    params = sum(p.numel() for p in policy.parameters())
    c = policy.config
    body = params - c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)  # the matmuls of the decoder
    return dict(policy=str(policy_dir), rm=str(rm_dir), rounds=rounds, pad_id=tok.pad_id, params=params,
                policy_mm=body + c.vocab_size * c.hidden_size, critic_mm=body + c.hidden_size,
                prompt_len=statistics.mean(len(p) for p in prompts[:needed]))


def task_prompts(tok, needed: int, max_len: int) -> list[tuple[list[int], object]]:
    """`needed` distinct train-split arithmetic prompts of at most max_len tokens in the chat format, with their
    examples (what the task reward checks), the same on every call."""
    try:
        from pocketchat.chat_format import render_prompt
    except ImportError:  # --algo grpo's old tree, before the module was renamed
        from pocketchat.chat import render_prompt
    from pocketchat.tasks import mixture, prompt_messages

    prompts, seen = [], set()
    for n in (200, 2000, 20000):
        for example, style in mixture("train", n, 0, ["direct"], ["add2", "add", "sub", "mul"]):
            ids = render_prompt(tok, prompt_messages(example, style))
            if len(ids) <= max_len and tuple(ids) not in seen:
                seen.add(tuple(ids))
                prompts.append((ids, example))
        if len(prompts) >= needed:
            return prompts[:needed]
    raise SystemExit(f"only {len(prompts)} task prompts fit in {max_len} tokens; {needed} needed")


def pocketchat_round(setup: dict, prompts: list[list[int]], args) -> list[dict]:
    from pocketchat.model import CausalLM, RewardModel
    from pocketchat.tokenizer import Tokenizer
    from pocketchat.train.rl import RLConfig, RLPrompt, RLTrainer, model_reward

    cfg = RLConfig(algo="ppo", steps=args.episodes + 1, batch_size=args.batch, group_size=1,
                   minibatch_size=args.batch, micro_batch_size=args.micro_batch, max_tokens=args.response_len,
                   epochs=args.epochs, lr=args.lr, warmup_steps=0, schedule="constant", kl_coef=0.05,
                   dtype=args.dtype, device="cpu", eval_every=0, save_every=0, log_every=1, eval_n=0)
    tok = Tokenizer.load(setup["policy"])
    policy, ref = CausalLM.from_pretrained(setup["policy"]), CausalLM.from_pretrained(setup["policy"])
    rm = RewardModel.from_pretrained(setup["rm"]).eval().requires_grad_(False)
    critic = RewardModel.from_pretrained(setup["rm"])
    trainer = RLTrainer(cfg, policy, tok, ref, model_reward(rm, args.micro_batch), critic=critic)
    out = []
    for step in range(cfg.steps):
        batch = [RLPrompt(ids) for ids in prompts[step * args.batch:(step + 1) * args.batch]]
        m = trainer.step(step, batch)
        out.append(dict(episode_s=m["episode_s"], rollout_tps=m["rollout_tokens_per_s"],
                        update_tps=m["update_tokens_per_s"], length=m["length"]))
    del trainer, policy, ref, rm, critic
    return out[1:]  # the first episode warms up


# ---- TRL (a subprocess, run with --trl-python) ----------------------------------------------------------------

def trl_check(python: str) -> str | None:
    """None if `python` has TRL's PPO, else why not."""
    code = "import trl, trl.experimental.ppo; print(trl.__version__)"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"trl not installed: pip install trl=={TRL_VERSION} ({python}: {e})"
    if r.returncode != 0:
        return f"trl not installed: pip install trl=={TRL_VERSION}"
    version = r.stdout.strip().splitlines()[-1]
    if version != TRL_VERSION:
        print(f"note: {python} has trl {version}, not {TRL_VERSION}")
    return None


def trl_round(setup: dict, prompts: list[list[int]], args, root: Path, r: int) -> list[dict]:
    spec = root / f"trl-spec-{r}.json"
    result = root / f"trl-result-{r}.json"
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return run_worker(args.trl_python, "--trl-worker", spec, result, env, dict(
        policy=setup["policy"], rm=setup["rm"], prompts=prompts, pad_id=setup["pad_id"], batch=args.batch,
        micro_batch=args.micro_batch, epochs=args.epochs, response_len=args.response_len, episodes=args.episodes + 1,
        lr=args.lr, dtype=args.dtype, threads=args.threads, out=str(root / f"trl-out-{r}"), result=str(result)))


def run_worker(python: str, kind: str, spec: Path, result: Path, env: dict, settings: dict) -> list[dict]:
    """Run this script as a worker of `kind` on `settings`; its per-episode figures, less the warm-up episode."""
    spec.write_text(json.dumps(settings))
    p = subprocess.run([python, __file__, kind, str(spec)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"the {kind} process failed ({p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")
    return json.loads(result.read_text())[1:]  # the first episode warms up


def trl_worker(spec_file: str) -> None:
    """Runs under the TRL environment: imports only torch, transformers, datasets and trl."""
    spec = json.loads(Path(spec_file).read_text())
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import trl.experimental.ppo.ppo_trainer as ppo_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    pad = spec["pad_id"]
    generations = []  # per episode: (seconds, completion tokens, prompt tokens)
    original = ppo_module.batch_generation

    def timed_generation(model, queries, *a, **kw):
        t0 = time.perf_counter()
        query_responses, logits = original(model, queries, *a, **kw)
        seconds = time.perf_counter() - t0
        new = query_responses.shape[0] * (query_responses.shape[1] - queries.shape[1])
        generations.append((seconds, new, int((queries != pad).sum())))
        return query_responses, logits

    ppo_module.batch_generation = timed_generation  # train() looks it up in the module at each episode

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_train_begin(self, args, state, control, **kw):
            self.times = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=torch.float32)
    for m in (reward, value):
        m.config.pad_token_id = pad
    data = Dataset.from_dict({"input_ids": spec["prompts"]})
    B, micro = spec["batch"], spec["micro_batch"]
    config = PPOConfig(output_dir=spec["out"], per_device_train_batch_size=micro,
                       gradient_accumulation_steps=B // micro, num_mini_batches=1, num_ppo_epochs=spec["epochs"],
                       response_length=spec["response_len"],
                       total_episodes=B * spec["episodes"], local_rollout_forward_batch_size=B,
                       learning_rate=spec["lr"], kl_coef=0.05, temperature=1.0, gradient_checkpointing=False,
                       bf16=spec["dtype"] == "bfloat16", use_cpu=True, report_to="none", num_sample_generations=0,
                       save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    timer = StepTimes()
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, value_model=value, eval_dataset=data.select(range(B)), callbacks=[timer])
    trainer.train()
    episodes = []
    for (start, end), (gen_s, new, prompt_tokens) in zip(zip(timer.times, timer.times[1:]), generations):
        processed = spec["epochs"] * (prompt_tokens + new - B)
        episodes.append(dict(episode_s=end - start, rollout_tps=new / gen_s,
                             update_tps=processed / (end - start - gen_s), length=new / B))
    Path(spec["result"]).write_text(json.dumps(episodes))


# ---- GRPO: this tree vs main before issue 18 (subprocesses) ------------------------------------------------------

GROUP, GRPO_TOKENS, GRPO_EPOCHS, GRPO_MINIBATCH = 4, 64, 2, 8  # the tiny RL preset's settings


def old_tree(root: Path, rev: str) -> Path:
    """The package as it was at `rev` (engine, RL trainer, model: everything an episode runs)."""
    tree = root / "old-tree"
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=True).stdout
    for path in git("ls-tree", "-r", "--name-only", rev, "src/pocketchat").split():
        target = tree / path.removeprefix("src/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True,
                                          check=True).stdout)
    return tree


def grpo_round(setup: dict, prompts: int, args, root: Path, name: str, tree: Path, r: int) -> list[dict]:
    spec, result = root / f"grpo-spec-{name}-{r}.json", root / f"grpo-result-{name}-{r}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(Path(__file__).parent)])}
    return run_worker(sys.executable, "--grpo-worker", spec, result, env, dict(
        policy=setup["policy"], offset=prompts, batch=args.batch, episodes=args.episodes + 1, threads=args.threads,
        dtype=args.dtype, compile=args.compile == "both" or (args.compile == "this" and tree == REPO / "src"),
        max_prompt_len=args.max_prompt_len, result=str(result)))


def grpo_worker(spec_file: str) -> None:
    """GRPO episodes with whichever `pocketchat` PYTHONPATH gives this process."""
    spec = json.loads(Path(spec_file).read_text())
    import torch

    from pocketchat.model import CausalLM
    from pocketchat.tokenizer import Tokenizer
    from pocketchat.train.rl import RLConfig, RLPrompt, RLTrainer, task_reward

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    B, n = spec["batch"], spec["episodes"]
    cfg = RLConfig(algo="grpo", steps=n, batch_size=B, group_size=GROUP, minibatch_size=GRPO_MINIBATCH,
                   micro_batch_size=GRPO_MINIBATCH, max_tokens=GRPO_TOKENS, epochs=GRPO_EPOCHS, lr=1e-5,
                   warmup_steps=0, schedule="constant", dtype=spec["dtype"], compile=spec["compile"], device="cpu",
                   eval_every=0, save_every=0, log_every=1, eval_n=0)
    tok = Tokenizer.load(spec["policy"])
    policy, ref = CausalLM.from_pretrained(spec["policy"]), CausalLM.from_pretrained(spec["policy"])
    trainer = RLTrainer(cfg, policy, tok, ref, task_reward(0.0))
    per = B // GROUP
    pool = task_prompts(tok, spec["offset"] + per * n, spec["max_prompt_len"])[spec["offset"]:]
    out = []
    for step in range(n):
        m = trainer.step(step, [RLPrompt(ids, example=ex, style="direct") for ids, ex in pool[step * per:(step + 1) * per]])
        out.append(dict(episode_s=m["episode_s"], rollout_s=m["length"] * B / m["rollout_tokens_per_s"],
                        rollout_tps=m["rollout_tokens_per_s"], length=m["length"]))
    Path(spec["result"]).write_text(json.dumps(out))


def grpo_main(args) -> None:
    import torch

    old = f"main before issue 18 ({args.old_rev})"
    sides = {"this tree": REPO / "src", old: None}
    results = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup = build(root, args)
        sides[old] = old_tree(root, args.old_rev)
        per_round = args.batch // GROUP * (args.episodes + 1)
        for r in range(args.rounds):
            for i, (name, tree) in reversed(list(enumerate(sides.items()))) if r % 2 else enumerate(sides.items()):
                results[name] += grpo_round(setup, r * per_round, args, root, f"side{i}", tree, r)  # turns alternate
                print(f"  round {r + 1}: {name} {statistics.median(e['episode_s'] for e in results[name][-args.episodes:]):.3f} "
                      f"s/episode", flush=True)
    med = lambda name, key: statistics.median(e[key] for e in results[name])
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nGRPO, tiny preset shape, random weights ({setup['params'] / 1e6:.1f} M params), batch {args.batch} = "
          f"{args.batch // GROUP} prompts x group {GROUP}, <= {GRPO_TOKENS} new tokens, {GRPO_EPOCHS} epochs, minibatch "
          f"{GRPO_MINIBATCH}, task reward, {args.dtype}, {COMPILED[args.compile]}, "
          f"{args.threads or torch.get_num_threads()} torch threads, {args.rounds} rounds x "
          f"{args.episodes} measured episodes per side, medians; load average at the end: {load_avg}\n")
    print("| tree | episodes | s per episode | rollout s | rollout tok/s | rest of the episode s | mean response tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in sides:
        print(f"| {name} | {len(results[name])} | {med(name, 'episode_s'):.3f} | {med(name, 'rollout_s'):.3f} | "
              f"{med(name, 'rollout_tps'):.0f} | {med(name, 'episode_s') - med(name, 'rollout_s'):.3f} | "
              f"{statistics.mean(e['length'] for e in results[name]):.1f} |")
    new, old = sides
    print(f"\nthis tree / main before issue 18, time per episode: {med(new, 'episode_s') / med(old, 'episode_s'):.2f} "
          f"(rollout {med(new, 'rollout_s') / med(old, 'rollout_s'):.2f})")


# ---- the table ------------------------------------------------------------------------------------------------

def update_gflops(e: dict, setup: dict, args) -> float:
    """Estimated arithmetic of an episode's update part per second: forwards of the policy (old and reference
    log-probs) and of the critic and reward model (2 FLOPs per weight per token each), then per epoch the
    policy and the critic forward and backward (6 per weight per token). Attention scores are left out."""
    update_s = e["episode_s"] - e["length"] * args.batch / e["rollout_tps"]
    tokens = e["update_tps"] * update_s / args.epochs  # prompt + completion tokens of the episode
    p, c = setup["policy_mm"], setup["critic_mm"]
    return tokens * (2 * (2 * p + 2 * c) + args.epochs * 6 * (p + c)) / update_s / 1e9


def summary(name: str, episodes: list[dict], setup: dict, args) -> dict:
    med = lambda xs: statistics.median(xs)
    return dict(name=name, n=len(episodes), episode_s=med(e["episode_s"] for e in episodes),
                rollout_tps=med(e["rollout_tps"] for e in episodes), update_tps=med(e["update_tps"] for e in episodes),
                gflops=med(update_gflops(e, setup, args) for e in episodes),
                length=statistics.mean(e["length"] for e in episodes))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--trl-worker":
        return trl_worker(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--grpo-worker":
        return grpo_worker(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint folder for the policy (default: random weights, tiny preset shape)")
    ap.add_argument("--trl-python", default=sys.executable, help="a Python with trl==1.10.0 (default: this one)")
    ap.add_argument("--episodes", type=int, default=3, help="measured episodes per side per round")
    ap.add_argument("--rounds", type=int, default=2, help="turns each side takes (fresh models each time)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--max-prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=53)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--algo", default="ppo", choices=["ppo", "grpo"], help="grpo: this tree vs --old-rev (no TRL)")
    ap.add_argument("--compile", nargs="?", const="both", default="", choices=["both", "this"],
                    help="grpo: RLConfig.compile on both sides, or on this tree's only (main as it runs by default); "
                    "the first episode, not counted, compiles")
    ap.add_argument("--old-rev", default=MAIN_BEFORE_ISSUE_18, help="the commit --algo grpo compares against")
    args = ap.parse_args()
    if args.algo == "grpo":
        return grpo_main(args)
    if args.batch % args.micro_batch:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --micro-batch {args.micro_batch}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    trl_missing = "skipped (--skip-trl)" if args.skip_trl else trl_check(args.trl_python)
    if trl_missing:
        print(f"note: {trl_missing}")

    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup = build(root, args)
        for r, prompts in enumerate(setup["rounds"]):
            ours += pocketchat_round(setup, prompts, args)
            print(f"  round {r + 1}: pocketchat {statistics.median(e['episode_s'] for e in ours[-args.episodes:]):.3f} "
                  f"s/episode", flush=True)
            if not trl_missing:
                theirs += trl_round(setup, prompts, args, root, r)
                print(f"  round {r + 1}: TRL {statistics.median(e['episode_s'] for e in theirs[-args.episodes:]):.3f} "
                      f"s/episode", flush=True)

    rows = [summary("pocketchat RLTrainer", ours, setup, args)]
    if theirs:
        rows.append(summary(f"TRL {TRL_VERSION} PPOTrainer", theirs, setup, args))
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    what = Path(args.model).name if args.model else "tiny preset shape, random weights"
    print(f"\nPPO, {what} ({setup['params'] / 1e6:.1f} M params), batch {args.batch}, prompts <= "
          f"{args.max_prompt_len} tokens (mean {setup['prompt_len']:.1f}), {args.response_len}-token responses, "
          f"{args.epochs} PPO epochs, micro-batch {args.micro_batch}, {args.dtype}, {torch.get_num_threads()} torch "
          f"threads, {args.rounds} rounds x {args.episodes} measured episodes per side, medians; load average at the "
          f"end: {load_avg}\n")
    print("| trainer | episodes | rollout tok/s | update tok/s | update GFLOP/s (est.) | s per episode | "
          "mean response tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['n']} | {r['rollout_tps']:.0f} | {r['update_tps']:.0f} | {r['gflops']:.0f} | "
              f"{r['episode_s']:.3f} | {r['length']:.1f} |")
    if trl_missing:
        print(f"| TRL {TRL_VERSION} PPOTrainer | {trl_missing} | | | | | |")
    else:
        a, b = rows
        print(f"\npocketchat vs TRL: {b['episode_s'] / a['episode_s']:.2f}x faster per episode, rollout "
              f"{a['rollout_tps'] / b['rollout_tps']:.2f}x, update {a['update_tps'] / b['update_tps']:.2f}x")


if __name__ == "__main__":
    main()
