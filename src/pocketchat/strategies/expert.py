"""Condition on good performance: "LLMs don't want to succeed, they want to imitate; you want to succeed, so ask
for it" (State of GPT).

A language model imitates all of its training text, expert answers and careless ones alike, and nothing in a
plain question says which to imitate. The prompt can: a system turn that makes the assistant a leading expert on
the topic, and the step-by-step instruction an automatic prompt search found to beat "Let's think step by step"
on math word problems (Zhou et al. 2022, "Large Language Models Are Human-Level Prompt Engineers"). Compare it
with plain chain of thought (`cot.py`) on the same instances: a small model finetuned on one fixed instruction may
gain nothing, or lose, from words it never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pocketchat.strategies.cot import answer
from pocketchat.strategies.fewshot import few_shot
from pocketchat.strategies.llm import LLM, Result
from pocketchat.tasks import extract_answer

EXPERT_INSTRUCTION = "Let's work this out in a step by step way to be sure we have the right answer."


def expert_messages(question: str, topic: str) -> list[dict]:
    """The system turn naming the assistant an expert on `topic`, then the question with the instruction."""
    persona = f"You are a leading expert in {topic}. You work carefully and your answers are always right."
    return [{"role": "system", "content": persona}, {"role": "user", "content": f"{question} {EXPERT_INSTRUCTION}"}]


def expert_cot(llm: LLM, question: str, topic: str, *, shots: Sequence[list[dict]] = (), max_tokens: int = 256,
               seed: int | None = None, extract: Callable[[str], str | None] = extract_answer) -> Result:
    """One greedy completion of the expert-conditioned prompt (after any demonstrations). Trace as `cot.answer`'s."""
    return answer(llm, few_shot(shots, expert_messages(question, topic)), max_tokens=max_tokens, seed=seed,
                  extract=extract)
