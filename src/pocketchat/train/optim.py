"""The optimizers the shared loop builds: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al., 2024) takes the momentum of a weight matrix's gradient and replaces it by the nearest
semi-orthogonal matrix (a few Newton-Schulz iterations), so every direction of the update moves at the
same rate. On small models it reaches a given loss in markedly fewer steps than AdamW, which is what a
10-minute CPU budget needs. It only applies to 2-D hidden weights; embeddings, the output head, norms and
biases stay on AdamW, inside the same optimizer object, so one scheduler and one state_dict cover both.
The Muon update is rescaled to AdamW's typical RMS (0.2 * sqrt(max(rows, cols)), Liu et al., 2025), so
one `lr` serves both kinds of parameter.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pocketchat.errors import UserError


def param_groups(model: nn.Module, weight_decay: float, muon: bool = False) -> list[dict]:
    """Decay matrices only: norms, biases and embeddings (and a head tied to them) keep their scale.
    With `muon`, the hidden matrices form their own group, flagged for the Muon update; an untied output
    head stays on AdamW (it maps to the vocabulary, like an embedding, not between hidden states)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    head_id = id(head.weight) if isinstance(head, nn.Linear) else None
    hidden, decay, no_decay, seen = [], [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or id(p) in embeddings:
            no_decay.append(p)
        elif muon and id(p) != head_id:
            hidden.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if muon:
        groups = [{**g, "muon": False} for g in groups] + [{"params": hidden, "weight_decay": weight_decay, "muon": True}]
    return groups


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T: a quintic Newton-Schulz iteration tuned to push every singular value
    into [0.7, 1.2] fast (coefficients from Jordan et al.); bf16 is accurate enough for that."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)  # singular values <= 1
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on param groups flagged `muon`, AdamW on the others."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 momentum: float = 0.95, ns_steps: int = 5):
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps,
                                      weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                p.mul_(1 - lr * wd)
                if group["muon"]:
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = orthogonalize(p.grad.lerp(buf, group["momentum"]), group["ns_steps"])  # Nesterov
                    p.add_(update, alpha=-lr * 0.2 * max(p.shape) ** 0.5)
                else:
                    beta1, beta2 = group["betas"]
                    if not state:
                        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                    state["step"] += 1
                    state["exp_avg"].lerp_(p.grad, 1 - beta1)
                    state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    bias1, bias2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
                    denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(group["eps"])
                    p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                    fused: bool = False) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)
    if name == "muon":
        return MuonAdamW(param_groups(model, weight_decay, muon=True), lr=lr, betas=betas)
    raise UserError(f"unknown optimizer {name!r} (valid: adamw, muon)")
