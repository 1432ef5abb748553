"""One completion, its answer read from the last "Answer:" line: a direct answer, chain of thought, or a tool run.

A transformer spends the same compute on every token and cannot go back, so a hard step needs room:
"Think step by step." makes the model write the intermediate results down and condition on them, instead
of producing the answer in one token. The instructions are the task suite's own (`pocketchat.tasks.render`),
so a model finetuned on that suite is asked in the words it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict

from pocketchat.engine.tools import Tool
from pocketchat.strategies.llm import LLM, Metered, Result
from pocketchat.tasks import extract_answer
from pocketchat.tasks.render import COT_INSTRUCTION, TOOL_INSTRUCTION

DIRECT_INSTRUCTION = "Answer with just the answer."
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
INSTRUCTIONS = {"direct": DIRECT_INSTRUCTION, "cot": COT_INSTRUCTION, "tool": TOOL_INSTRUCTION}


def ask(question: str, style: str = "cot") -> list[dict]:
    """The user turn asking `question` in a style: direct, cot (step by step) or tool (use the calculator)."""
    return [{"role": "user", "content": f"{question} {INSTRUCTIONS[style]}"}]


def answer(llm: LLM, messages: list[dict], *, temperature: float = 0.0, max_tokens: int = 256,
           tools: Sequence[Tool] | None = None, seed: int | None = None,
           extract: Callable[[str], str | None] = extract_answer) -> Result:
    """One completion of `messages`. Trace: the text, the finish reason and any tool calls."""
    llm = Metered(llm)
    (g,) = llm.complete(messages, temperature=temperature, max_tokens=max_tokens, tools=tools, seed=seed)
    trace = {"text": g.text, "finish_reason": g.finish_reason, "tool_calls": [asdict(c) for c in g.tool_calls]}
    return Result(extract(g.text), trace, llm.usage)


def read_number(answer: str | None) -> str | None:
    """A number answer as a general chat model phrases it: "The answer is 118." -> "118".

    `extract_answer` takes a one-line reply as a whole, which is right for a model finetuned to reply with
    the bare number and wrong for one that writes a sentence; an answer that is more than a number becomes
    the last number in it (the lenient reading evaluation harnesses use), and one without a number stays."""
    if answer is None:
        return None
    numbers = _NUMBER.findall(answer)
    stripped = answer.strip().removesuffix(".").strip().removeprefix("$")
    if not numbers or _NUMBER.fullmatch(stripped):
        return answer
    return numbers[-1]


def extract_number(text: str) -> str | None:
    """`extract_answer`, then `read_number`: the answer of a completion to a question with a number answer."""
    return read_number(extract_answer(text))
