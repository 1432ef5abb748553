"""The eval every alignment method shares (RL with PPO or GRPO, DPO), so their numbers sit in one table.

On held-out prompts of the verifiable tasks (the test split, never trained on), the policy samples one
completion per prompt at temperature 1 (seeded), the way it behaves when it explores, and we measure:

- gold:     the programmatic labeler's score of each completion (`ProgrammaticLabeler.gold_score`, in [0, 1]),
            the stand-in for what people want; a reward model can be over-optimised, this cannot;
- accuracy: the share the task checker accepts (the largest part of gold);
- kl:       KL(policy || reference) per completion, estimated as the mean over samples of
            sum_t [log pi(y_t) - log ref(y_t)] over the completion's sampled tokens (unbiased for samples of pi);
- entropy:  entropy of the policy's next-token distribution, averaged over a completion's sampled tokens,
            then over completions ("RLHF lowers entropy");
- length:   mean sampled tokens per completion; ended: share that ended with end-of-turn.

Tokens the engine forced (tool outputs) are no choice of the policy, so they count in none of these.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketchat.chat_format import render_prompt
from pocketchat.engine import Completion, Engine, SamplingParams
from pocketchat.errors import UserError
from pocketchat.labeler import ProgrammaticLabeler
from pocketchat.stats import paired_test
from pocketchat.tasks import Example, check, get_task, prompt_messages

EVAL_MAX_TOKENS = 160
GENERATE_CHUNK = 64  # prompts per engine batch when sampling an eval: bounds the KV cache and shows progress
MICRO_BATCH = 16  # sequences per teacher-forced forward pass: bounds the [B, T, vocab] logits in memory


def next_token_logprobs(model: nn.Module, input_ids: torch.Tensor, first: int = 0) -> torch.Tensor:
    """[B, T - first, V] log-distribution of the next token at input positions first..T-1, in fp32.

    Right padding needs no attention mask under causal attention: real tokens never see the pads after them, so
    these equal the engine's logprobs (which it computes with left padding and a hole mask)."""
    return model(input_ids, logits_to_keep=input_ids.shape[1] - first).float().log_softmax(-1)


def pick(logp_all: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, T] log p of each target from a [B, T, V] log-distribution."""
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def next_token_entropy(logp_all: torch.Tensor) -> torch.Tensor:
    """[B, T] entropy of each next-token distribution."""
    return -(logp_all.exp() * logp_all).sum(-1)


def token_logprobs(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, first: int = 0,
                   shared: "SharedPrompts | None" = None) -> torch.Tensor:
    """[B, T] log p(targets[:, t] | input_ids[:, :t+1]): the one teacher-forced scoring RL, DPO and the evals share
    (for a whole sequence `ids`: input_ids = ids[:, :-1], targets = ids[:, 1:]). Positions before `first` (a
    prompt, which the caller masks out) are not scored and read 0; with `shared`, neither are those before each
    row's last prompt token."""
    return scored_logprobs(model, input_ids, targets, first, shared)[0]


def scored_logprobs(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, first: int = 0,
                    shared: "SharedPrompts | None" = None, with_entropy: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logprobs`, and with_entropy also the entropy of each scored next-token distribution [B, T] (no
    gradient; 0 where not scored)."""
    if shared is None:
        logp_all = next_token_logprobs(model, input_ids, first)
        place = lambda x: F.pad(x, (first, 0))
        logp = place(pick(logp_all, targets[:, first:]))
    else:
        logp_all, positions = shared_prompt_logprobs(model, input_ids, shared)
        T = input_ids.shape[1]
        place = lambda x: x.new_zeros(x.shape[0], T + x.shape[1]).scatter(1, positions, x)[:, :T]
        logp = place(pick(logp_all, targets.gather(1, positions.clamp(max=T - 1))))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = place(next_token_entropy(logp_all))
    return logp, entropy


@dataclass
class SharedPrompts:
    """The rows of a [B, T] batch of prompt + completion rows (right-padded) that begin with the same prompt, as
    a GRPO group's samples do: `shared_prompt_logprobs` feeds each prompt once."""

    lengths: torch.Tensor  # [B] tokens of each row's prompt
    source: torch.Tensor  # [U] a row holding each distinct prompt
    of_row: torch.Tensor  # [B] each row's prompt, an index into source
    width: int  # the longest prompt
    completion_at: torch.Tensor  # [B, C] where each row's completion inputs stand (C = T - the shortest prompt)
    scored_at: torch.Tensor  # [B, C + 1] the positions scored: each row's last prompt token, then its completion

    @staticmethod
    def find(prompts: Sequence[Sequence[int]], T: int, device) -> "SharedPrompts | None":
        """The sharing among rows of width T with these prompts; None when no two rows share one (nothing to
        gain). Positions past a row's end (when another row has a shorter prompt) are padding: clamped to T - 1."""
        index: dict[tuple[int, ...], int] = {}
        of_row = [index.setdefault(tuple(p), len(index)) for p in prompts]  # as the engine's shared prefill does
        if len(index) == len(prompts):
            return None
        tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)
        lengths = tensor([len(p) for p in prompts])
        # Computed here, not in the forward: under torch.compile a width T - shortest inside the graph is a
        # difference of two symbols, which inductor's attention lowering fails on; a tensor's size is a symbol.
        after = torch.arange(T - min(map(len, prompts)) + 1, device=device)
        return SharedPrompts(lengths, tensor([of_row.index(j) for j in range(len(index))]), tensor(of_row),
                             max(map(len, prompts)), (lengths[:, None] + after[:-1]).clamp(max=T - 1),
                             lengths[:, None] - 1 + after)


def shared_prompt_logprobs(model: nn.Module, input_ids: torch.Tensor, shared: SharedPrompts
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-distributions [B, K, V] of the next token, and the input positions [B, K] they stand at): those of
    `next_token_logprobs` from each row's last prompt token on, with each distinct prompt fed once.

    The prompts go through the model as a batch of their own; each row's completion then attends to its prompt's
    keys and values (gathered per row, so their gradients add up over the rows that share them) and to itself."""
    B, C = shared.completion_at.shape
    device = input_ids.device
    prompts = _KeepKeys()
    h_prompt = model.model(input_ids[shared.source, :shared.width], cache=prompts)  # causal: a prompt never sees what follows
    own_prompt = (torch.arange(shared.width, device=device) < shared.lengths[:, None])[:, None, :].expand(B, C, -1)
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril().expand(B, C, C)
    h_completion = model.model(input_ids.gather(1, shared.completion_at), position_ids=shared.completion_at,
                               attn_mask=torch.cat([own_prompt, causal], 2).unsqueeze(1),
                               cache=_AfterPrompt(prompts, shared.of_row))
    last = h_prompt[shared.of_row, shared.lengths - 1]  # predicts each row's first completion token
    h = torch.cat([last.unsqueeze(1), h_completion], 1)
    return model.lm_head(h).float().log_softmax(-1), shared.scored_at


class _KeepKeys:
    """A cache for one causal forward: keeps each layer's keys and values, as computed (gradients included)."""

    length = 0

    def __init__(self):
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.append(k)
        self.v.append(v)
        return k, v


class _AfterPrompt:
    """A cache that puts each row's prompt (row `of_row[b]` of a `_KeepKeys`) before the keys of the forward."""

    def __init__(self, prompts: _KeepKeys, of_row: torch.Tensor):
        self.prompts, self.of_row = prompts, of_row

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.prompts.k[layer_idx][self.of_row], k], 2),
                torch.cat([self.prompts.v[layer_idx][self.of_row], v], 2))


def first_scored(mask: torch.Tensor) -> int:
    """The first position any row of a [B, T] mask scores (0 when none does): where `first` can start."""
    cols = mask.any(0).nonzero()
    return int(cols[0]) if len(cols) else 0


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


Cell = tuple[str, str]  # (task, style)


def cells_of(tasks: Sequence[str], styles: Sequence[str]) -> list[Cell]:
    """Every task asked in every style."""
    return [(t, s) for t in tasks for s in styles]


def held_out_cases(cells: Sequence[Cell], n: int, seed: int, part: str) -> list[tuple[Example, str]]:
    """n instances per (task, style) cell from one held-out part ("select" or "report", see
    `tasks.held_out_part`), in a fixed order: the same cases for every model, so results pair up."""
    cases = [(e, s) for t, s in cells for e in get_task(t).held_out(part, n, seed)]
    if not cases:
        raise UserError("the alignment eval needs at least one task and style and n >= 1")
    return cases


@torch.no_grad()
def sample_cases(engine: Engine, cases: Sequence[tuple[Example, str]], seed: int, max_tokens: int = EVAL_MAX_TOKENS,
                 temperature: float = 1.0) -> tuple[list[list[int]], list[Completion]]:
    """(prompt ids, completion) per case. Case i is sampled with seed (seed, i) whatever the model, so two
    models are compared on the same instances and the same random draws."""
    from tqdm.auto import tqdm

    prompts = [render_prompt(engine.tokenizer, prompt_messages(e, s)) for e, s in cases]
    params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed * 100_003 + i, tools=s == "tool")
              for i, (_, s) in enumerate(cases)]
    completions = []
    with tqdm(total=len(prompts), desc="sampling held-out prompts", unit="prompt", dynamic_ncols=True,
              disable=len(prompts) <= GENERATE_CHUNK) as bar:
        for start in range(0, len(prompts), GENERATE_CHUNK):
            chunk = slice(start, start + GENERATE_CHUNK)
            completions += engine.generate(prompts[chunk], params[chunk])
            bar.update(len(completions) - bar.n)
    return prompts, completions


@torch.no_grad()
def policy_eval(engine: Engine, ref_model: nn.Module, cells: Sequence[Cell], n: int, seed: int,
                max_tokens: int = EVAL_MAX_TOKENS, part: str = "select") -> dict[str, float]:
    """gold, accuracy, kl, entropy, length and ended (see the module docstring), each a mean over n held-out
    instances of every (task, style) cell. Evals while training use the "select" part; the report's
    figures come from the "report" part (`paired_report`)."""
    cases = held_out_cases(cells, n, seed, part)
    prompts, completions = sample_cases(engine, cases, seed, max_tokens)
    records = grade(cases, completions, seed)
    return {"gold": sum(r["gold"] for r in records) / len(records),
            "accuracy": sum(r["correct"] for r in records) / len(records),
            **sample_stats(engine, prompts, completions, ref_model)}


def grade(cases: Sequence[tuple[Example, str]], completions: Sequence[Completion], seed: int) -> list[dict]:
    """One record per case: correct (the task checker), gold (the labeler's score), the completion text."""
    labeler = ProgrammaticLabeler(seed)
    return [{"task": e.task, "style": s, "question": e.question, "answer": e.answer, "completion": c.text,
             "correct": bool(check(e, c.text)), "gold": labeler.gold_score(e, s, c)}
            for (e, s), c in zip(cases, completions)]


@torch.no_grad()
def sample_stats(engine: Engine, prompts: Sequence[list[int]], completions: Sequence[Completion],
                 ref_model: nn.Module) -> dict[str, float]:
    """kl, entropy, length and ended (see the module docstring) of completions sampled at temperature 1."""
    kl, entropy = sampled_token_stats(engine, prompts, completions, ref_model)
    count = len(completions)
    return {"kl": sum(kl) / count, "entropy": sum(entropy) / count,
            "length": sum(sum(not f for f in c.forced) for c in completions) / count,
            "ended": sum(c.finish_reason == "stop" for c in completions) / count}


def paired_report(policy: list[dict], baseline: list[dict], cells: Sequence[Cell], name: str, examples: int = 3) -> dict:
    """A model's graded records against a baseline's on the same cases (see `grade`): metrics accuracy,
    accuracy_{name}, gold, gold_{name}, n, p_accuracy and p_gold (paired, two-sided: `stats.paired_test`) and
    the 95% CIs of the differences; a row per (task, style) cell; a few cases where the model was right and
    the baseline wrong ("fixed") and the reverse ("broken")."""
    if len(baseline) != len(policy):
        raise UserError(f"paired_report: {len(baseline)} baseline records for {len(policy)} cases")
    acc = paired_test([r["correct"] for r in baseline], [r["correct"] for r in policy])
    gold = paired_test([r["gold"] for r in baseline], [r["gold"] for r in policy])
    metrics = {"n": len(policy), "accuracy": acc.mean_b, f"accuracy_{name}": acc.mean_a, "p_accuracy": acc.p,
               "accuracy_diff_ci": [acc.ci_low, acc.ci_high], "gold": gold.mean_b, f"gold_{name}": gold.mean_a,
               "p_gold": gold.p, "gold_diff_ci": [gold.ci_low, gold.ci_high]}
    rows = []
    for task, style in cells:
        idx = [i for i, r in enumerate(policy) if r["task"] == task and r["style"] == style]
        cell = paired_test([baseline[i]["correct"] for i in idx], [policy[i]["correct"] for i in idx])
        rows.append({"task": task, "style": style, **cell.as_dict()})
    fixed = [(b, p) for b, p in zip(baseline, policy) if p["correct"] and not b["correct"]]
    broken = [(b, p) for b, p in zip(baseline, policy) if b["correct"] and not p["correct"]]
    return {"metrics": metrics, "cells": rows, "fixed": [_pair_example(b, p) for b, p in fixed[:examples]],
            "broken": [_pair_example(b, p) for b, p in broken[:examples]]}


def _pair_example(baseline: dict, policy: dict) -> dict:
    return {"task": baseline["task"], "style": baseline["style"], "question": baseline["question"],
            "answer": baseline["answer"], "baseline": baseline["completion"], "model": policy["completion"]}


@torch.no_grad()
def sampled_token_stats(engine: Engine, prompts: Sequence[list[int]], completions: Sequence[Completion],
                        ref_model: nn.Module | None = None) -> tuple[list[float], list[float]]:
    """Per completion: KL to ref_model (the sum over its sampled tokens of log pi - log ref; empty without a
    ref_model) and the mean entropy of the policy's next-token distribution at those tokens."""
    kl, entropy = [], []
    device = engine.device
    for start in range(0, len(prompts), MICRO_BATCH):
        chunk = range(start, min(start + MICRO_BATCH, len(prompts)))
        ids = right_pad([prompts[i] + completions[i].token_ids for i in chunk], engine.pad_id).to(device)
        mask = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool, device=device)
        for row, i in enumerate(chunk):  # input position p predicts token p + 1
            first = len(prompts[i]) - 1
            mask[row, first:first + len(completions[i].token_ids)] = torch.tensor([not f for f in completions[i].forced])
        logp_all = next_token_logprobs(engine.model, ids[:, :-1])
        ent = next_token_entropy(logp_all)
        if ref_model is not None:
            kl += ((pick(logp_all, ids[:, 1:]) - token_logprobs(ref_model, ids[:, :-1], ids[:, 1:])) * mask).sum(1).tolist()
        entropy += [ent[r][mask[r]].mean().item() if mask[r].any() else 0.0 for r in range(len(chunk))]
    return kl, entropy


# ---- output diversity: base vs SFT vs RL ----------------------------------------------------------------------

def diversity_prompts(n: int) -> list[list[dict]]:
    """n open-ended user turns (small talk from the chatterbot corpus), the same fixed sample for every model."""
    from pocketchat.data.sft_mixture import smalltalk_conversations

    questions = sorted({c[0]["content"] for c in smalltalk_conversations()})
    return [[{"role": "user", "content": q}] for q in random.Random("diversity").sample(questions, min(n, len(questions)))]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of a set of samples (token level); 1.0 when nothing repeats."""
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def diversity(engine: Engine, conversations: Sequence[list[dict]], samples: int, max_tokens: int, seed: int = 0) -> dict:
    """How varied a model's answers are: `samples` completions of each prompt at temperature 1 (seeded);
    distinct-1/2 among each prompt's samples, averaged over prompts; the mean next-token entropy at the sampled
    tokens; the mean length. Lower numbers after RL are the mode collapse the talk describes."""
    prompts = [render_prompt(engine.tokenizer, c) for c in conversations for _ in range(samples)]
    params = [SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed * 100_003 + i) for i in range(len(prompts))]
    completions = engine.generate(prompts, params)
    _, entropy = sampled_token_stats(engine, prompts, completions)
    groups = [[c.token_ids for c in completions[i:i + samples]] for i in range(0, len(completions), samples)]
    return {"distinct_1": sum(distinct_n(g, 1) for g in groups) / len(groups),
            "distinct_2": sum(distinct_n(g, 2) for g in groups) / len(groups),
            "entropy": sum(entropy) / len(entropy),
            "length": sum(len(c.token_ids) for c in completions) / len(completions)}
