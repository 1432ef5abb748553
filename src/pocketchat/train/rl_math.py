"""The arithmetic of policy-gradient RL for language models, as pure tensor functions (no models, no I/O).

Shapes: per-token tensors are [B, T] over the learner's input positions; `mask` is True where a sampled
completion token is predicted (prompt, padding and forced tool-output tokens are False), so every mean
below is over actions only. Kept apart from the trainer so each formula can be checked against hand-computed
numbers (tests/test_rl.py).
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask; 0 when the mask is empty (a batch with no actions contributes nothing)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); zero outside the mask."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy.

    With log r = ref_logp - logp: k1 = -log r (unbiased, can be negative per token); k3 = (r - 1) - log r
    (unbiased too, never negative, lower variance when the two are close) -- Schulman's "Approximating KL
    divergence" estimators."""
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1 or k3)")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the actions of each row; returns (advantages, returns).

    Positions outside the mask are skipped, not treated as steps: a forced tool turn between two sampled
    tokens is part of the environment's transition, so the next action's value bootstraps straight across
    it. After a row's last action the value is 0 (the episode ends)."""
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(m, delta + gamma * lam * running, running)
        next_value = torch.where(m, values[:, t], next_value)
        advantages[:, t] = torch.where(m, running, torch.zeros_like(running))
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise: mean of max(-A r, -A clip(r, 1-e, 1+e)) with r = p/p_old.
    Also returns the clip fraction: the share of actions where the clipped term was the larger (no gradient)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean of max((v - R)^2, (v_clipped - R)^2), v_clipped kept within `clip` of the rollout's value,
    so one batch can't drag the critic far. Also returns the share of actions where the clipped error won."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    err, err_clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(err, err_clipped), mask), masked_mean((err_clipped > err).float(), mask)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each reward relative to the other samples of its prompt, (r - mean) / (std + eps), with the
    population std of the group. Rows are grouped consecutively: rewards[i*k:(i+1)*k] share a prompt. A group
    whose samples all score the same gets advantage 0 (it teaches nothing)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return ((groups - mean) / (std + eps)).view(-1)


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al.'s proportional controller: move the KL coefficient toward the value that holds the
    measured KL at `target`, by at most 20% of the error per `horizon` samples."""
    error = min(max(kl / target - 1, -0.2), 0.2)
    return coef * (1 + error * n_steps / horizon)


def update_moments(count: float, mean: float, m2: float, batch: torch.Tensor) -> tuple[float, float, float]:
    """Merge a batch into running (count, mean, sum of squared deviations) -- Chan et al.'s parallel Welford,
    exact for any batch sizes. The variance is m2 / count."""
    n = batch.numel()
    b_mean = batch.double().mean().item()
    b_m2 = ((batch.double() - b_mean) ** 2).sum().item()
    total = count + n
    delta = b_mean - mean
    return total, mean + delta * n / total, m2 + b_m2 + delta**2 * count * n / total


def moments_std(count: float, m2: float) -> float:
    """The population std of running moments; 1 before any data (whitening is then a no-op scale)."""
    return math.sqrt(m2 / count) if count > 1 else 1.0
