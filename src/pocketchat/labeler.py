"""Labelers rank k completions of one prompt: the contractor step of the recipe, for a program or a person.

The programmatic labeler stands in for contractors on the embedded task suite. Its rules, in order (a later
rule only decides between completions that all earlier rules tie):

1. correct beats wrong (the task checker, `tasks.check`);
2. follows the asked format (`tasks.format_ok`: a bare answer, steps then "Answer: X", a calculator call);
3. ended properly (finish reason "stop", not cut off at the token limit);
4. polite: no word of RUDE_WORDS;
5. concise: fewer sampled tokens (tokens the engine forced, tool outputs, don't count).

Completions equal under all five rules are ordered by an RNG seeded with (seed, instance, style), so a
ranking never depends on what else was labeled before it. `gold_score` turns the same rules into one
number in [0, 1] that orders completions exactly as `rank` does (up to those ties): it is the gold metric
that RL and DPO report beside their own reward.

`label_in_terminal` is the same step for a person: it shows the prompt and the completions and reads a
ranking. `collect_comparisons` runs either labeler over sampled completions and writes comparison JSONL
(see `pocketchat.data.comparisons` for the format).
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pocketchat.chat_format import completion_messages, render_prompt
from pocketchat.engine import Completion, Engine, SamplingParams
from pocketchat.tasks import Example, check, format_ok, prompt_messages

RUDE_WORDS = ("stupid", "idiot", "idiotic", "dumb", "moron", "shut up", "loser", "pathetic", "useless", "hate you")
_RUDE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in RUDE_WORDS) + r")\b", re.IGNORECASE)

# gold_score weights. Each is larger than all later ones together (0.7 > 0.3, 0.16 > 0.14, 0.08 > 0.06,
# 0.04 > 0.02 >= the concision term), so the score orders completions lexicographically, like `rank`.
GOLD_WEIGHTS = {"correct": 0.7, "format": 0.16, "ended": 0.08, "polite": 0.04, "concise": 0.02}
CONCISE_HALF = 64  # sampled tokens at which the concision term has fallen to half


def sampled_tokens(completion: Completion) -> int:
    return sum(not f for f in completion.forced)


def polite(text: str) -> bool:
    return _RUDE.search(text) is None


class ProgrammaticLabeler:
    """The rules of the module docstring, for task-suite prompts (it needs each prompt's `Example`)."""

    name = "program"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def key(self, example: Example, style: str, completion: Completion) -> tuple:
        """What the rules compare, best = largest: (correct, format, ended, polite, -tokens)."""
        text = completion.text
        return (check(example, text), format_ok(example, text, style), completion.finish_reason == "stop",
                polite(text), -sampled_tokens(completion))

    def rank(self, example: Example, style: str, completions: Sequence[Completion]) -> list[int]:
        """Indices of `completions`, best first."""
        rng = random.Random(f"labeler/{self.seed}/{example.key}/{example.question}/{style}")
        tiebreak = [rng.random() for _ in completions]
        keys = [self.key(example, style, c) for c in completions]
        return sorted(range(len(completions)), key=lambda i: (keys[i], tiebreak[i]), reverse=True)

    def gold_score(self, example: Example, style: str, completion: Completion) -> float:
        correct, formatted, ended, kind, neg_tokens = self.key(example, style, completion)
        w = GOLD_WEIGHTS
        return (w["correct"] * correct + w["format"] * formatted + w["ended"] * ended + w["polite"] * kind
                + w["concise"] / (1 - neg_tokens / CONCISE_HALF))


# ---- a person at the terminal ----------------------------------------------------------------------------------

class StopLabeling(Exception):
    """The person asked to stop (q, or end of input)."""


LABEL_HELP = ("rank the replies best first by their numbers, e.g. '2 1 3' (every number once); "
              "'s' skips this prompt, 'q' stops labeling")


def parse_ranking(answer: str, k: int) -> list[int]:
    """'2 1 3' or '2,1,3' -> [1, 0, 2]; ValueError saying what is wrong otherwise."""
    parts = answer.replace(",", " ").split()
    if not all(p.isdigit() for p in parts):
        raise ValueError("use the reply numbers only")
    numbers = [int(p) for p in parts]
    if sorted(numbers) != list(range(1, k + 1)):
        missing = sorted(set(range(1, k + 1)) - set(numbers))
        extra = sorted({n for n in numbers if not 1 <= n <= k or numbers.count(n) > 1})
        problems = ([f"missing {', '.join(map(str, missing))}"] if missing else []) + \
                   ([f"out of range or repeated: {', '.join(map(str, extra))}"] if extra else [])
        raise ValueError(f"give each of 1..{k} exactly once ({'; '.join(problems)})")
    return [n - 1 for n in numbers]


def label_in_terminal(prompt_text: str, completions: Sequence[str], input: Callable[[str], str] = input,
                      print: Callable[..., None] = print) -> list[int] | None:
    """Show a prompt and its completions; return the person's ranking (0-based indices, best first), None to
    skip this prompt. Raises StopLabeling on 'q' or end of input. Asks again after invalid input."""
    print("=" * 72)
    print(f"PROMPT:\n{prompt_text}")
    for i, text in enumerate(completions, start=1):
        print("-" * 72)
        print(f"[{i}]\n{text}")
    print("-" * 72)
    while True:
        try:
            answer = input(f"ranking of 1..{len(completions)}, best first (s = skip, q = quit, ? = help): ").strip()
        except EOFError:
            raise StopLabeling from None
        if answer.lower() in ("q", "quit"):
            raise StopLabeling
        if answer.lower() in ("s", "skip"):
            return None
        if answer in ("?", "h", "help"):
            print(LABEL_HELP)
            continue
        try:
            return parse_ranking(answer, len(completions))
        except ValueError as e:
            print(f"not a ranking: {e}")


# ---- sampling k completions and writing every ranked pair ----------------------------------------------------

@dataclass
class CompareStats:
    prompts: int = 0  # prompts ranked
    skipped: int = 0  # prompts the person skipped
    pairs: int = 0  # comparisons written
    ties: int = 0  # pairs not written: identical texts, or equal under every rule of the programmatic labeler


def ranked_pairs(ranking: Sequence[int], texts: Sequence[str], keys: Sequence[tuple] | None = None) -> tuple[list[tuple[int, int]], int]:
    """Every (better, worse) pair of a ranking, and how many were left out as ties.

    A pair of identical texts teaches nothing; with `keys` (the programmatic labeler's), neither does a pair
    that only the tie-breaking coin ordered, so both are left out."""
    pairs, ties = [], 0
    for a, b in itertools.combinations(ranking, 2):
        if texts[a] == texts[b] or (keys is not None and keys[a] == keys[b]):
            ties += 1
        else:
            pairs.append((a, b))
    return pairs, ties


def comparison_record(example: Example, style: str, chosen: Completion, rejected: Completion, labeler: str) -> dict:
    """One line of comparison JSONL: the prompt, both replies as assistant/tool messages, and metadata."""
    return {"messages": prompt_messages(example, style),
            "chosen": completion_messages(chosen.text), "rejected": completion_messages(rejected.text),
            "chosen_ended": chosen.finish_reason == "stop", "rejected_ended": rejected.finish_reason == "stop",
            "task": example.task, "style": style, "labeler": labeler}


def collect_comparisons(engine: Engine, cases: Sequence[tuple[Example, str]], k: int, out: TextIO, *,
                        labeler: str = "program", seed: int = 0, temperature: float = 1.0, max_tokens: int = 160,
                        chunk: int = 16, ask: Callable[[str, Sequence[str]], list[int] | None] = label_in_terminal) -> CompareStats:
    """Sample k completions of each (example, style) prompt, rank them, write every ranked pair to `out`.

    labeler: "program" (ProgrammaticLabeler(seed)) or "human" (`ask`, the terminal flow by default). Samples
    are seeded per prompt and sample index, and drawn `chunk` prompts at a time so a person labels while
    the rest is still to come; every prompt's pairs are flushed at once, so stopping early keeps them."""
    if k < 2:
        raise ValueError("k must be at least 2 to compare completions")
    program = ProgrammaticLabeler(seed) if labeler == "program" else None
    stats = CompareStats()
    for start in range(0, len(cases), chunk):
        batch = cases[start:start + chunk]
        prompts = [render_prompt(engine.tokenizer, prompt_messages(e, s)) for e, s in batch for _ in range(k)]
        params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, tools=s == "tool",
                                 seed=seed * 1_000_003 + (start + i) * k + j)
                  for i, (_, s) in enumerate(batch) for j in range(k)]
        completions = engine.generate(prompts, params)
        for i, (example, style) in enumerate(batch):
            group = completions[i * k:(i + 1) * k]
            texts = [c.text for c in group]
            if program is not None:
                ranking = program.rank(example, style, group)
                keys = [program.key(example, style, c) for c in group]
            else:
                try:
                    ranking = ask(prompt_messages(example, style)[0]["content"], texts)
                except StopLabeling:
                    return stats
                keys = None
                if ranking is None:
                    stats.skipped += 1
                    continue
            pairs, ties = ranked_pairs(ranking, texts, keys)
            stats.prompts += 1
            stats.ties += ties
            stats.pairs += len(pairs)
            out.write("".join(json.dumps(comparison_record(example, style, group[a], group[b], labeler)) + "\n"
                              for a, b in pairs))
            out.flush()
    return stats


def write_comparisons(engine: Engine, cases: Sequence[tuple[Example, str]], k: int, path: str | Path, **kwargs) -> CompareStats:
    """`collect_comparisons` into a new JSONL file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        return collect_comparisons(engine, cases, k, f, **kwargs)
