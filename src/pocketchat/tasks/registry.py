"""The registered tasks by name, and a mixture of all of them for SFT data and evals."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pocketchat.errors import UserError
from pocketchat.tasks.arithmetic import Arithmetic
from pocketchat.tasks.base import Example, Task
from pocketchat.tasks.letters import CountLetters, Spell
from pocketchat.tasks.lists import ReverseList, SortList
from pocketchat.tasks.units import Units
from pocketchat.tasks.word_problems import WordProblems

STYLES = ("direct", "cot", "tool")

TASKS: dict[str, Task] = {task.name: task for task in (
    Arithmetic("add", "+", digits_a=(2, 4), digits_b=(2, 4)),
    Arithmetic("add2", "+", digits_a=(2, 2), digits_b=(2, 2)),  # the "2-digit addition" target metric
    Arithmetic("sub", "-", digits_a=(2, 4), digits_b=(2, 4)),
    Arithmetic("mul", "*", digits_a=(2, 3), digits_b=(1, 2)),
    WordProblems(),
    CountLetters(),
    Spell(),
    SortList(),
    ReverseList(),
    Units(),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (valid: {', '.join(TASKS)})")
    return TASKS[name]


def check_style(style: str) -> str:
    if style not in STYLES:
        raise UserError(f"unknown style {style!r} (valid: {', '.join(STYLES)})")
    return style


def mixture(split: str, n_per_task: int, seed: int, styles: Sequence[str] = STYLES,
            tasks: Sequence[str] | None = None) -> list[tuple[Example, str]]:
    """n_per_task examples of each task (all registered ones by default), each paired with the style to
    render it in, shuffled. Styles are dealt in turn within each task, so every (task, style) cell gets
    n_per_task / len(styles) examples, give or take one."""
    if not styles:
        raise UserError("styles is empty")
    styles = [check_style(s) for s in styles]
    pairs = []
    for name in tasks if tasks is not None else TASKS:
        examples = get_task(name).generate(split, n_per_task, seed)
        pairs += [(example, styles[i % len(styles)]) for i, example in enumerate(examples)]
    random.Random(f"mixture/{split}/{seed}").shuffle(pairs)
    return pairs
