"""Stage 3, the reward model: learn to predict which of two replies people (or the labeler) prefer.

"It is easier to discriminate than to generate": the SFT model's body gets a scalar `score` head
(`RewardModel.from_causal_lm`) and learns, on comparisons, that r(chosen) > r(rejected), with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin) (margin from the data, 0 when absent). The
reward of a sequence is the head's output at the token that closes the reply (see data/comparisons.py), the
position where RL reads the score of a policy sample.

Eval: pairwise accuracy on held-out comparisons (whole prompts held out, or a separate file) and the mean
and std of held-out rewards, written to RUN/reward_stats.json for RL to normalise rewards with. The run
folder is a `LlamaForSequenceClassification` checkpoint that transformers opens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketchat.chat_format import render
from pocketchat.config import TrainConfig
from pocketchat.data.comparisons import PairDataset, train_and_held_out
from pocketchat.errors import UserError
from pocketchat.files import atomic_write_json
from pocketchat.model import RewardModel
from pocketchat.tokenizer import Tokenizer
from pocketchat.train import dist
from pocketchat.train.loop import Batch, hf_export, train

STATS_FILE = "reward_stats.json"


@dataclass
class RMConfig(TrainConfig):
    data: str = ""  # comma-separated comparison JSONL files (see pocketchat.data.comparisons)
    eval_data: str = ""  # held-out comparisons; empty = hold out val_fraction of data's prompts
    val_fraction: float = 0.1
    skip_bad: bool = False  # count and skip malformed records instead of stopping at the first
    eval_batch_size: int = 32  # pairs per forward pass at eval (every held-out pair is scored)


PRESETS: dict[str, dict] = {
    "smoke": dict(steps=20, batch_size=8, seq_len=256, lr=1e-4, warmup_steps=2, weight_decay=0.0, eval_every=0,
                  save_every=0, log_every=5),
    # About two epochs of ~2,000 embedded-pipeline comparisons, minutes on 2 CPU cores from the tiny SFT model.
    "tiny": dict(steps=250, batch_size=16, seq_len=256, lr=1e-4, warmup_steps=20, min_lr_ratio=0.1,
                 weight_decay=0.0, eval_every=50, save_every=50, log_every=10),
}


def rm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_chosen - r_rejected - margin), batch rows are chosen then rejected."""
    rewards = model(batch["input_ids"], batch["lengths"]).float()
    chosen, rejected = rewards.chunk(2)
    return -F.logsigmoid(chosen - rejected - batch["margin"]).mean()


@torch.no_grad()
def pairwise_eval(model: RewardModel, data: PairDataset, batch_size: int, device) -> dict[str, float]:
    """Held-out loss, pairwise accuracy (r_chosen > r_rejected strictly) and mean/std of all rewards."""
    chosen, rejected, margins = [], [], []
    for batch in data.eval_batches(batch_size):
        r = model(batch["input_ids"].to(device), batch["lengths"].to(device)).float().cpu()
        c, rj = r.chunk(2)
        chosen.append(c)
        rejected.append(rj)
        margins.append(batch["margin"])
    c, r, m = torch.cat(chosen), torch.cat(rejected), torch.cat(margins)
    everything = torch.cat([c, r])
    return {"eval_loss": -F.logsigmoid(c - r - m).mean().item(), "accuracy": (c > r).float().mean().item(),
            "reward_mean": everything.mean().item(), "reward_std": everything.std().item(),
            "margin": (c - r).mean().item()}


def run(cfg: RMConfig, model_dir: str | Path, out: str | Path, resume: bool = False) -> list[dict]:
    from pocketchat.lora import load_model

    out = Path(out)
    if not cfg.data:
        raise UserError("rm needs comparison data: --data FILE.jsonl (pocketchat compare writes it)")
    info = dist.setup(cfg.device)
    tokenizer = Tokenizer.load(model_dir)
    model = RewardModel.from_causal_lm(load_model(model_dir, device=info.device))
    if cfg.seq_len > model.config.max_position_embeddings:
        raise UserError(f"seq_len {cfg.seq_len} is longer than the model's context ({model.config.max_position_embeddings})")

    train_data, val_data = train_and_held_out(cfg.data, cfg.eval_data, cfg.val_fraction, cfg.seed, cfg.skip_bad,
                                              tokenizer, cfg.seq_len)
    if info.is_main:
        print(f"RM: {len(train_data):,} training pairs ({train_data.truncated} truncated, {train_data.dropped} too long), "
              f"{len(val_data):,} held out")

    def evaluate(model: RewardModel) -> dict:
        record = pairwise_eval(model, val_data, cfg.eval_batch_size, info.device)
        if info.is_main:
            atomic_write_json(out / STATS_FILE, {"mean": record["reward_mean"], "std": record["reward_std"],
                                                  "accuracy": record["accuracy"], "pairs": len(val_data)})
        return record

    evals = train(model, cfg, out, lambda step, index, count: train_data.get_batch(step, cfg.batch_size, index, count),
                  info=info, loss_fn=rm_loss, evaluate=evaluate, export=hf_export(model, tokenizer), resume=resume,
                  flops_per_token=None, desc="rm")
    dist.teardown()
    return evals


# ---- pocketchat score ------------------------------------------------------------------------------------------

def conversation_ids(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """A conversation's ids up to the token that closes its last assistant turn (where the reward is read)."""
    ids, mask = render(tokenizer, messages)
    trained = [i for i, m in enumerate(mask) if m]
    if not trained:
        raise UserError("no assistant turn to score")
    return ids[:trained[-1] + 1]


@torch.no_grad()
def score_conversations(rm: RewardModel, tokenizer: Tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
    """The reward of each conversation's last assistant turn."""
    device = next(rm.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    context = rm.config.max_position_embeddings
    rows = []
    for k, messages in enumerate(conversations):
        try:
            ids = conversation_ids(tokenizer, messages)
        except UserError as e:
            raise UserError(f"conversation {k}: {e}") from e
        rows.append(ids[-context:])  # the end, where the reward is read, must stay
    rewards = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=device)
        rewards += rm(ids, torch.tensor([len(r) for r in chunk], device=device)).float().tolist()
    return rewards


def read_stats(rm_dir: str | Path) -> dict | None:
    path = Path(rm_dir) / STATS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
