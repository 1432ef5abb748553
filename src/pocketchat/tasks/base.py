"""What every verifiable task shares: the Example record, the train/test split, and answer kinds.

A task is a seeded generator of `Example`s whose answers a program can check exactly. The split is a
property of the instance, not of the sampling: an instance is in test iff a stable hash of its canonical
`key` falls in a fixed bucket, and `generate` rejects draws of the other split. So train and test are
disjoint by construction, for any seed and any n, and tasks that share a key space (`add` and `add2`,
`spell` and `count_letters`) put a shared instance on the same side.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from pocketchat.errors import UserError

SPLITS = ("train", "test")
TEST_PERCENT = 20  # share of each task's instance space that is held out for evaluation
HELD_OUT_PARTS = ("select", "report")
SELECT_PERCENT = 25  # share of the test split set aside for selection (see held_out_part)
MAX_SPLIT_MISSES = 100_000  # consecutive draws of the wrong split before a task is declared broken
STALE_DRAWS = 200  # consecutive repeated questions after which a split counts as used up


@dataclass(frozen=True)
class Call:
    """One calculator round of the tool style: the expression the assistant sends and what comes back."""

    expression: str  # calculator syntax, e.g. "37*12"
    result: str  # exactly what the calculator prints for it: "444", never "444.0"
    note: str = ""  # short text the assistant writes before the call ("Notebooks:"), often empty


@dataclass
class Example:
    """One task instance, independent of how it is rendered (see `render.to_messages` for the styles)."""

    task: str  # the name it is registered under in TASKS
    question: str  # the natural user request, without any style instruction
    answer: str  # canonical answer string
    steps: list[str]  # short worked steps for the step-by-step style, ending just before "Answer: ..."
    calls: list[Call]  # calculator rounds for the tool style; empty when the task has no arithmetic
    key: str  # canonical identity of the instance that decides its split (phrasing and names excluded)


def split_of(key: str) -> str:
    """The split an instance belongs to. hashlib, not hash(): the assignment must never change."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "test" if bucket < TEST_PERCENT else "train"


def held_out_part(key: str) -> str:
    """Which part of the test split a test instance is in: "select" (choosing checkpoints and the model to ship,
    evals during training) or "report" (the final figures). Disjoint by key, so a choice made on one part is
    never graded on the instances it was made with."""
    bucket = int.from_bytes(hashlib.sha256(f"part/{key}".encode()).digest()[:8], "big") % 100
    return "select" if bucket < SELECT_PERCENT else "report"


# -- answer kinds: how an answer is normalised before comparison, and what a bare answer looks like ------

def _strip(text: str) -> str:
    return text.strip().removesuffix(".").strip()


def normalize_number(text: str) -> str:
    """ "$1,234." -> "1234". Commas only go when they are thousands separators."""
    text = _strip(text).removeprefix("$")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", text):
        text = text.replace(",", "")
    return text


def normalize_spelling(text: str) -> str:
    """ "S - T - R" -> "s-t-r": spacing around the dashes and case carry no meaning."""
    return "".join(_strip(text).lower().split())


def normalize_list(text: str) -> str:
    """ "[3,7 , 12]" -> "3, 7, 12": one canonical separator, case folded, optional brackets."""
    text = _strip(text).lower().removeprefix("[").removesuffix("]")
    return ", ".join(item.strip() for item in text.split(","))


@dataclass(frozen=True)
class AnswerKind:
    name: str
    normalize: Callable[[str], str]
    shape: re.Pattern  # a normalised bare answer matches this (used to judge the direct format)
    instruction: str  # what the direct style asks the assistant to reply with


NUMBER = AnswerKind("number", normalize_number, re.compile(r"-?\d+"), "Answer with just the number.")
SPELLING = AnswerKind("spelling", normalize_spelling, re.compile(r"[a-z](-[a-z])*"), "Answer with just the spelling.")
LIST = AnswerKind("list", normalize_list, re.compile(r"[a-z0-9]+(, [a-z0-9]+)*"), "Answer with just the list.")


class Task:
    """A named generator of checkable examples. Subclasses set `name` and `kind` and implement `sample`."""

    name: str
    kind: AnswerKind

    def sample(self, rng: random.Random) -> Example:
        """One random instance from the whole space, either split."""
        raise NotImplementedError

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        """n examples of one split, the same for the same (split, n, seed) on any machine.

        Questions do not repeat within a call until the split runs dry: once STALE_DRAWS draws in a row
        found nothing new (the test words of `spell` are fewer than most n), repeats fill the rest."""
        if split not in SPLITS:
            raise UserError(f"task {self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if n < 0:
            raise UserError(f"task {self.name}: n must be >= 0, got {n}")
        rng = random.Random(f"{self.name}/{split}/{seed}")  # str seeds hash with sha512: stable everywhere
        examples: list[Example] = []
        seen: set[str] = set()
        stale = misses = 0
        dry = False  # the split has (almost) no unseen questions left: repeats are accepted from now on
        while len(examples) < n:
            example = self.sample(rng)
            if split_of(example.key) != split:
                misses += 1
                if misses > MAX_SPLIT_MISSES:
                    raise UserError(f"task {self.name}: no {split} instance in {MAX_SPLIT_MISSES} draws; "
                                    "its instance space is too small to split")
                continue
            misses = 0
            if example.question in seen and not dry:
                stale += 1
                dry = stale >= STALE_DRAWS
                continue
            stale = 0
            seen.add(example.question)
            examples.append(example)
        return examples

    def held_out(self, part: str, n: int, seed: int) -> list[Example]:
        """n test instances of one held-out part ("select" or "report"), the same for the same (part, n, seed):
        the test instances `generate` draws, in its order, keeping those of the part."""
        if part not in HELD_OUT_PARTS:
            raise UserError(f"task {self.name}: held-out part must be one of {', '.join(HELD_OUT_PARTS)}, got {part!r}")
        draws = max(n, 1) * 2
        while True:
            drawn = self.generate("test", draws, seed)
            kept = [e for e in drawn if held_out_part(e.key) == part]
            if len(kept) >= n or draws >= 64 * max(n, 1):
                break
            draws *= 2
        if len(kept) < n:
            raise UserError(f"task {self.name}: only {len(kept)} {part} instances in {draws} test draws, {n} asked")
        return kept[:n]
