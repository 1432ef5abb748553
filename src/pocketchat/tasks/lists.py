"""Sorting and reversing short lists of numbers or words.

Both tasks key their split on the list itself, so a held-out list is held out for both. The sort steps
are selection sort written out (the smallest of what is left, one line per pick), which keeps the state a
small model must track on the page; the reverse steps number the items so the model can read them back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pocketchat.tasks.base import LIST, Example, Task
from pocketchat.tasks.letters import WORDS


def _items(rng: random.Random) -> tuple[list[str], bool]:
    """3-6 distinct numbers below 100, or 3-5 distinct words; and whether they are numbers."""
    if rng.random() < 0.6:
        return [str(x) for x in rng.sample(range(1, 100), rng.randint(3, 6))], True
    return rng.sample(WORDS, rng.randint(3, 5)), False


def _joined(items: list[str]) -> str:
    return ", ".join(items)


@dataclass(frozen=True)
class SortList(Task):
    name: str = "sort_list"
    kind = LIST

    def sample(self, rng: random.Random) -> Example:
        items, numeric = _items(rng)
        order = int if numeric else str
        if numeric:
            question = f"Sort these numbers from smallest to largest: {_joined(items)}."
        else:
            question = f"Sort these words in alphabetical order: {_joined(items)}."
        steps, left = [], list(items)
        while len(left) > 1:
            pick = min(left, key=order)
            steps.append(f"{'Smallest' if numeric else 'First'} of {_joined(left)}: {pick}")
            left.remove(pick)
        return Example(task=self.name, question=question, answer=_joined(sorted(items, key=order)), steps=steps,
                       calls=[], key=f"list:{','.join(items)}")


@dataclass(frozen=True)
class ReverseList(Task):
    name: str = "reverse_list"
    kind = LIST

    def sample(self, rng: random.Random) -> Example:
        items, _ = _items(rng)
        question = f"Reverse the order of this list: {_joined(items)}."
        steps = ["Numbered: " + ", ".join(f"{i}={item}" for i, item in enumerate(items, 1)),
                 f"Read from {len(items)} back to 1."]
        return Example(task=self.name, question=question, answer=_joined(items[::-1]), steps=steps, calls=[],
                       key=f"list:{','.join(items)}")
