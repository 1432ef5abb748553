"""Examples as OpenAI-style conversations in three styles, so one model can be asked for any of them.

- direct: the question + "Answer with just the number." (or list, or spelling); the reply is the answer.
          With `equation`, a one-step computation restates itself first ("13 + 70 = 83"): that is how text a
          pretrained model read writes sums, so it writes the answer with both operands in view (SmolLM2 trained
          to give the bare number fell from 21.5% to 2.5% on 2-digit sums). A grader reads the number after "=".
- cot:    the question + "Think step by step."; the reply is the worked steps, then "Answer: X".
- tool:   the question + "Use the calculator."; the assistant calls `calculator` once per step (each call
          its own assistant turn, answered by a `tool` turn), then replies "Answer: X". A task with no
          arithmetic has nothing to calculate: its tool style is its cot style, prompt included, so the
          instruction in the prompt always matches the reply the model is trained to give.
The instructions are fixed strings: a small model keys its format on them.
"""

from __future__ import annotations

import json
import re

from pocketchat.tasks.base import Example
from pocketchat.tasks.registry import check_style, get_task

COT_INSTRUCTION = "Think step by step."
TOOL_INSTRUCTION = "Use the calculator."


def answer_line(answer: str) -> str:
    return f"Answer: {answer}"


def rendered_style(example: Example, style: str) -> str:
    """The style `example` is actually rendered in when `style` is asked for."""
    check_style(style)
    return "cot" if style == "tool" and not example.calls else style


def prompt_messages(example: Example, style: str) -> list[dict]:
    """The user turn that asks for `example` in `style`: what evals and RL rollouts prompt with."""
    style = rendered_style(example, style)
    instruction = {"direct": get_task(example.task).kind.instruction, "cot": COT_INSTRUCTION,
                   "tool": TOOL_INSTRUCTION}[style]
    return [{"role": "user", "content": f"{example.question} {instruction}"}]


def direct_reply(example: Example, equation: bool = False) -> str:
    """The direct style's reply: the bare answer, or with `equation` "13 + 70 = 83" for a one-step computation."""
    if equation and len(example.calls) == 1 and example.calls[0].result == example.answer:
        spaced = re.sub(r"\s*([-+*/])\s*", r" \1 ", example.calls[0].expression)
        return f"{spaced} = {example.answer}"
    return example.answer


def to_messages(example: Example, style: str, equation: bool = False) -> list[dict]:
    """The whole conversation: the prompt and the reference reply in `style` (an SFT example); `equation`: see
    the module docstring."""
    messages = prompt_messages(example, style)
    style = rendered_style(example, style)
    if style == "direct":
        messages.append({"role": "assistant", "content": direct_reply(example, equation)})
    elif style == "cot":
        messages.append({"role": "assistant", "content": "\n".join([*example.steps, answer_line(example.answer)])})
    else:
        for call in example.calls:
            arguments = json.dumps({"expression": call.expression})
            messages.append({"role": "assistant", "content": call.note,
                             "tool_calls": [{"type": "function",
                                             "function": {"name": "calculator", "arguments": arguments}}]})
            messages.append({"role": "tool", "name": "calculator", "content": call.result})
        messages.append({"role": "assistant", "content": answer_line(example.answer)})
    return messages
