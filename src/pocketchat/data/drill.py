"""Worked-problem text for pretraining: what arithmetic on the web gives a real base model.

Shakespeare and the Bible hold almost no arithmetic, and a few-million-parameter model that has only read
them cannot add, nor copy a number from its context (no induction heads after a few million tokens), so no
amount of SFT formatting makes it an assistant that gets sums right. Real pretraining text is full of
worked arithmetic; this is a small stand-in: plain-text worksheets of the verifiable tasks (train split
only, so the held-out test instances stay unseen), each problem written as a bare answer, as worked steps,
or as calculator calls, the same three ways SFT later asks for them, without any chat markup.

    What is 37 + 45? 82
    Compute 347 - 86.
    7-6 = 1
    4-8 = ...
    Answer: 261
    Add 12 and 9. calculator 12+9 -> 21. Answer: 21
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from pocketchat.tasks.base import Example
from pocketchat.tasks.registry import STYLES, TASKS
from pocketchat.tasks.render import answer_line

PROBLEMS_PER_SHEET = 200
# Problems per task; the arithmetic the SFT targets (2-digit addition first) gets the most.
DRILL_TASKS = {"add2": 12_000, "add": 6_000, "sub": 6_000, "mul": 4_000, "word": 3_000,
               "count_letters": 1_000, "spell": 1_000, "sort_list": 1_000, "reverse_list": 1_000, "units": 1_000}


def problem_text(example: Example, style: str) -> str:
    """One problem in `style` as plain text (a task without calculator calls falls back to its steps)."""
    if style == "direct":
        return f"{example.question} {example.answer}\n"
    if style == "tool" and example.calls:
        calls = " ".join(f"{c.note + ' ' if c.note else ''}calculator {c.expression} -> {c.result}."
                         for c in example.calls)
        return f"{example.question} {calls} {answer_line(example.answer)}\n"
    return "\n".join([example.question, *example.steps, answer_line(example.answer)]) + "\n"


def drill_documents(seed: int = 0) -> Iterator[tuple[str, str]]:
    """(name, text) worksheets of shuffled problems, the same for the same seed on any machine."""
    problems = []
    for name, n in DRILL_TASKS.items():
        for i, example in enumerate(TASKS[name].generate("train", n, seed)):
            problems.append(problem_text(example, STYLES[i % len(STYLES)]))
    random.Random(f"drill/{seed}").shuffle(problems)
    for start in range(0, len(problems), PROBLEMS_PER_SHEET):
        yield f"drill/{start // PROBLEMS_PER_SHEET:04d}", "\n".join(problems[start:start + PROBLEMS_PER_SHEET])
