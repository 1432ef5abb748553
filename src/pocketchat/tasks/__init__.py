"""Verifiable tasks: the ground truth for SFT data, SFT evals, the RL reward and the strategy tables.

Every task generates seeded `Example`s whose answers are checked exactly; train and test are disjoint by
construction (see base.py). Typical use:

    examples = get_task("add2").generate("test", 200, seed=0)
    prompt = prompt_messages(examples[0], "cot")       # ask the model
    ok = check(examples[0], completion_text)           # grade what it said
    sft = [to_messages(e, style) for e, style in mixture("train", 1000, seed=0)]
"""

from pocketchat.tasks.base import (HELD_OUT_PARTS, SPLITS, TEST_PERCENT, AnswerKind, Call, Example, Task, held_out_part,
                                   split_of)
from pocketchat.tasks.grading import check, extract_answer, format_ok, score
from pocketchat.tasks.registry import STYLES, TASKS, get_task, mixture
from pocketchat.tasks.render import prompt_messages, rendered_style, to_messages

__all__ = [
    "HELD_OUT_PARTS", "SPLITS", "STYLES", "TASKS", "TEST_PERCENT", "AnswerKind", "Call", "Example", "Task", "check", "extract_answer",
    "format_ok", "get_task", "held_out_part", "mixture", "prompt_messages", "rendered_style", "score", "split_of", "to_messages",
]
