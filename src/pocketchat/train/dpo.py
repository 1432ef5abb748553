"""Direct preference optimisation: the comparisons train the policy directly, no reward model, no sampling.

DPO's loss is the reward model's Bradley-Terry loss with the reward written as the policy's own log-ratio to
the frozen SFT model, r(x, y) = beta * (log pi(y|x) - log ref(y|x)):

    loss = -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

log pi(y|x) is summed over the reply's own tokens (see data/comparisons.py: not the prompt, not tool outputs).
The reference log-probs never change, so they are computed once, before training, and kept in memory; a
resumed run recomputes them from the SFT folder, which gives the same numbers.

Eval: on held-out comparisons, preference accuracy (the implicit reward ranks chosen above rejected) and the
implicit rewards; and, to compare with RL in one table, `alignment_eval.policy_eval` on held-out task prompts
(gold score, KL to the SFT model, entropy, length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketchat.alignment_eval import cells_of, first_scored, policy_eval, token_logprobs
from pocketchat.chat_format import tool_turn_renderer
from pocketchat.config import TrainConfig
from pocketchat.data.comparisons import PairDataset, train_and_held_out
from pocketchat.engine import Engine
from pocketchat.errors import UserError
from pocketchat.hardware import autocast_dtype
from pocketchat.tokenizer import Tokenizer
from pocketchat.train import dist
from pocketchat.train.loop import Batch, hf_export, train


@dataclass
class DPOConfig(TrainConfig):
    data: str = ""  # comma-separated comparison JSONL files (see pocketchat.data.comparisons)
    eval_data: str = ""  # held-out comparisons; empty = hold out val_fraction of data's prompts
    val_fraction: float = 0.1
    skip_bad: bool = False
    beta: float = 0.1  # strength of the KL leash: small beta lets the policy move further from the reference
    eval_batch_size: int = 16  # pairs per forward pass for reference log-probs and held-out accuracy
    eval_tasks: str = "add2,add,word"  # policy_eval on held-out task prompts (empty: skip it)
    eval_styles: str = "direct,cot,tool"
    eval_n: int = 20  # held-out instances per task (each asked in every style)


PRESETS: dict[str, dict] = {
    "smoke": dict(steps=20, batch_size=8, seq_len=256, lr=1e-5, warmup_steps=2, weight_decay=0.0, eval_every=0,
                  save_every=0, log_every=5, eval_tasks="add2", eval_styles="direct", eval_n=5),
    "tiny": dict(steps=200, batch_size=16, seq_len=256, lr=5e-5, warmup_steps=10, min_lr_ratio=0.1,
                 weight_decay=0.0, eval_every=50, save_every=50, log_every=10),
}


def completion_logps(model: nn.Module, batch: Batch) -> torch.Tensor:
    """[rows] sum of log p over each row's completion tokens (input position p predicts token p + 1)."""
    ids, mask = batch["input_ids"], batch["completion_mask"][:, 1:]
    return (token_logprobs(model, ids[:, :-1], ids[:, 1:], first_scored(mask)) * mask).sum(1)


def dpo_loss(model: nn.Module, batch: Batch, beta: float) -> torch.Tensor:
    ratios = completion_logps(model, batch) - batch["ref_logps"]
    chosen, rejected = ratios.chunk(2)
    return -F.logsigmoid(beta * (chosen - rejected)).mean()


@torch.no_grad()
def reference_logps(model: nn.Module, data: PairDataset, batch_size: int, device, amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [N], rejected [N]) completion log-probs under `model`, for every pair of `data` in order."""
    chosen, rejected = [], []
    for batch in data.eval_batches(batch_size):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logps = completion_logps(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()
        c, r = logps.chunk(2)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def with_reference(batch: Batch, ref: tuple[torch.Tensor, torch.Tensor]) -> Batch:
    """The batch plus the reference log-probs of its rows (chosen rows first, like input_ids)."""
    index = batch["pair_index"]
    return {**batch, "ref_logps": torch.cat([ref[0][index], ref[1][index]])}


@torch.no_grad()
def preference_eval(model: nn.Module, data: PairDataset, ref: tuple[torch.Tensor, torch.Tensor], beta: float,
                    batch_size: int, device) -> dict[str, float]:
    """Held-out DPO loss, preference accuracy and the implicit rewards beta * (log pi - log ref)."""
    chosen, rejected = [], []
    for batch in data.eval_batches(batch_size):
        batch = {k: v.to(device) for k, v in with_reference(batch, ref).items()}
        rewards = beta * (completion_logps(model, batch) - batch["ref_logps"]).float().cpu()
        c, r = rewards.chunk(2)
        chosen.append(c)
        rejected.append(r)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"eval_loss": -F.logsigmoid(c - r).mean().item(), "pref_accuracy": (c > r).float().mean().item(),
            "reward_chosen": c.mean().item(), "reward_rejected": r.mean().item(), "reward_margin": (c - r).mean().item()}


def run(cfg: DPOConfig, model_dir: str | Path, out: str | Path, resume: bool = False) -> list[dict]:
    from pocketchat.lora import load_model

    out = Path(out)
    if not cfg.data:
        raise UserError("dpo needs comparison data: --data FILE.jsonl (pocketchat compare writes it)")
    if cfg.beta <= 0:
        raise UserError(f"beta must be > 0, got {cfg.beta}")
    info = dist.setup(cfg.device)
    tokenizer = Tokenizer.load(model_dir)
    policy = load_model(model_dir, device=info.device)
    ref = load_model(model_dir, device=info.device).eval().requires_grad_(False)
    if cfg.seq_len > policy.config.max_position_embeddings:
        raise UserError(f"seq_len {cfg.seq_len} is longer than the model's context ({policy.config.max_position_embeddings})")

    train_data, val_data = train_and_held_out(cfg.data, cfg.eval_data, cfg.val_fraction, cfg.seed, cfg.skip_bad,
                                              tokenizer, cfg.seq_len)
    amp = autocast_dtype(info.device, cfg.dtype)
    ref_train = reference_logps(ref, train_data, cfg.eval_batch_size, info.device, amp)
    ref_val = reference_logps(ref, val_data, cfg.eval_batch_size, info.device, amp)
    if info.is_main:
        print(f"DPO: {len(train_data):,} training pairs ({train_data.truncated} truncated, {train_data.dropped} too long), "
              f"{len(val_data):,} held out, beta {cfg.beta}")

    tasks = [t for t in cfg.eval_tasks.split(",") if t]
    styles = [s for s in cfg.eval_styles.split(",") if s]

    def evaluate(model: nn.Module) -> dict:
        record = preference_eval(model, val_data, ref_val, cfg.beta, cfg.eval_batch_size, info.device)
        if tasks and cfg.eval_n > 0:
            engine = Engine(model, tokenizer, tool_turn=tool_turn_renderer(tokenizer))
            record |= policy_eval(engine, ref, cells_of(tasks, styles), cfg.eval_n, cfg.seed)
        return record

    evals = train(policy, cfg, out, lambda step, index, count: with_reference(train_data.get_batch(step, cfg.batch_size, index, count), ref_train),
                  info=info, loss_fn=lambda model, batch: dpo_loss(model, batch, cfg.beta), evaluate=evaluate,
                  export=hf_export(policy, tokenizer), resume=resume, flops_per_token=policy.flops_per_token(cfg.seq_len), desc="dpo")
    dist.teardown()
    return evals
