"""The one training loop every stage shares: pretrain, SFT, reward model, DPO and the RL learner.

A stage supplies the model, a deterministic batch function and (optionally) its loss and eval; the loop owns
the rest: the optimizer (AdamW or Muon, optim.py), warmup + decay, gradient accumulation, clipping, bf16 autocast, DDP or
FSDP2, periodic eval, metrics (JSONL + TensorBoard), a progress bar, and atomic checkpoints that make
`--resume` continue bit for bit.

Exact resume rests on one rule: the batch for step s is a pure function of s (`get_batch(step, index, count)`),
so the data position is just the step number, saved with the model, optimizer, scheduler and RNG states.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pocketchat.chat_format import CHAT_TEMPLATE
from pocketchat.config import TrainConfig
from pocketchat.errors import UserError
from pocketchat.files import atomic_write, atomic_write_json, publish_checkpoint, recover
from pocketchat.hardware import autocast_dtype, check_compile, matmul_flops
from pocketchat.train import dist
from pocketchat.train.optim import build_optimizer

CHECKPOINT = "checkpoint.pt"

Batch = dict[str, torch.Tensor]
# get_batch(step, index, count): the index-th of `count` equal slices of step's global batch.
BatchFn = Callable[[int, int, int], Batch]


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy; targets are -100 where no loss is taken (padding, masked prompt tokens)."""
    return model(batch["input_ids"], batch["targets"], position_ids=batch.get("position_ids"), attn_mask=batch.get("attn_mask"))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine or linear decay to min_lr_ratio (or constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLog:
    """metrics.jsonl plus TensorBoard, written by rank 0. On resume, records past the checkpoint are dropped.

    Evals run before the checkpoint of their step, so the records the checkpoint at step s vouches for are
    exactly those with 0 < step <= s (the RL loop's step-0 baseline is rerun when no checkpoint exists yet).
    They are kept, and not written again when a finished run is resumed and evaluates its last step again."""

    def __init__(self, out_dir: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.start_step = start_step
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if 0 < _record_step(line) <= start_step]
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step or None)
        except ImportError:  # tensorboard is a dependency, but a stripped install still trains
            pass

    def write(self, record: dict) -> None:
        if not self.enabled or 0 < record["step"] <= self.start_step:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _record_step(line: str) -> int:
    """A record's step; -1 for a line a kill cut short while it was being appended (it is dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return -1


def train(
    model: nn.Module,
    cfg: TrainConfig,
    out_dir: str | Path,
    get_batch: BatchFn,
    *,
    info: dist.DistInfo,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = lm_loss,
    evaluate: Callable[[nn.Module], dict] | None = None,
    export: Callable[[dict, Path], None] | None = None,
    resume: bool = False,
    flops_per_token: float | None = None,
    desc: str = "train",
) -> list[dict]:
    """Train `model` (already on info.device) for cfg.steps optimizer steps on batches from get_batch. Returns
    the eval records.

    export(state_dict, dir) writes the deployable artifact (an HF folder, `hf_export`) at every checkpoint."""
    raw = model
    n_micro, micro = micro_batches(cfg, info.world_size)
    amp = autocast_dtype(info.device, cfg.dtype)
    torch.manual_seed(cfg.seed)

    sharded = cfg.fsdp and info.world_size > 1
    if sharded:  # FSDP2 turns parameters into DTensors in place: shard before the optimizer sees them
        dist.wrap(raw, info, fsdp=True)
    if sharded and cfg.optimizer == "muon":
        raise UserError("--optimizer=muon does not support --fsdp (it orthogonalizes whole matrices); use DDP")
    optimizer, scheduler = optimizer_and_schedule(raw, cfg, fused=info.device.type in ("cpu", "cuda") and not sharded)
    model = raw if sharded else dist.wrap(raw, info, fsdp=False)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    if cfg.compile:  # the training step only: evals and samples run eager, with shapes of their own
        check_compile(info.device)
        model = torch.compile(model)
    peak = matmul_flops(info.device.type, amp or torch.float32) if flops_per_token else None
    last = time.perf_counter()

    def step_fn(step: int) -> dict:
        nonlocal last
        loss_sum, tokens = 0.0, 0
        for m in range(n_micro):
            batch = {k: v.to(info.device, non_blocking=True) for k, v in get_batch(step, info.rank * n_micro + m, info.world_size * n_micro).items()}
            # DDP: only the last micro-batch all-reduces gradients.
            sync = m == n_micro - 1 or not ddp
            with (model.no_sync() if not sync else nullcontext()), torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model, batch) / n_micro
            loss.backward()
            loss_sum += loss.item()
            tokens += batch["input_ids"].numel() * info.world_size
        grad_norm = optimizer_step(model, optimizer, cfg.grad_clip)
        if not math.isfinite(loss_sum):
            raise RuntimeError(f"loss became {loss_sum} at step {step}; lower the learning rate or check the data")
        now = time.perf_counter()
        metrics = {"train_loss": loss_sum, "tokens_per_s": tokens / (now - last)}  # eval and save time included
        last = now
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        if peak:
            metrics["mfu"] = metrics["tokens_per_s"] * flops_per_token / (peak * info.world_size)
        return metrics

    def run_eval() -> dict:
        model.eval()
        with torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            record = evaluate(raw)
        model.train()
        return record

    model.train()
    return run_steps(step_fn, raw, optimizer, scheduler, cfg, out_dir, info=info,
                     evaluate=run_eval if evaluate is not None else None, export=export, resume=resume, sharded=sharded,
                     desc=desc, show=("train_loss", "tokens_per_s", "mfu"))


# How the progress bar shows a logged metric: its short name and format ("mfu=42%", "tok_s=10,880").
BAR = {"train_loss": ("loss", "{:.3f}"), "tokens_per_s": ("tok_s", "{:,.0f}"), "mfu": ("mfu", "{:.0%}"),
       "reward": ("reward", "{:.3f}"), "kl": ("kl", "{:.3f}")}

def run_steps(step_fn: Callable[[int], dict], model: nn.Module, optimizer, scheduler, cfg: TrainConfig,
              out_dir: str | Path, *, info: dist.DistInfo, evaluate: Callable[[], dict] | None = None,
              export: Callable[[dict, Path], None] | None = None, resume: bool = False, sharded: bool = False,
              eval_at_start: bool = False, desc: str = "train", show: tuple[str, ...] = ()) -> list[dict]:
    """The loop every stage runs its steps in (`train` for batches, RL's episodes): resume, steps
    start..cfg.steps, the schedule stepped once per step, metrics, periodic eval, atomic checkpoints.

    step_fn(step) does step `step`'s optimizer step(s) and returns its metrics; every log_every steps each is
    logged as its mean over those steps and the ranks, with the learning rate the step used. evaluate() runs
    every eval_every steps, at the end, and with eval_at_start before the first step of a new run (a baseline).
    model is the unwrapped module the checkpoint holds, with optimizer and scheduler. Returns the eval records."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start_step = load_checkpoint(out_dir, model, optimizer, scheduler, cfg, info, sharded) if resume else 0
    log = MetricsLog(out_dir, start_step, info.is_main)
    if info.is_main:
        atomic_write_json(out_dir / "train_config.json", asdict(cfg))
    evals: list[dict] = []

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        with torch.no_grad():
            record = {"step": step, **evaluate()}
        evals.append(record)
        log.write(record)
        if info.is_main:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in record.items()))

    def save(step: int) -> None:
        save_checkpoint(out_dir, model, optimizer, scheduler, step, cfg, info, export, sharded)

    if eval_at_start and start_step == 0:
        run_eval(0)
    window: dict[str, list[float]] = defaultdict(list)
    bar = tqdm(total=cfg.steps, initial=start_step, desc=desc, disable=not info.is_main, dynamic_ncols=True)
    for step in range(start_step, cfg.steps):
        metrics = step_fn(step)
        metrics["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        for k, v in metrics.items():
            window[k].append(v)
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            means = dist.mean_across_ranks([sum(v) / len(v) for v in window.values()])
            record = {"step": done, **dict(zip(window, means))}
            log.write(record)
            bar.set_postfix({BAR[k][0]: BAR[k][1].format(record[k]) for k in show if k in record})
            window.clear()
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            run_eval(done)  # before the save: a checkpoint never lacks the eval of its own step
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
            save(done)
    bar.close()
    if start_step < cfg.steps or not evals:
        run_eval(cfg.steps)
    save(cfg.steps)
    log.close()
    return evals


def optimizer_and_schedule(model: nn.Module, cfg: TrainConfig, fused: bool):
    """cfg's optimizer over model's parameters (optim.py) and its warmup + decay, a LambdaLR the loop steps."""
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), fused=fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


def optimizer_step(model: nn.Module, optimizer, grad_clip: float) -> float | None:
    """Clip the gradients to grad_clip (if > 0), step and zero them; returns the norm before clipping."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip).item() if grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def hf_export(model: nn.Module, tokenizer, save_weights: Callable[[dict, Path], None] | None = None
              ) -> Callable[[dict, Path], None]:
    """The export every stage's checkpoints carry: an HF folder of the weights (model.save_pretrained, or
    save_weights, e.g. a LoRA adapter) and the tokenizer with its chat template (ChatML when it has none)."""
    def export(state: dict, path: Path) -> None:
        (save_weights or model.save_pretrained)(path, state_dict=state)
        tokenizer.save(path, chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
                       model_max_length=model.config.max_position_embeddings)
    return export


def micro_batches(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-batches per rank per step, sequences per micro-batch), checked to divide the global batch."""
    per_rank, rest = divmod(cfg.batch_size, world_size)
    if rest:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {world_size} processes")
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise UserError(f"batch_size per process ({per_rank}) is not divisible by micro_batch_size {micro}")
    return per_rank // micro, micro


# ---- checkpoints ------------------------------------------------------------------------------------------

def _full_state(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """Model and optimizer state as plain full tensors, gathered from the shards under FSDP."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), optimizer.state_dict()


def save_checkpoint(out_dir, model, optimizer, scheduler, step, cfg, info, export, sharded) -> None:
    """checkpoint.pt (everything needed to resume) and the exported model folder, published together in one
    rename (files.publish_checkpoint): a kill mid-save leaves the previous checkpoint, whole."""
    model_state, optim_state = _full_state(model, optimizer, sharded)
    if info.is_main:
        state = {
            "step": step,
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "config": asdict(cfg),
        }

        def write(folder: Path) -> None:
            torch.save(state, folder / CHECKPOINT)
            if export is not None:
                export(model_state, folder)

        publish_checkpoint(out_dir, step, write)
    dist.barrier()


def load_checkpoint(out_dir: Path, model, optimizer, scheduler, cfg: TrainConfig, info: dist.DistInfo, sharded: bool) -> int:
    if info.is_main:
        recover(out_dir)  # what a killed save left: gone before anyone reads the folder
    dist.barrier()
    path = out_dir / CHECKPOINT
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which one
        raise UserError(f"{path}: cannot read checkpoint ({e})") from None
    changed = {k for k, v in state["config"].items() if k in ("batch_size", "seq_len", "seed") and getattr(cfg, k) != v}
    if changed:
        raise UserError(f"--resume: {', '.join(sorted(changed))} differ from the checkpoint's config; exact resume needs them equal")
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["step"]
