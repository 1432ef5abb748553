"""Reward-model over-optimisation, measured (in the spirit of Gao et al. 2022, "Scaling laws for reward model
over-optimization"): a long PPO run against the speedrun's reward model with a weak KL leash, and the RM's
reward and the gold score (the programmatic labeler the RM was trained to imitate) plotted against sqrt(KL to
the SFT model).

Every `--eval-every` episodes the policy is evaluated on held-out prompts (the "select" part of the test
split, one sample each at temperature 1): its mean RM reward, its mean gold score and its KL to the SFT model.
Proxy reward keeps rising with KL; gold rises, peaks and falls once the policy exploits what the RM got wrong.

Usage (RUN is a finished `pocketchat speedrun` folder, which holds sft/ and rm/):
    python benchmarks/bench_overoptimization.py --run runs/speedrun --out runs/overopt \\
        [--episodes 200] [--eval-every 20] [--kl-coef 0.005] [--lr 3e-5] [--eval-n 30]
It prints a table and writes OUT/overoptimization.png and OUT/overoptimization.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from pocketchat.alignment_eval import held_out_cases, sample_cases, sampled_token_stats
from pocketchat.chat_format import tool_turn_renderer
from pocketchat.engine import Engine
from pocketchat.labeler import ProgrammaticLabeler
from pocketchat.lora import load_model
from pocketchat.model import RewardModel
from pocketchat.speedrun import alignment_cells
from pocketchat.tokenizer import Tokenizer
from pocketchat.train.rl import PRESETS, RLConfig, run as run_rl


def held_out_point(policy_dir: Path, sft, rm, cells, n: int, seed: int) -> dict:
    """RM reward, gold and KL of one sample per held-out case."""
    tokenizer = Tokenizer.load(policy_dir)
    engine = Engine(load_model(policy_dir).eval(), tokenizer, tool_turn=tool_turn_renderer(tokenizer))
    cases = held_out_cases(cells, n, seed, "select")
    prompts, completions = sample_cases(engine, cases, seed)
    kl, _ = sampled_token_stats(engine, prompts, completions, sft)
    labeler = ProgrammaticLabeler(seed)
    with torch.no_grad():
        rewards = [rm(torch.tensor([p + c.token_ids])).item() for p, c in zip(prompts, completions)]
    gold = [labeler.gold_score(e, s, c) for (e, s), c in zip(cases, completions)]
    mean = lambda xs: sum(xs) / len(xs)
    return {"rm_reward": mean(rewards), "gold": mean(gold), "kl": mean(kl)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished speedrun folder (sft/ and rm/ inside)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--kl-coef", type=float, default=0.005)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--eval-n", type=int, default=30, help="held-out instances per task and style at each point")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--replot", action="store_true", help="only redraw the table and plot from OUT/overoptimization.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run, out = Path(args.run), Path(args.out)
    if args.replot:
        report(json.loads((out / "overoptimization.json").read_text()), out)
        return
    cells = alignment_cells(run)  # the task/style cells the run's comparisons, RM and RL worked on
    sft = load_model(run / "sft").eval()
    rm = RewardModel.from_pretrained(run / "rm").eval()

    cfg = RLConfig(**PRESETS["tiny"])
    cfg.algo, cfg.reward, cfg.reward_norm = "ppo", str(run / "rm"), "stats"
    cfg.cells = ",".join(f"{t}/{s}" for t, s in cells)
    cfg.kl_coef, cfg.lr, cfg.max_tokens = args.kl_coef, args.lr, 128
    cfg.batch_size, cfg.minibatch_size, cfg.eval_n, cfg.eval_every = 16, 8, 0, 0
    points = [{"episode": 0, **held_out_point(run / "sft", sft, rm, cells, args.eval_n, 0)}]
    for episode in range(args.eval_every, args.episodes + 1, args.eval_every):
        cfg.steps, cfg.save_every = episode, args.eval_every
        run_rl(cfg, run / "sft", out / "ppo", resume=(out / "ppo" / "checkpoint.pt").exists())
        points.append({"episode": episode, **held_out_point(out / "ppo", sft, rm, cells, args.eval_n, 0)})
        print(json.dumps(points[-1]), flush=True)
    (out / "overoptimization.json").write_text(json.dumps(points, indent=1) + "\n")
    report(points, out)


def report(points: list[dict], out: Path) -> None:
    """Print the table and draw OUT/overoptimization.png."""
    print(f"\n{'episode':>7} | {'sqrt KL':>7} | {'RM reward':>9} | {'gold':>6}")
    for p in points:
        print(f"{p['episode']:>7} | {math.sqrt(max(p['kl'], 0)):>7.2f} | {p['rm_reward']:>9.3f} | {p['gold']:>6.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # points, not lines: the KL of a checkpoint need not grow with its episode, so each point is labelled with it
    x = [math.sqrt(max(p["kl"], 0)) for p in points]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.scatter(x, [p["rm_reward"] for p in points], marker="o", label="RM reward (proxy)")
    ax.set_xlabel("sqrt(KL to SFT), nats^0.5")
    ax.set_ylabel("RM reward")
    twin = ax.twinx()
    twin.scatter(x, [p["gold"] for p in points], marker="s", color="tab:orange", label="gold (labeler)")
    for xi, p in zip(x, points):
        twin.annotate(str(p["episode"]), (xi, p["gold"]), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    twin.set_ylabel("gold score (labels: episode)")
    ax.set_title("PPO against the reward model: proxy vs gold")
    # center left: the SFT points sit at sqrt(KL) = 0, at the top and bottom of the axes
    fig.legend(loc="center left", bbox_to_anchor=(0, 0.5), bbox_transform=ax.transAxes, fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "overoptimization.png", dpi=100)
    print(f"\nplot: {out / 'overoptimization.png'}")


if __name__ == "__main__":
    main()
