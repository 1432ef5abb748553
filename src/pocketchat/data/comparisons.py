"""Comparison data for the reward model and DPO: a prompt and two replies, one preferred.

JSONL, one comparison per line, in the shapes preference data ships in:

- `{"messages": [...], "chosen": C, "rejected": R}` or `{"prompt": P, "chosen": C, "rejected": R}`: P is a
  string (one user turn) or a message list; C and R are a string (one assistant turn), one assistant message,
  or a list of messages (assistant turns with tool calls and the tool turns between them). A C/R list that
  starts with the prompt's own messages (UltraFeedback's shape) has that prefix removed.
- HH-RLHF: `{"chosen": "\\n\\nHuman: ... \\n\\nAssistant: ...", "rejected": "..."}`, two whole transcripts
  that share everything up to the last assistant turn; the shared turns become the prompt.

Optional keys: `margin` (a number: how much better chosen is, subtracted inside the RM loss) and
`chosen_ended` / `rejected_ended` (false for a reply cut off at the token limit, default true); other keys
(task, style, labeler, ...) are metadata and ignored. A bad line is a `file:line: reason` UserError, or
with skip_bad=True counted and skipped.

Tokens: each side is rendered with `pocketchat.chat_format.render` (the checkpoint's chat template) and ends at the
token that closes its last assistant turn (<|im_end|> in ChatML): the reward model reads its score there,
exactly where it reads a policy sample that stopped. A reply that did not end stops before that token. The
completion mask marks the reply's own trained tokens (not the prompt, turn headers or tool outputs): DPO
sums log-probabilities over them. Truncation: a sequence longer than seq_len loses its oldest prompt tokens
(the reply and its end token must survive); a pair whose reply alone does not fit is dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pocketchat.chat_format import render, validate
from pocketchat.data.conversations import read_jsonl
from pocketchat.data.epochs import EpochBatches
from pocketchat.errors import UserError
from pocketchat.tokenizer import Tokenizer


@dataclass
class Comparison:
    prompt_messages: list[dict]
    chosen_messages: list[dict]
    rejected_messages: list[dict]
    margin: float | None = None
    chosen_ended: bool = True
    rejected_ended: bool = True


@dataclass
class ComparisonSet:
    comparisons: list[Comparison]
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS_KEPT `file:line: reason`s skipped


# ---- parsing -----------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_transcript(text: str) -> list[dict]:
    """An HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." as user/assistant messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise UserError('expected a transcript of "\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns')
    return [{"role": "user" if speaker == "Human" else "assistant", "content": content}
            for speaker, content in zip(parts[1::2], parts[2::2])]


def _reply(value, name: str, prompt: list[dict]) -> list[dict]:
    """chosen/rejected as a list of reply messages that ends with an assistant turn."""
    if isinstance(value, str):
        messages = [{"role": "assistant", "content": value}]
    elif isinstance(value, dict):
        messages = [value]
    elif isinstance(value, list):
        messages = value[len(prompt):] if value[:len(prompt)] == prompt and len(value) > len(prompt) else value
    else:
        raise UserError(f"{name} must be a string, a message or a list of messages, not {type(value).__name__}")
    try:
        turns = validate(messages)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
    if turns[0].role != "assistant" or turns[-1].role != "assistant":
        raise UserError(f"{name} must start and end with an assistant message")
    if any(t.role not in ("assistant", "tool") for t in turns):
        raise UserError(f"{name} may only hold assistant and tool messages")
    return messages


def _prompt(record: dict) -> list[dict]:
    if "messages" in record:
        prompt = record["messages"]
    elif isinstance(record["prompt"], str):
        prompt = [{"role": "user", "content": record["prompt"]}]
    else:
        prompt = record["prompt"]
    key = "messages" if "messages" in record else "prompt"
    try:
        turns = validate(prompt)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None
    if turns[-1].role == "assistant":
        raise UserError(f"{key} ends with an assistant turn; the reply to compare goes in chosen/rejected")
    return prompt


def _flag(record: dict, key: str) -> bool:
    value = record.get(key, True)
    if not isinstance(value, bool):
        raise UserError(f"{key} must be true or false, not {value!r}")
    return value


def parse_comparison(record) -> Comparison:
    """One JSONL record as a Comparison; UserError naming the problem otherwise."""
    if not isinstance(record, dict):
        raise UserError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise UserError(f'no "{key}" key')
    if "messages" in record or "prompt" in record:
        prompt = _prompt(record)
        chosen, rejected = _reply(record["chosen"], "chosen", prompt), _reply(record["rejected"], "rejected", prompt)
    elif isinstance(record["chosen"], str) and isinstance(record["rejected"], str):  # HH-RLHF transcripts
        full_chosen, full_rejected = parse_transcript(record["chosen"]), parse_transcript(record["rejected"])
        if full_chosen[-1]["role"] != "assistant" or full_rejected[-1]["role"] != "assistant":
            raise UserError("a transcript must end with an Assistant turn")
        if full_chosen[:-1] != full_rejected[:-1]:
            raise UserError("chosen and rejected transcripts differ before their last Assistant turn (no shared prompt)")
        prompt, chosen, rejected = full_chosen[:-1], full_chosen[-1:], full_rejected[-1:]
        if not prompt:
            raise UserError("the transcripts have no Human turn before the reply")
    else:
        raise UserError('no "messages" or "prompt" key, and chosen/rejected are not HH-RLHF transcript strings')
    if chosen == rejected:
        raise UserError("chosen and rejected are identical")
    margin = record.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin)):
        raise UserError(f"margin must be a finite number, not {margin!r}")  # json reads NaN and Infinity
    return Comparison(prompt, chosen, rejected, None if margin is None else float(margin),
                      _flag(record, "chosen_ended"), _flag(record, "rejected_ended"))


def load_comparisons(path, skip_bad: bool = False) -> ComparisonSet:
    """Read a comparison JSONL file (blank lines allowed); see the module docstring for the shapes."""
    return ComparisonSet(*read_jsonl(path, parse_comparison, skip_bad, "comparisons"))


def load_many(paths: str, skip_bad: bool = False) -> list[Comparison]:
    """Comparisons from comma-separated JSONL paths, reporting skipped records per file."""
    comparisons = []
    for path in (p.strip() for p in paths.split(",") if p.strip()):
        result = load_comparisons(path, skip_bad=skip_bad)
        if result.skipped:
            print(f"{path}: skipped {result.skipped} bad records; first: {result.errors[0]}")
        comparisons += result.comparisons
    if not comparisons:
        raise UserError("no comparison data given")
    return comparisons


def split_by_prompt(comparisons: Sequence[Comparison], val_fraction: float, seed: int) -> tuple[list[Comparison], list[Comparison]]:
    """(train, held out): whole prompts are held out, so no reply to a held-out prompt is trained on.

    Prompts are ordered by a seeded hash and the first max(1, val_fraction of them) held out."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    groups: dict[str, list[Comparison]] = {}
    for c in comparisons:
        groups.setdefault(json.dumps(c.prompt_messages, sort_keys=True), []).append(c)
    if len(groups) < 2:
        raise UserError("need comparisons of at least two different prompts to hold some out; or give eval data")
    order = sorted(groups, key=lambda p: hashlib.sha256(f"{seed}/{p}".encode()).digest())
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    held = set(order[:n_val])
    return ([c for p in order[n_val:] for c in groups[p]], [c for p in order if p in held for c in groups[p]])


# ---- tokens ------------------------------------------------------------------------------------------------

def tokenize_reply(tokenizer: Tokenizer, prompt: list[dict], reply: list[dict], ended: bool = True) -> tuple[list[int], list[int], int]:
    """(ids, completion mask, where the reply starts) of prompt + reply, ending at the reply's end-of-turn
    token (before it when the reply did not end). Mask 1 = a token the reply's author wrote (what DPO scores)."""
    prompt_ids = render(tokenizer, prompt)[0]
    ids, mask = render(tokenizer, prompt + reply)
    if ids[:len(prompt_ids)] != prompt_ids:
        raise UserError("the chat template does not render the prompt as a prefix of prompt + reply")
    trained = [i for i in range(len(prompt_ids), len(ids)) if mask[i]]
    if not trained:
        raise UserError("the reply has no assistant tokens")
    end = trained[-1] + (1 if ended else 0)
    return ids[:end], [0] * len(prompt_ids) + mask[len(prompt_ids):end], len(prompt_ids)


@dataclass
class TokenizedPair:
    chosen: list[int]
    chosen_mask: list[int]
    rejected: list[int]
    rejected_mask: list[int]
    margin: float


def _fit(ids: list[int], mask: list[int], reply_start: int, seq_len: int) -> tuple[list[int], list[int]] | None:
    """Cut the oldest tokens to fit seq_len, as long as only prompt tokens go; None if it cannot fit."""
    cut = len(ids) - seq_len
    if cut <= 0:
        return ids, mask
    return (ids[cut:], mask[cut:]) if cut <= reply_start else None


class PairDataset(EpochBatches):
    """Comparisons as token pairs, batched for the training loop.

    A batch of b pairs is one tensor of 2b right-padded rows, chosen rows first then rejected:
    input_ids [2b, T], lengths [2b] (the reward is read at lengths - 1), completion_mask [2b, T],
    margin [b] and pair_index [b] (the pairs' positions in this dataset, e.g. to look up reference
    log-probs). The pad token is the tokenizer's own (<|pad|>, distinct from the end-of-turn token), so a
    reader that looks for the last non-pad token (transformers) finds the same position.

    As in SFTDataset, the batch of a step is a pure function of (seed, step) (`EpochBatches`), so `--resume`
    sees the batches an uninterrupted run would have."""

    def __init__(self, comparisons: Sequence[Comparison], tokenizer: Tokenizer, seq_len: int, seed: int = 0):
        self.seq_len, self.seed = seq_len, seed
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.pairs: list[TokenizedPair] = []
        self.truncated = self.dropped = 0
        for k, c in enumerate(comparisons):
            try:
                chosen = tokenize_reply(tokenizer, c.prompt_messages, c.chosen_messages, c.chosen_ended)
                rejected = tokenize_reply(tokenizer, c.prompt_messages, c.rejected_messages, c.rejected_ended)
            except UserError as e:
                raise UserError(f"comparison {k}: {e}") from e
            fitted = [_fit(*chosen, seq_len=seq_len), _fit(*rejected, seq_len=seq_len)]
            if None in fitted:
                self.dropped += 1
                continue
            self.truncated += fitted[0][0] != chosen[0] or fitted[1][0] != rejected[0]
            (ci, cm), (ri, rm) = fitted
            self.pairs.append(TokenizedPair(ci, cm, ri, rm, c.margin or 0.0))
        if not self.pairs:
            raise UserError(f"no comparison fits in seq_len={seq_len}")

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        pairs = [self.pairs[i] for i in indices]
        rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        masks = [p.chosen_mask for p in pairs] + [p.rejected_mask for p in pairs]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        completion_mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (r, m) in enumerate(zip(rows, masks)):
            input_ids[i, :len(r)] = torch.tensor(r)
            completion_mask[i, :len(m)] = torch.tensor(m, dtype=torch.bool)
        return {"input_ids": input_ids, "lengths": torch.tensor([len(r) for r in rows]),
                "completion_mask": completion_mask, "margin": torch.tensor([p.margin for p in pairs]),
                "pair_index": torch.tensor(list(indices))}



def train_and_held_out(data: str, eval_data: str, val_fraction: float, seed: int, skip_bad: bool,
                       tokenizer: Tokenizer, seq_len: int) -> tuple[PairDataset, PairDataset]:
    """The RM's and DPO's datasets: `data` for training and `eval_data` held out, or, without eval_data,
    val_fraction of data's prompts held out (`split_by_prompt`); the training pairs shuffled by seed."""
    comparisons = load_many(data, skip_bad)
    if eval_data:
        train_set, held_out = comparisons, load_many(eval_data, skip_bad)
    else:
        train_set, held_out = split_by_prompt(comparisons, val_fraction, seed)
    random.Random(seed).shuffle(train_set)
    return PairDataset(train_set, tokenizer, seq_len, seed=seed), PairDataset(held_out, tokenizer, seq_len, seed=seed)
