"""Sampling settings per request, and the batched sampler that applies them in a few tensor ops.

Every row of a batch may ask for different settings (the server mixes requests, RL mixes temperatures), so
the settings become per-row tensors once per batch and one step samples all rows together. Randomness comes
from one `torch.Generator` per row: a seeded request gives the same text whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from pocketchat.errors import UserError

# (token ids generated so far for the row, the row's raw logits [V]) -> bool mask [V] of allowed tokens, or None.
LogitsProcessor = Callable[[list[int], torch.Tensor], "torch.Tensor | None"]


@dataclass
class SamplingParams:
    """How to sample one completion. temperature 0 is greedy (top_k/top_p/min_p/seed are then moot)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off; keep tokens with p >= min_p * p_max
    max_tokens: int = 256  # completion tokens, forced tool turns included
    stop: list[str] = field(default_factory=list)  # stop when the text contains one; it is cut from the text
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to the end of turn and eos
    ignore_eos: bool = False  # don't stop on end of turn/eos (benchmarks that need an exact length)
    seed: int | None = None
    logprobs: bool = False  # log p of each completion token under the raw model (temperature 1, no filters)
    top_logprobs: int = 0  # also the n most likely tokens at each position, {token_id: logprob}
    logits_processor: LogitsProcessor | None = None  # constrained decoding: returns the allowed-token mask
    # run <tool_call>s and force the tool turn into the sequence: True for every tool, or the names of those
    # that may run (a call to another is answered with a refusal, not run; an empty tuple runs none)
    tools: bool | tuple[str, ...] = False
    max_tool_calls: int = 4

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("max_tokens", self.max_tokens >= 1, ">= 1"),
            ("top_logprobs", self.top_logprobs >= 0, ">= 0"),
            ("max_tool_calls", self.max_tool_calls >= 0, ">= 0"),
            ("tools", isinstance(self.tools, bool) or (isinstance(self.tools, tuple)
                                                       and all(isinstance(n, str) for n in self.tools)),
             "True, False or a tuple of tool names"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "a list of non-empty strings"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise UserError(f"SamplingParams.{name} must be {want}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """The settings of a batch's rows as tensors; `__call__` picks one token per row."""

    def __init__(self, params: Sequence[SamplingParams], vocab_size: int, device: torch.device):
        self.vocab_size = vocab_size
        self.device = device
        col = lambda xs, dtype: torch.tensor(xs, dtype=dtype, device=device)
        self.greedy = col([p.greedy for p in params], torch.bool)
        self.temperature = col([p.temperature or 1.0 for p in params], torch.float32).unsqueeze(1)
        self.top_k = col([min(p.top_k, vocab_size) for p in params], torch.long)
        self.top_p = col([p.top_p for p in params], torch.float32)
        self.min_p = col([p.min_p for p in params], torch.float32)
        # Unseeded rows draw their seed from torch's global RNG, so torch.manual_seed still makes a run repeatable.
        self.generators = [
            None if p.greedy else torch.Generator(device).manual_seed(
                p.seed if p.seed is not None else int(torch.randint(2**62, (1,)).item()))
            for p in params
        ]
        self._refresh_flags()

    def _refresh_flags(self) -> None:
        # Python-side flags so a batch that doesn't use a filter never pays for it (the top-p sort is the costly one).
        self.any_sampling = any(g is not None for g in self.generators)
        self.any_greedy = any(g is None for g in self.generators)
        self.any_temperature = bool((self.temperature != 1).any())
        self.max_top_k = int(self.top_k.max())
        self.any_top_p = bool((self.top_p < 1).any())
        self.any_min_p = bool((self.min_p > 0).any())

    def keep(self, rows: torch.Tensor, row_list: list[int]) -> None:
        """Drop finished rows: keep `rows` (same indices as a tensor and as a list)."""
        self.greedy, self.temperature = self.greedy[rows], self.temperature[rows]
        self.top_k, self.top_p, self.min_p = self.top_k[rows], self.top_p[rows], self.min_p[rows]
        self.generators = [self.generators[i] for i in row_list]
        self._refresh_flags()

    def extend(self, new: "Sampler") -> None:
        """Append `new`'s rows (the inverse of `keep`); each row keeps its own generator."""
        for name in ("greedy", "temperature", "top_k", "top_p", "min_p"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(new, name)]))
        self.generators = self.generators + new.generators
        self._refresh_flags()

    def __call__(self, logits: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """logits: [B, V] float32 (raw). allowed: optional bool [B, V]. Returns token ids [B]."""
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        if not self.any_sampling:
            return logits.argmax(dim=-1)
        probs = self.filter(logits / self.temperature if self.any_temperature else logits).softmax(dim=-1)
        # Inverse-CDF sampling: one uniform draw per row, from the row's own generator, located in the row's
        # cumulative distribution. (Gumbel-max, used before, drew a number per vocabulary entry: a tenth of an
        # RL episode on the tiny model.) Filtered tokens have p = 0, a flat step of the CDF that no draw lands on.
        u = torch.cat([torch.rand(1, generator=g, device=self.device) if g is not None
                       else torch.zeros(1, device=self.device) for g in self.generators])
        cdf = probs.cumsum(dim=-1)
        picks = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        picks = picks.clamp_max(logits.shape[1] - 1)
        return torch.where(self.greedy, logits.argmax(dim=-1), picks) if self.any_greedy else picks

    def filter(self, scores: torch.Tensor) -> torch.Tensor:
        """top-k, then top-p, then min-p, each on what the previous left (the Hugging Face warper order)."""
        neg_inf = float("-inf")
        if self.max_top_k:
            kth = scores.topk(self.max_top_k, dim=-1).values.gather(1, (self.top_k.clamp(min=1) - 1).unsqueeze(1))
            scores = scores.masked_fill((self.top_k > 0).unsqueeze(1) & (scores < kth), neg_inf)
        if self.any_top_p:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probs = sorted_scores.softmax(dim=-1)
            # Drop a token once the mass strictly before it already reaches top_p; the most likely always stays.
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= self.top_p.unsqueeze(1)
            drop_sorted &= (self.top_p < 1).unsqueeze(1)
            scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), neg_inf)
        if self.any_min_p:
            probs = scores.softmax(dim=-1)
            scores = scores.masked_fill(probs < self.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values, neg_inf)
        return scores
