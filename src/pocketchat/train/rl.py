"""Stage 4, reinforcement learning: push the SFT model toward completions a reward scores high, on a KL leash.

Two algorithms share one episode structure (sample with the engine, score, update several times):
- PPO: per-token reward = -kl_coef * KL(policy || SFT) at every sampled token, plus the sequence score
  (reward model at end of turn, or the task checker) at the last one; advantages by GAE from a critic whose
  value head starts as the reward model; clipped policy and value losses.
- GRPO: k samples per prompt, advantage = the sample's score normalised within its group; no critic; an
  optional KL term (k3) in the loss.

An episode is not a pure function of a batch index (its data comes from the policy itself), so it is a step of
its own in the shared loop (`loop.run_steps`, as `loop.train`'s batches are): the loop owns the schedule,
metrics, evals and the atomic checkpoint with optimizer/scheduler/RNG state. Exact `--resume` holds because every
random choice of step s (prompts, sampling seeds, minibatch order) is seeded by (seed, s), and the controller
state (KL coefficient, running reward moments) lives in buffers of the checkpointed module.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pocketchat.alignment_eval import (Cell, SharedPrompts, cells_of, first_scored, policy_eval, scored_logprobs,
                                       token_logprobs)
from pocketchat.chat_format import render_prompt, renderable, tool_turn_renderer
from pocketchat.config import TrainConfig
from pocketchat.engine import Completion, Engine, SamplingParams
from pocketchat.errors import UserError
from pocketchat.hardware import autocast_dtype, check_compile
from pocketchat.labeler import ProgrammaticLabeler
from pocketchat.model import CausalLM, RewardModel
from pocketchat.tasks import Example, check, format_ok, get_task, prompt_messages
from pocketchat.tasks.registry import check_style
from pocketchat.tokenizer import Tokenizer
from pocketchat.train import dist
from pocketchat.train.loop import hf_export, optimizer_and_schedule, optimizer_step, run_steps
from pocketchat.train.rl_math import (adaptive_kl_coef, clipped_policy_loss, clipped_value_loss, gae, group_advantages,
                                      kl_estimate, masked_mean, masked_whiten, moments_std, update_moments)


@dataclass
class RLConfig(TrainConfig):
    """steps = episodes (rollout + update); batch_size = completions per episode; micro_batch_size = sequences
    per learner forward (0: a whole minibatch). lr_schedule advances once per episode."""

    algo: str = "ppo"  # ppo | grpo
    reward: str = "task"  # "task" (task checker: 1 if right, + format_bonus if well formatted) or a reward-model folder
    tasks: str = "add2,add,word"  # training prompts: train-split instances of these tasks
    styles: str = "direct,cot,tool"  # ... asked in these styles (a task x style is a "cell")
    cells: str = ""  # instead of tasks x styles, these cells: "add2/tool,count_letters/direct"
    probe_n: int = 0  # > 0: before training, sample probe_samples replies to probe_n train prompts per cell and
    probe_samples: int = 4  # keep only the cells whose pass rate lies in [pass_min, pass_max] (0: train on all)
    pass_min: float = 0.1  # below: the policy almost never succeeds, so its groups carry no signal
    pass_max: float = 0.9  # above: nothing left to learn
    dynamic_sampling: bool = False  # GRPO: drop groups whose samples all score the same and sample more prompts
    max_rollout_rounds: int = 3  # dynamic sampling: rollouts per episode at most, to fill the batch
    train_prompts: int = 2000  # instances per task in the prompt pool
    group_size: int = 4  # samples per prompt (GRPO's group; PPO is fine with 1)
    max_tokens: int = 64  # completion tokens per sample, forced tool turns included
    epochs: int = 4  # passes over each episode's samples
    minibatch_size: int = 8  # samples per optimizer step
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # how far one update may move a value from its rollout estimate
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True  # PPO: normalise GAE advantages over the episode
    kl_coef: float = 0.05  # PPO: weight of the per-token KL penalty in the reward; GRPO: of the KL loss term
    kl_estimator: str = "auto"  # k1 | k3 | auto (k1 for PPO's reward penalty, k3 for GRPO's loss term)
    kl_target: float = 0.0  # > 0: adapt kl_coef toward this KL per sequence (Ziegler et al.'s controller)
    kl_horizon: int = 10000
    reward_norm: str = "none"  # none | stats (the RM folder's reward_stats.json) | running (stats of all scores so far)
    reward_clip: float = 0.0  # clip normalised scores to [-reward_clip, reward_clip]; 0: off
    missing_eos_penalty: float = 1.0  # subtracted from the score of a completion that hit max_tokens
    format_bonus: float = 0.0  # task reward: added when the completion has the asked format
    ptx_coef: float = 0.0  # > 0: add this times the SFT loss on a batch of the embedded SFT mixture to every
    ptx_batch_size: int = 8  # optimizer step (InstructGPT's PPO-ptx: keeps the skills RL does not train on)
    direct_equations: bool = False  # the mixture as SFT saw it (SFTConfig.direct_equations)
    eval_n: int = 50  # held-out instances per task and style at each eval; 0: no eval

    def kl_kind(self) -> str:
        return {"auto": "k1" if self.algo == "ppo" else "k3"}.get(self.kl_estimator, self.kl_estimator)


PRESETS: dict[str, dict] = {
    "smoke": dict(steps=4, batch_size=8, minibatch_size=4, group_size=4, max_tokens=32, epochs=2, lr=1e-5,
                  warmup_steps=0, schedule="constant", eval_every=0, save_every=0, log_every=1, tasks="add2",
                  styles="direct", train_prompts=50, eval_n=8),
    # 150 episodes of 32 from the tiny SFT model (the default speedrun runs 25 episodes of 16).
    "tiny": dict(steps=150, batch_size=32, minibatch_size=16, group_size=4, max_tokens=64, epochs=2, lr=1e-5,
                 warmup_steps=5, schedule="constant", weight_decay=0.0, eval_every=50, save_every=50, log_every=1,
                 eval_n=50),
}


@dataclass
class RLPrompt:
    """One prompt to sample from, and what a reward function needs to judge the answer."""

    ids: list[int]
    tools: bool = False  # let the engine run tool calls (the tool style)
    example: Example | None = None
    style: str = ""


@dataclass
class Rollout:
    """An episode's samples as right-padded tensors. full = prompt + completion; the learner feeds
    full[:, :-1] and predicts full[:, 1:]; mask marks predictions of sampled (not forced) completion tokens."""

    prompts: list[RLPrompt]
    completions: list[Completion]
    full: torch.Tensor  # [B, T+1] token ids
    lengths: torch.Tensor  # [B] real tokens in each row of full
    mask: torch.Tensor  # [B, T] bool
    engine_logprobs: torch.Tensor  # [B, T], the engine's log p of each completion token (0 elsewhere)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.full[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.full[:, 1:]

    def shared_prompts(self, rows: torch.Tensor, width: int) -> SharedPrompts | None:
        """Which of these rows (indices, fed `width` inputs wide) have the same prompt, as a GRPO group's do."""
        return SharedPrompts.find([self.prompts[i].ids for i in rows.tolist()], width, self.full.device)

    def teacher_forced(self, rows: torch.Tensor) -> tuple[int, tuple]:
        """(width, (input_ids, targets, first, shared)): what a teacher-forced pass over these rows (indices) feeds,
        trimmed to the widest of them and scored from the first position any of them scores."""
        width = int(self.lengths[rows].max()) - 1
        return width, (self.input_ids[rows, :width], self.targets[rows, :width], first_scored(self.mask[rows, :width]),
                       self.shared_prompts(rows, width))

    def rows(self, part: slice) -> "Rollout":
        return Rollout(self.prompts[part], self.completions[part], self.full[part], self.lengths[part], self.mask[part],
                       self.engine_logprobs[part])


# A reward function scores each sample of a rollout: [B] floats. So does a gold function (logged, not trained on).
RewardFn = Callable[[Rollout], torch.Tensor]


def make_rollout(prompts: list[RLPrompt], completions: list[Completion], pad_id: int, device) -> Rollout:
    rows = [p.ids + c.token_ids for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    full = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    logprobs = torch.zeros(len(rows), width - 1)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        full[i, : len(rows[i])] = torch.tensor(rows[i])
        start = len(p.ids) - 1  # the input position that predicts the first completion token
        mask[i, start : start + len(c.token_ids)] = torch.tensor([not f for f in c.forced])
        if c.logprobs is not None:
            logprobs[i, start : start + len(c.token_ids)] = torch.tensor(c.logprobs)
    lengths = torch.tensor([len(r) for r in rows])
    return Rollout(prompts, completions, full.to(device), lengths.to(device), mask.to(device), logprobs.to(device))


class Learner(nn.Module):
    """Everything the optimizer updates and the checkpoint restores: the policy, the critic (PPO only) and,
    as buffers, the controller state a resumed run must continue from."""

    def __init__(self, policy: CausalLM, critic: RewardModel | None, kl_coef: float):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.register_buffer("kl_coef", torch.tensor(kl_coef, dtype=torch.float64))
        self.register_buffer("moments", torch.zeros(3, dtype=torch.float64))  # running score count, mean, m2

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, first: int = 0,
                shared: SharedPrompts | None = None, ptx: dict | None = None, with_entropy: bool = False):
        """(log p of targets from position `first` on, the entropy there (no gradient) or None, critic values or
        None, the SFT loss on batch ptx or None) in one call, so that under DDP each backward follows exactly one
        forward of the wrapped module. shared: rows with the same prompt, which the policy then feeds once."""
        logp, entropy = scored_logprobs(self.policy, input_ids, targets, first, shared, with_entropy)
        values = self.critic(input_ids, "all").float() if self.critic is not None else None
        ptx_loss = self.policy(ptx["input_ids"], ptx["targets"], position_ids=ptx["position_ids"],
                               attn_mask=ptx["attn_mask"]) if ptx is not None else None
        return logp, entropy, values, ptx_loss


class RLTrainer:
    """One `step` = one episode: sample `batch_size` completions with the engine, score them, update.

    Under torchrun (info.world_size W > 1) each rank samples, scores and teacher-forces its own 1/W of the
    episode's rows; the ranks then share them (a few [B, T] tensors and the completions), so every rank holds the
    whole episode and computes advantages, whitening, KL and the controller exactly as one process would. Each
    minibatch is split W ways and the update runs under DDP, which all-reduces the gradients: the same optimizer
    steps as one process with the same global batch."""

    def __init__(self, cfg: RLConfig, policy: CausalLM, tokenizer: Tokenizer, ref: CausalLM, reward_fn: RewardFn, *,
                 critic: RewardModel | None = None, gold_fn: RewardFn | None = None,
                 reward_stats: tuple[float, float] | None = None, ptx_data=None, info: dist.DistInfo | None = None):
        validate(cfg)
        self.device = next(policy.parameters()).device
        self.info = info or dist.DistInfo(rank=0, local_rank=0, world_size=1, device=self.device)
        check_split(cfg, self.info.world_size)
        if (cfg.algo == "ppo") != (critic is not None):
            raise UserError(f"algo {cfg.algo} {'needs' if cfg.algo == 'ppo' else 'takes no'} critic")
        if cfg.reward_norm == "stats" and reward_stats is None:
            raise UserError("reward_norm=stats needs the reward model's reward_stats.json (mean and std)")
        self.cfg, self.tokenizer, self.ref = cfg, tokenizer, ref.eval().requires_grad_(False)
        self.reward_fn, self.gold_fn, self.reward_stats = reward_fn, gold_fn, reward_stats
        if cfg.ptx_coef > 0 and ptx_data is None:
            raise UserError("ptx_coef > 0 needs SFT data to mix in (ptx_data)")
        self.ptx_data = ptx_data  # an SFTDataset: get_batch(i, batch_size) is a pure function of i
        self.learner = Learner(policy, critic, cfg.kl_coef).to(self.device)
        self.model = dist.wrap(self.learner, self.info, fsdp=False)  # what the update runs through: DDP under torchrun
        if cfg.compile:  # the update's forward and backward, and the engine's decode step (below)
            check_compile(self.device)
            self.model = torch.compile(self.model, dynamic=True)  # each micro-batch is as wide as its longest row
        self.optimizer, self.scheduler = optimizer_and_schedule(self.learner, cfg, fused=self.device.type in ("cpu", "cuda"))
        # samples from the live weights: no copy to sync, and a compiled step that reads them as inputs (not frozen)
        self.engine = Engine(policy, tokenizer, compile=cfg.compile, freeze=False, tool_turn=tool_turn_renderer(tokenizer))
        self.amp = autocast_dtype(self.device, cfg.dtype)
        # The engine samples from these very weights in fp32. When the learner also runs in fp32 (no autocast), the
        # engine's log-probs are the old policy's, equal to a teacher-forced pass to float rounding (tested), so
        # that pass is skipped; under autocast they differ by bf16 rounding, and the learner's own are recomputed.
        self.old_logprobs_from_engine = self.amp is None and self.engine.dtype == torch.float32
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id

    @property
    def policy(self) -> CausalLM:
        return self.learner.policy

    @property
    def critic(self) -> RewardModel | None:
        return self.learner.critic

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    # ---- one episode ----------------------------------------------------------------------------------------

    def rollout(self, step: int, prompts: list[RLPrompt], rnd: int = 0) -> Rollout:
        """group_size samples of each prompt (consecutive rows), each with its own seed drawn from (seed, step,
        rollout round)."""
        cfg = self.cfg
        prompts = [p for p in prompts for _ in range(cfg.group_size)]
        rng = random.Random(f"rl-sample/{cfg.seed}/{step}" + (f"/{rnd}" if rnd else ""))
        params = [SamplingParams(temperature=1.0, max_tokens=cfg.max_tokens, logprobs=True, tools=p.tools,
                                 seed=rng.getrandbits(62)) for p in prompts]
        mine = self.my_rows(len(prompts))  # seeds are drawn for every row first: a row samples the same on any rank
        completions = dist.gather_lists(self.engine.generate([p.ids for p in prompts[mine]], params[mine]))
        return make_rollout(prompts, completions, self.pad_id, self.device)

    def my_rows(self, n: int) -> slice:
        """This rank's contiguous share of an episode's n rows."""
        per = n // self.info.world_size
        return slice(self.info.rank * per, (self.info.rank + 1) * per)

    def score(self, fn: RewardFn, ro: Rollout) -> torch.Tensor:
        """fn's [B] scores of the whole rollout, each rank scoring its own rows."""
        return dist.gather_rows(fn(ro.rows(self.my_rows(len(ro.lengths)))).float().to(self.device))

    def collect(self, step: int, prompts: list[RLPrompt], more_prompts: Callable[[int], list[RLPrompt]] | None
                ) -> tuple[Rollout, Rollout, torch.Tensor, torch.Tensor, dict]:
        """(samples to learn from, round 0's samples, round 0's raw scores, processed scores of the samples to
        learn from, sampling stats). With dynamic sampling (DAPO), groups whose processed scores are all equal
        are dropped (their advantages are 0: they would only dilute the update) and more_prompts(round) gives
        prompts for further rollouts until the batch is full of groups that carry signal, or max_rollout_rounds
        is reached. The logged reward and gold are round 0's: the policy as it is."""
        cfg = self.cfg
        ro = self.rollout(step, prompts)
        with torch.no_grad(), self.autocast():
            raw = self.score(self.reward_fn, ro)
        scores = self.process_scores(raw, ro)
        if not (cfg.dynamic_sampling and cfg.algo == "grpo"):
            return ro, ro, raw, scores, {}
        k, need = cfg.group_size, len(prompts)
        kept: list[tuple[RLPrompt, Completion, float]] = []
        sampled_groups = informative_groups = 0
        first, first_scores, rnd = ro, scores, 0
        while True:
            groups = scores.view(-1, k)
            informative = (groups.max(1).values - groups.min(1).values) > 1e-6
            sampled_groups += len(informative)
            informative_groups += int(informative.sum())
            for g in informative.nonzero().flatten().tolist():
                kept += [(ro.prompts[i], ro.completions[i], scores[i].item()) for i in range(g * k, (g + 1) * k)]
            rnd += 1
            if len(kept) >= need * k or rnd >= cfg.max_rollout_rounds or more_prompts is None:
                break
            ro = self.rollout(step, more_prompts(rnd), rnd)
            with torch.no_grad(), self.autocast():
                scores = self.process_scores(self.score(self.reward_fn, ro), ro)
        stats = {"groups_informative": informative_groups / sampled_groups, "rollout_rounds": rnd}
        if not kept:  # nothing to learn from this episode: update on round 0 (only the KL term acts)
            return first, first, raw, first_scores, stats | {"groups_kept": 0.0}
        kept = kept[: need * k]
        stats["groups_kept"] = len(kept) / (need * k)
        ro = make_rollout([p for p, _, _ in kept], [c for _, c, _ in kept], self.pad_id, self.device)
        return ro, first, raw, torch.tensor([x for _, _, x in kept], device=self.device), stats

    def step(self, step: int, prompts: list[RLPrompt], more_prompts: Callable[[int], list[RLPrompt]] | None = None) -> dict:
        """Run episode `step` on `prompts` (batch_size / group_size of them); return its metrics. more_prompts(r)
        gives the prompts of extra rollout round r (dynamic sampling)."""
        cfg = self.cfg
        if len(prompts) * cfg.group_size != cfg.batch_size:
            raise UserError(f"episode {step}: {len(prompts)} prompts x group_size {cfg.group_size} != batch_size {cfg.batch_size}")
        t0 = time.perf_counter()
        ro, first, raw, scores, sampling = self.collect(step, prompts, more_prompts)
        t1 = time.perf_counter()
        mask = ro.mask
        with torch.no_grad(), self.autocast():
            old_logp = (ro.engine_logprobs if self.old_logprobs_from_engine else
                        self._batched(lambda *xs: (token_logprobs(self.policy, *xs),), ro)[0])
            ref_logp, = self._batched(lambda *xs: (token_logprobs(self.ref, *xs),), ro)
            old_values = self._batched(lambda x, *_: (self.critic(x, "all").float(),), ro)[0] if self.critic else None
            gold = self.score(self.gold_fn, first) if self.gold_fn else None
        kl = kl_estimate(old_logp, ref_logp, cfg.kl_kind()) * mask
        seq_kl = kl.sum(1).mean().item()
        kl_coef = self.learner.kl_coef.item()
        if cfg.algo == "ppo":
            rewards = -kl_coef * kl
            last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)  # each row's last sampled token
            rewards[torch.arange(len(last)), last] += scores
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        else:
            advantages, returns = group_advantages(scores, cfg.group_size).unsqueeze(1) * mask, None
        stats = self.update(step, ro, advantages, returns, old_logp, old_values, ref_logp)
        t2 = time.perf_counter()
        if cfg.kl_target > 0:
            self.learner.kl_coef.fill_(adaptive_kl_coef(kl_coef, seq_kl, cfg.kl_target, cfg.kl_horizon, cfg.batch_size))

        sampled = sum(len(c.token_ids) for c in ro.completions)
        processed = cfg.epochs * int(ro.lengths.sum() - len(ro.lengths))
        metrics = {
            "reward": raw.mean().item(),
            **({"gold": gold.mean().item()} if gold is not None else {}),
            "score": scores.mean().item(),  # what the learner saw: normalised, clipped, minus the missing-end penalty
            "kl": seq_kl,  # per sequence, the configured estimator
            "kl_coef": kl_coef,
            "length": sampled / len(ro.completions),
            "ended": sum(c.finish_reason != "length" for c in ro.completions) / len(ro.completions),
            **stats,
            **sampling,
            "rollout_tokens_per_s": sampled / (t1 - t0),
            "update_tokens_per_s": processed / (t2 - t1),
            "tokens_per_s": sampled / (t2 - t0),
            "episode_s": t2 - t0,
        }
        return metrics

    def process_scores(self, raw: torch.Tensor, ro: Rollout) -> torch.Tensor:
        """Raw sequence scores -> what the learner optimises: whitened, clipped, penalised for not ending."""
        cfg, scores = self.cfg, raw
        if cfg.reward_norm == "stats":
            mean, std = self.reward_stats
            scores = (scores - mean) / max(std, 1e-8)
        elif cfg.reward_norm == "running":
            count, mean, m2 = update_moments(*self.learner.moments.tolist(), raw)
            self.learner.moments.copy_(torch.tensor([count, mean, m2]))
            scores = (scores - mean) / max(moments_std(count, m2), 1e-8)
        if cfg.reward_clip > 0:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        unfinished = torch.tensor([c.finish_reason == "length" for c in ro.completions], device=scores.device)
        return scores - cfg.missing_eos_penalty * unfinished.float()

    def update(self, step: int, ro: Rollout, advantages, returns, old_logp, old_values, ref_logp) -> dict:
        """cfg.epochs passes over the episode in shuffled minibatches, one optimizer step each. The shuffle moves
        whole groups (a group's rows are consecutive), so that a micro-batch feeds each of its prompts once
        (`SharedPrompts`); with group_size 1 it is a plain shuffle of the rows. A minibatch is
        split into the ranks' shares and those into micro-batches, whose token-weighted losses add up to the
        minibatch's mean over actions (DDP averages the ranks' gradients, so each rank's part is scaled by W).
        The first epoch's forwards also give the policy's entropy on every sampled token and, on the rows of the
        first optimizer step (still the sampling weights), the gap between the learner's and the engine's
        log-probs."""
        cfg = self.cfg
        B, W = len(ro.lengths), self.info.world_size
        micro_size = cfg.micro_batch_size or cfg.minibatch_size
        order_rng = torch.Generator().manual_seed(random.Random(f"rl-order/{cfg.seed}/{step}").getrandbits(62))
        shares: dict[str, float] = defaultdict(float)  # this rank's part of each minibatch mean, summed over steps
        totals: dict[str, float] = defaultdict(float)  # the same on every rank
        first_pass = torch.zeros(4, dtype=torch.float64)  # this rank's entropy sum, tokens, |gap| sum, tokens
        n_steps = 0
        self.model.train()
        G = cfg.group_size
        for epoch in range(cfg.epochs):
            order = (torch.randperm(B // G, generator=order_rng)[:, None] * G + torch.arange(G)).flatten()
            for mb in order.to(self.device).split(cfg.minibatch_size):
                mb_tokens = ro.mask[mb].sum()
                micros = mb.tensor_split(W)[self.info.rank].split(micro_size)
                for i, micro in enumerate(micros):
                    last = i == len(micros) - 1
                    width, inputs = ro.teacher_forced(micro)
                    cut = lambda x: x[micro, :width]
                    mask = cut(ro.mask)
                    weight = mask.sum() / mb_tokens
                    # the SFT loss on batch (step, i) of the mixture (far fewer than 1000 steps an episode), once per
                    # optimizer step; every rank computes it on the whole batch, so DDP's average leaves it as it is
                    ptx = ({k: v.to(self.device) for k, v in
                            self.ptx_data.get_batch(step * 1000 + n_steps, cfg.ptx_batch_size).items()}
                           if last and cfg.ptx_coef > 0 else None)
                    # DDP: only the last micro-batch of a step all-reduces gradients
                    with (self.model.no_sync() if W > 1 and not last else nullcontext()), self.autocast():
                        logp, entropy, values, ptx_loss = self.model(*inputs, ptx, epoch == 0)
                    if epoch == 0:  # entropy on every row; the learner/engine gap while the weights are the sampler's
                        sums = [(entropy * mask).sum(), mask.sum()]
                        if n_steps == 0:
                            sums += [((logp.detach() - cut(ro.engine_logprobs)).abs() * mask).sum(), mask.sum()]
                        first_pass[:len(sums)] += torch.stack(sums).double().cpu()
                    pg_loss, clip_frac = clipped_policy_loss(logp, cut(old_logp), cut(advantages), mask, cfg.clip)
                    loss = pg_loss
                    parts = {"policy_loss": pg_loss, "clip_frac": clip_frac,
                             "approx_kl": masked_mean(cut(old_logp) - logp, mask)}  # drift from the sampling policy
                    if values is not None:
                        v_loss, v_clip = clipped_value_loss(values, cut(old_values), cut(returns), mask, cfg.value_clip)
                        loss = loss + cfg.vf_coef * v_loss
                        parts |= {"value_loss": v_loss, "value_clip_frac": v_clip}
                    elif cfg.kl_coef > 0:  # GRPO's KL term in the loss
                        kl_loss = masked_mean(kl_estimate(logp, cut(ref_logp), cfg.kl_kind()), mask)
                        loss = loss + cfg.kl_coef * kl_loss
                        parts["kl_loss"] = kl_loss
                    loss = loss * weight * W
                    if ptx_loss is not None:
                        loss = loss + cfg.ptx_coef * ptx_loss
                        totals["ptx_loss"] += ptx_loss.item()
                    loss.backward()
                    for k, v in parts.items():
                        shares[k] += (v.detach() * weight).item()
                grad_norm = optimizer_step(self.learner, self.optimizer, cfg.grad_clip)
                if grad_norm is not None:
                    totals["grad_norm"] += grad_norm
                n_steps += 1
        self.model.eval()
        *shares_summed, ent, ent_n, gap, gap_n = dist.sum_across_ranks(list(shares.values()) + first_pass.tolist())
        totals |= zip(shares, shares_summed)
        return {k: v / n_steps for k, v in totals.items()} | {"entropy": ent / max(ent_n, 1),
                                                             "logprob_gap": gap / max(gap_n, 1)}

    def _batched(self, fn, ro: Rollout) -> tuple[torch.Tensor, ...]:
        """fn(input_ids, targets, first, shared) -> tensors [b, t], run in micro-batches, each trimmed to the width
        and from the first position its rows score (`first`), then right-padded back to [B, T]; `shared` says which
        rows of the micro-batch have the same prompt."""
        micro = self.cfg.micro_batch_size or self.cfg.minibatch_size
        T = ro.mask.shape[1]
        parts = []
        for rows in torch.arange(len(ro.lengths)).split(micro):
            width, inputs = ro.teacher_forced(rows)
            parts.append([F.pad(x, (0, T - width)) for x in fn(*inputs)])
        return tuple(torch.cat(list(xs)) for xs in zip(*parts))


# ---- the episode loop ------------------------------------------------------------------------------------------

def fit(trainer: RLTrainer, out: str | Path, prompts_for: Callable[..., list[RLPrompt]], *,
        evaluate: Callable[[CausalLM], dict] | None = None, export: Callable[[dict, Path], None] | None = None,
        resume: bool = False) -> list[dict]:
    """Run episodes start..cfg.steps in the shared loop (`loop.run_steps`): metrics.jsonl every log_every
    episodes (means over the window), eval of the policy at the start (the SFT model's numbers: the baseline RL
    is measured against), every eval_every and at the end, atomic checkpoints every save_every and at the end,
    each with export(policy_state, dir). prompts_for(step) must be a pure function of step (exact resume); with
    dynamic sampling, prompts_for(step, round) gives the prompts of the episode's further rollout rounds. Returns
    the eval records."""
    cfg = trainer.cfg

    def episode(step: int) -> dict:
        more = (lambda rnd: prompts_for(step, rnd)) if cfg.dynamic_sampling else None
        return trainer.step(step, prompts_for(step), more)

    def export_policy(state: dict, path: Path) -> None:  # the learner's state holds the critic and controller too
        export({k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}, path)

    return run_steps(episode, trainer.learner, trainer.optimizer, trainer.scheduler, cfg, out, info=trainer.info,
                     evaluate=(lambda: evaluate(trainer.policy)) if evaluate is not None else None,
                     export=export_policy if export is not None else None, resume=resume, eval_at_start=True,
                     desc=f"rl-{cfg.algo}", show=("reward", "kl", "tokens_per_s"))


def validate(cfg: RLConfig) -> None:
    choices = {"algo": ("ppo", "grpo"), "kl_estimator": ("auto", "k1", "k3"), "reward_norm": ("none", "stats", "running")}
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise UserError(f"{key} must be one of {', '.join(valid)}, got {getattr(cfg, key)!r}")
    if cfg.algo == "grpo" and cfg.group_size < 2:
        raise UserError(f"grpo normalises rewards within groups: group_size must be >= 2, got {cfg.group_size}")
    for key in ("group_size", "minibatch_size", "epochs", "max_tokens", "probe_samples", "max_rollout_rounds",
                "ptx_batch_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.batch_size % cfg.group_size:
        raise UserError(f"batch_size {cfg.batch_size} is not a multiple of group_size {cfg.group_size}")
    if cfg.minibatch_size > cfg.batch_size:
        raise UserError(f"minibatch_size {cfg.minibatch_size} is larger than batch_size {cfg.batch_size}")
    if cfg.probe_n < 0 or cfg.ptx_coef < 0:
        raise UserError(f"probe_n and ptx_coef must be >= 0, got {cfg.probe_n} and {cfg.ptx_coef}")
    if not 0 <= cfg.pass_min <= cfg.pass_max <= 1:
        raise UserError(f"need 0 <= pass_min <= pass_max <= 1, got pass_min={cfg.pass_min}, pass_max={cfg.pass_max}")


def check_split(cfg: RLConfig, world_size: int) -> None:
    """Under torchrun every rank takes an equal share of each episode's prompts and of each minibatch."""
    if world_size == 1:
        return
    if (cfg.batch_size // cfg.group_size) % world_size:
        raise UserError(f"batch_size / group_size = {cfg.batch_size // cfg.group_size} prompts per episode do not "
                        f"divide among the {world_size} processes")
    if cfg.minibatch_size % world_size or cfg.batch_size % cfg.minibatch_size:
        raise UserError(f"under {world_size} processes minibatch_size ({cfg.minibatch_size}) must be a multiple of "
                        f"{world_size} and divide batch_size ({cfg.batch_size})")


# ---- which prompts: cells where the policy can learn ------------------------------------------------------------

@torch.no_grad()
def probe_pass_rates(engine: Engine, cells: list[Cell], n: int, samples: int, seed: int, max_tokens: int) -> list[dict]:
    """The policy's pass rate per cell: `samples` replies at temperature 1 (as in RL) to n train-split prompts.

    A GRPO group teaches only when its samples disagree, and a cell's pass rate p says how often: a group of k
    is all-wrong with probability (1-p)^k and all-right with p^k (for independent prompts of equal difficulty;
    real prompts vary, so fewer groups disagree). Cells near 0 or 1 are where RL spends its budget for nothing."""
    rows = []
    for task, style in tqdm(cells, desc="probing pass rates", dynamic_ncols=True):
        examples = get_task(task).generate("train", n, seed + 7919)  # not the first instances of the training pool
        prompts = [render_prompt(engine.tokenizer, prompt_messages(e, style)) for e in examples for _ in range(samples)]
        params = [SamplingParams(temperature=1.0, max_tokens=max_tokens, tools=style == "tool",
                                 seed=random.Random(f"rl-probe/{seed}/{task}/{style}/{i}").getrandbits(62))
                  for i in range(len(prompts))]
        completions = engine.generate(prompts, params)
        passed = [check(examples[i // samples], c.text) for i, c in enumerate(completions)]
        per_prompt = [sum(passed[i:i + samples]) for i in range(0, len(passed), samples)]
        rows.append({"task": task, "style": style, "pass_rate": sum(passed) / len(passed),
                     "prompts_mixed": sum(0 < p < samples for p in per_prompt) / len(per_prompt)})
    return rows


def parse_cells(text: str) -> list[Cell]:
    """ "add2/tool,units/direct" -> [("add2", "tool"), ("units", "direct")]."""
    cells = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        task, sep, style = item.partition("/")
        if not sep:
            raise UserError(f"cells: {item!r} is not task/style (e.g. add2/tool)")
        cells.append((task, style))
    return cells


def select_cells(rates: list[dict], pass_min: float, pass_max: float) -> list[Cell]:
    """The cells whose pass rate lies in [pass_min, pass_max]; a UserError naming every rate when none does."""
    kept = [(r["task"], r["style"]) for r in rates if pass_min <= r["pass_rate"] <= pass_max]
    if not kept:
        found = ", ".join(f"{r['task']}/{r['style']} {r['pass_rate']:.2f}" for r in rates)
        raise UserError(f"no task/style cell has a pass rate in [{pass_min}, {pass_max}] ({found}); "
                        "widen pass_min/pass_max, or pass other --tasks/--styles")
    return kept


def prompt_pool(cells: list[Cell], n: int, seed: int) -> list[tuple[Example, str]]:
    """n train-split instances per cell, shuffled (seeded)."""
    pool = [(e, style) for task, style in cells for e in get_task(task).generate("train", n, seed)]
    random.Random(f"rl-pool/{seed}").shuffle(pool)
    return pool


# ---- the stage: task-suite prompts, reward model or task checker, eval ----------------------------------------

def read_reward_stats(rm_dir: Path) -> tuple[float, float]:
    path = rm_dir / "reward_stats.json"
    if not path.is_file():
        raise UserError(f"reward_norm=stats: {path} not found (the rm stage writes it)")
    try:
        stats = json.loads(path.read_text())
        return float(stats["mean"]), float(stats["std"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: expected a JSON object with numeric 'mean' and 'std' ({e})") from None


def task_reward(format_bonus: float) -> RewardFn:
    """The verifiable reward: 1 if the task checker accepts the answer, plus format_bonus for the asked format."""
    def reward(ro: Rollout) -> torch.Tensor:
        return torch.tensor([float(check(p.example, c.text)) + format_bonus * format_ok(p.example, c.text, p.style)
                             for p, c in zip(ro.prompts, ro.completions)])
    return reward


def model_reward(rm: RewardModel, micro: int) -> RewardFn:
    """The reward model's score at each sample's last token (its end of turn when it ended)."""
    def reward(ro: Rollout) -> torch.Tensor:
        return torch.cat([rm(ro.full[i : i + micro], ro.lengths[i : i + micro]).float()
                          for i in range(0, len(ro.lengths), micro)])
    return reward


def choose_cells(engine: Engine, cells: list[Cell], n: int, samples: int, seed: int, max_tokens: int,
                 pass_min: float, pass_max: float, path: Path, reuse: bool = False) -> list[Cell]:
    """Probe the policy's pass rates (`probe_pass_rates`; with reuse, read back from `path` if there) and keep
    the cells with room to learn (`select_cells`); the rates, marked kept or not, go to `path` (JSON)."""
    rates = None
    if reuse and path.is_file():
        try:
            rates = json.loads(path.read_text())["cells"]
        except (ValueError, KeyError):  # torn by a crash: the probe is seeded, so measuring again gives the same
            rates = None
    if rates is None:
        rates = probe_pass_rates(engine, cells, n, samples, seed, max_tokens)
    kept = select_cells(rates, pass_min, pass_max)
    for r in rates:
        r["kept"] = (r["task"], r["style"]) in kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pass_min": pass_min, "pass_max": pass_max, "cells": rates}, indent=1) + "\n")
    print("pass rates: " + ", ".join(f"{r['task']}/{r['style']} {r['pass_rate']:.2f}{'' if r['kept'] else ' (dropped)'}"
                                     for r in rates))
    return kept


def run(cfg: RLConfig, policy_dir: str | Path, out: str | Path, resume: bool = False) -> list[dict]:
    from pocketchat.lora import load_model

    validate(cfg)
    info = dist.setup(cfg.device)
    check_split(cfg, info.world_size)
    device = info.device
    tokenizer = Tokenizer.load(policy_dir)
    policy, ref = load_model(policy_dir, device=device), load_model(policy_dir, device=device)
    rm = critic = reward_stats = None
    if cfg.reward == "task":
        reward_fn = task_reward(cfg.format_bonus)
    else:
        rm_dir = Path(cfg.reward)
        rm = RewardModel.from_pretrained(rm_dir, device=device).eval().requires_grad_(False)
        if rm.config.vocab_size != policy.config.vocab_size:
            raise UserError(f"{rm_dir}: reward model vocabulary ({rm.config.vocab_size}) differs from the policy's "
                            f"({policy.config.vocab_size}); train the RM from this SFT model")
        reward_fn = model_reward(rm, cfg.micro_batch_size or cfg.minibatch_size)
        if cfg.reward_norm == "stats":
            reward_stats = read_reward_stats(rm_dir)
    if cfg.reward_norm == "stats" and rm is None:
        raise UserError("reward_norm=stats needs a reward model folder as --reward")
    if cfg.algo == "ppo":  # the critic starts as the RM: it already knows what scores high
        critic = RewardModel.from_pretrained(cfg.reward, device=device) if rm is not None else RewardModel.from_causal_lm(policy)

    cells = parse_cells(cfg.cells) if cfg.cells else cells_of(list(filter(None, cfg.tasks.split(","))),
                                                               list(filter(None, cfg.styles.split(","))))
    for task, style in cells:
        get_task(task), check_style(style)
    out = Path(out)
    if cfg.probe_n > 0:  # rank 0 probes and tells the others (seeded: they would find the same), errors included
        found: list[Cell] | UserError | None = None
        if info.is_main:
            try:
                engine = Engine(policy, tokenizer, tool_turn=tool_turn_renderer(tokenizer))
                found = choose_cells(engine, cells, cfg.probe_n, cfg.probe_samples, cfg.seed,
                                     cfg.max_tokens, cfg.pass_min, cfg.pass_max, out / "probe.json", reuse=resume)
            except UserError as e:
                found = e
        found = dist.broadcast(found)
        if isinstance(found, UserError):
            raise found
        cells = found
    pool = prompt_pool(cells, cfg.train_prompts, cfg.seed)
    n_prompts = cfg.batch_size // cfg.group_size
    if len(pool) < n_prompts:
        raise UserError(f"the prompt pool has {len(pool)} prompts, fewer than the {n_prompts} an episode needs")
    rendered: dict[int, list[int]] = {}

    def prompts_for(step: int, rnd: int = 0) -> list[RLPrompt]:
        rng = random.Random(f"rl-prompts/{cfg.seed}/{step}" + (f"/{rnd}" if rnd else ""))
        picks = rng.sample(range(len(pool)), n_prompts)
        out = []
        for i in picks:
            example, style = pool[i]
            if i not in rendered:
                rendered[i] = render_prompt(tokenizer, prompt_messages(example, style))
            out.append(RLPrompt(rendered[i], tools=style == "tool", example=example, style=style))
        return out

    labeler = ProgrammaticLabeler(cfg.seed)

    def gold(ro: Rollout) -> torch.Tensor:  # the labeler's score, as in the held-out eval
        return torch.tensor([labeler.gold_score(p.example, p.style, c) for p, c in zip(ro.prompts, ro.completions)])

    ptx_data = None
    if cfg.ptx_coef > 0:
        from pocketchat.data.conversations import SFTDataset
        from pocketchat.data.sft_mixture import embedded_mixture

        mixture = embedded_mixture(seed=cfg.seed, direct_equations=cfg.direct_equations)
        ptx_data = SFTDataset(renderable(tokenizer, mixture), tokenizer, min(256, policy.config.max_position_embeddings),
                              seed=cfg.seed)
    trainer = RLTrainer(cfg, policy, tokenizer, ref, reward_fn, critic=critic, gold_fn=gold, reward_stats=reward_stats,
                        ptx_data=ptx_data, info=info)

    def evaluate(model: CausalLM) -> dict:
        engine = Engine(model, tokenizer, tool_turn=tool_turn_renderer(tokenizer))
        result = policy_eval(engine, ref, cells, cfg.eval_n, cfg.seed)
        return {f"eval/{k}": v for k, v in result.items()}

    if info.is_main:
        print(f"RL ({cfg.algo}): {len(pool)} training prompts in {len(cells)} task/style cells, reward {cfg.reward}, "
              f"{cfg.steps} episodes of {cfg.batch_size} samples" + (f" on {info.world_size} processes" if info.world_size > 1 else ""))
    evals = fit(trainer, out, prompts_for, evaluate=evaluate if cfg.eval_n > 0 else None,
                export=hf_export(policy, tokenizer), resume=resume)
    del trainer  # its DDP wrapper must go before the process group (dist.teardown)
    dist.teardown()
    return evals
