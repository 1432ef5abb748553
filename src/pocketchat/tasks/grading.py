"""Reading answers out of completions and grading them: exact match after normalisation, and format.

A completion is the text a model generated after the prompt. In the tool style that text holds the whole
exchange as the engine produced it: the model's <tool_call>{...}</tool_call>, the forced tool turns, and
the final reply; the answer is read from its last "Answer:" line all the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pocketchat.errors import UserError
from pocketchat.tasks.base import Example
from pocketchat.tasks.registry import get_task
from pocketchat.tasks.render import rendered_style

_ANSWER = re.compile(r"\banswer:[ \t]*([^\n]*)", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"answer:\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*")
_EQUATION = re.compile(r"[\d\s+\-*/().]+=\s*(.+)")  # "13 + 70 = 83": a direct reply that restates its sum
# ChatML's tag (pocketchat.chat_format.TOOL_CALL) followed by the JSON that names the calculator
_CALCULATOR_CALL = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"calculator"')


def extract_answer(text: str) -> str | None:
    """The answer a completion gives, in any style: the rest of its last "Answer:" line; else a one-line
    completion as a whole (the direct style); else the last number of a longer one; else None."""
    found = _ANSWER.findall(text)
    if found:
        return found[-1].strip() or None
    text = text.strip()
    if not text:
        return None
    if "\n" not in text:
        return text
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def check(example: Example, completion: str) -> bool:
    """Whether the completion's answer equals the example's, after the task's normalisation.

    For number answers, a reply in a model's own words with no "Answer:" line ("The sum of 12 and 34 is
    **46**.") counts by its last number: models that never saw the tasks' format (an imported SmolLM2) are
    graded on what they answered, not on how. After "Answer:" the answer must be just the number."""
    kind = get_task(example.task).kind
    given = extract_answer(completion)
    if (given is not None and kind.name == "number" and not _ANSWER.search(completion)
            and not kind.shape.fullmatch(kind.normalize(given))):
        numbers = _NUMBER.findall(completion)
        given = numbers[-1] if numbers else given
    return given is not None and kind.normalize(given) == kind.normalize(example.answer)


def format_ok(example: Example, completion: str, style: str) -> bool:
    """Whether the completion has the shape `style` asks for, right or wrong: direct = one line that is a
    bare answer of the task's kind, or for a number a computation "13 + 70 = 83" (`render.direct_reply`); cot =
    steps, then a last line "Answer: X"; tool = a calculator call and a last line "Answer: X". (A task without
    arithmetic renders tool as cot, and is judged as cot.)"""
    kind = get_task(example.task).kind
    style = rendered_style(example, style)
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    if style == "direct":
        equation = _EQUATION.fullmatch(lines[0]) if len(lines) == 1 and kind.name == "number" else None
        answer = equation.group(1) if equation else lines[0] if len(lines) == 1 else ""
        return bool(kind.shape.fullmatch(kind.normalize(answer)))
    final = _ANSWER_LINE.fullmatch(lines[-1]) if lines else None
    if final is None or not kind.shape.fullmatch(kind.normalize(final.group(1))):
        return False
    if style == "cot":
        return len(lines) >= 2
    return bool(_CALCULATOR_CALL.search(completion))


def score(task_name: str, examples: Sequence[Example], completions: Sequence[str]) -> float:
    """Accuracy of `completions` on `examples` of one task, in [0, 1]."""
    get_task(task_name)
    if len(examples) != len(completions):
        raise UserError(f"score({task_name}): {len(examples)} examples but {len(completions)} completions")
    if not examples:
        raise UserError(f"score({task_name}): no examples to score")
    for i, example in enumerate(examples):
        if example.task != task_name:
            raise UserError(f"score({task_name}): example {i} is from task {example.task!r}")
    return sum(check(e, c) for e, c in zip(examples, completions)) / len(examples)
