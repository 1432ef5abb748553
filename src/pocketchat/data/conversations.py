"""Chat data for SFT: JSONL files in, packed rows of token ids with a loss mask and attention segments out.

Files: one conversation per line, either OpenAI-style `{"messages": [{"role": ..., "content": ...}, ...]}`
(tool_calls and tool turns included) or ShareGPT-style `{"conversations": [{"from": "human", "value": ...}]}`.
A bad record is a `file:line: reason` UserError, or with skip_bad=True counted and skipped.

Rows: each conversation is rendered with `pocketchat.chat_format.render`, and several are packed into one row of
seq_len positions. A conversation in a row must not see the one before it, so every row carries segment
ids (`doc_ids`: 1, 2, ... per conversation, 0 for padding) from which `block_causal_mask` builds the
attention mask, and `position_ids` that restart at 0 for each conversation, as if it were alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from pathlib import Path

import numpy as np
import torch

from pocketchat.chat_format import render, validate
from pocketchat.data.epochs import EpochBatches
from pocketchat.errors import UserError
from pocketchat.json_text import BLANK, json_line
from pocketchat.tokenizer import Tokenizer

IGNORE = -100  # target value that takes no loss (cross_entropy's ignore_index)

# ShareGPT speaker names as they occur in the wild, mapped to OpenAI roles.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "tool": "tool"}


# -- loading ------------------------------------------------------------------------------------------------

MAX_ERRORS_KEPT = 10
T = TypeVar("T")


@dataclass
class LoadResult:
    conversations: list[list[dict]]
    skipped: int = 0  # bad records passed over with skip_bad=True
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS_KEPT of their `file:line: reason`s


def sharegpt_to_messages(turns) -> list[dict]:
    """ShareGPT's [{"from": "human", "value": ...}, ...] as OpenAI messages."""
    if not isinstance(turns, list):
        raise UserError(f"conversations must be a list, not {type(turns).__name__}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise UserError(f"conversations[{i}]: expected an object with \"from\" and \"value\"")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise UserError(f"conversations[{i}]: unknown speaker {turn['from']!r} "
                            f"(expected one of {', '.join(SHAREGPT_ROLES)})")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def parse_record(record) -> list[dict]:
    """One JSONL record as a validated OpenAI message list that has at least one assistant turn."""
    if not isinstance(record, dict):
        raise UserError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        messages = sharegpt_to_messages(record["conversations"])
    else:
        raise UserError('no "messages" key (OpenAI format) or "conversations" key (ShareGPT format)')
    turns = validate(messages)
    if not any(t.role == "assistant" for t in turns):
        raise UserError("no assistant turn: nothing to train on")
    return messages


def read_jsonl(path, parse: Callable[[object], T], skip_bad: bool, what: str) -> tuple[list[T], int, list[str]]:
    """parse() every record of a JSONL file (blank lines allowed): (items, records skipped, the first
    MAX_ERRORS_KEPT `file:line: reason`s). A bad record raises `file:line: reason` unless skip_bad, which skips
    and counts it; a file with no usable record raises too. `what` names the items in that message."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    items, skipped, errors = [], 0, []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                record = json_line(raw)
                if record is not BLANK:
                    items.append(parse(record))
            except UserError as e:
                message = f"{path}:{lineno}: {e}"
                if not skip_bad:
                    raise UserError(message) from e
                skipped += 1
                if len(errors) < MAX_ERRORS_KEPT:
                    errors.append(message)
    if not items:
        raise UserError(f"{path}: no usable {what}" + (f" ({skipped} bad records skipped)" if skipped else ""))
    return items, skipped, errors


def load_chat_jsonl(path, skip_bad: bool = False) -> LoadResult:
    """Read a chat JSONL file (blank lines allowed). Every bad record raises `file:line: reason`, unless
    skip_bad, which skips it and counts it instead."""
    return LoadResult(*read_jsonl(path, parse_record, skip_bad, "conversations"))


# -- packing ------------------------------------------------------------------------------------------------

def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, T, T] attention mask, True = may attend: causal, and only within the same segment."""
    T = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal).unsqueeze(1)


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy best-fit: each item, in the given order, goes into the open row with the least room that still
    fits it, or opens a new row. Returns the item indices of each row."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free positions, row index), sorted
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}")
        j = bisect.bisect_left(room, (n, -1))
        if j == len(room):
            rows.append([i])
            free, r = capacity - n, len(rows) - 1
        else:
            free, r = room.pop(j)
            rows[r].append(i)
            free -= n
        if free > 0:
            bisect.insort(room, (free, r))
    return rows


class SFTDataset(EpochBatches):
    """Conversations rendered, truncated and packed into rows of `seq_len` (input, target) positions.

    A conversation of n tokens gives n - 1 positions: inputs ids[:-1], targets ids[1:] with IGNORE wherever
    the loss mask is 0, so no target ever crosses into the next conversation. Truncation: a conversation
    longer than seq_len + 1 tokens keeps its first seq_len + 1 (the prompt survives, the end of the last
    answer is cut); one left with no trained target is dropped. Both are counted (.truncated, .dropped).

    Rows are packed once, best-fit over the conversations shuffled by `seed`; a training step's batch is a pure
    function of (seed, step), epoch after epoch of seeded permutations of the rows (`EpochBatches`).
    """

    def __init__(self, conversations: Sequence[list[dict]], tokenizer: Tokenizer, seq_len: int, seed: int = 0):
        if seq_len < 2:
            raise UserError(f"seq_len must be at least 2, got {seq_len}")
        self.seq_len, self.seed = seq_len, seed
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.truncated = self.dropped = 0
        inputs, targets = [], []
        for k, messages in enumerate(conversations):
            try:
                ids, mask = render(tokenizer, messages)
            except UserError as e:
                raise UserError(f"conversation {k}: {e}") from e
            if len(ids) > seq_len + 1:
                ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
                self.truncated += 1
            ids_arr, mask_arr = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
            if not mask_arr[1:].any():
                self.dropped += 1
                continue
            inputs.append(ids_arr[:-1])
            targets.append(np.where(mask_arr[1:], ids_arr[1:], IGNORE))
        if not inputs:
            raise UserError(f"no conversation has a trained token within seq_len={seq_len}")
        self._inputs, self._targets = inputs, targets
        order = np.random.default_rng([seed]).permutation(len(inputs))
        self.rows = [[int(order[i]) for i in row] for row in pack([len(inputs[i]) for i in order], seq_len)]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_conversations(self) -> int:
        return len(self._inputs)

    def trained_tokens(self) -> int:
        return int(sum((t != IGNORE).sum() for t in self._targets))

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """The given rows as tensors: input_ids, targets, position_ids, doc_ids [B, T] and attn_mask [B,1,T,T]."""
        B, T = len(rows), self.seq_len
        input_ids = np.full((B, T), self.pad_id, dtype=np.int64)
        targets = np.full((B, T), IGNORE, dtype=np.int64)
        position_ids = np.zeros((B, T), dtype=np.int64)
        doc_ids = np.zeros((B, T), dtype=np.int64)
        for b, r in enumerate(rows):
            at = 0
            for doc, c in enumerate(self.rows[r], start=1):
                n = len(self._inputs[c])
                input_ids[b, at:at + n] = self._inputs[c]
                targets[b, at:at + n] = self._targets[c]
                position_ids[b, at:at + n] = np.arange(n)
                doc_ids[b, at:at + n] = doc
                at += n
            position_ids[b, at:] = np.arange(T - at)  # padding is a segment of its own, positions from 0
        doc = torch.from_numpy(doc_ids)
        return {"input_ids": torch.from_numpy(input_ids), "targets": torch.from_numpy(targets),
                "position_ids": torch.from_numpy(position_ids), "doc_ids": doc, "attn_mask": block_causal_mask(doc)}
