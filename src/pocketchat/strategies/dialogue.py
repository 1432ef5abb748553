"""A base model prompted into an assistant: "base models are not assistants, but they can be tricked into being
one" (State of GPT).

A pretrained model only continues documents. Make the document a transcript of a helpful assistant talking with a
user, end it where the assistant's next turn begins, and the likeliest continuation is a helpful answer; stop at
the next "User:" line, where the model would start writing the user's part. Solved task instances as the
exchanges (`shots`, in place of the general ones) make it a few-shot prompt for that task. The prompt is plain text, no chat template, so it
runs on any model: a local base folder, or any endpoint's /v1/completions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pocketchat.strategies.llm import LLM, Metered, Result
from pocketchat.tasks import extract_answer

HEADER = "A conversation with a helpful assistant, who answers every question correctly and briefly."
EXCHANGES = (("What is the capital of France?", "The capital of France is Paris."),
             ("How many legs does a spider have?", "A spider has 8 legs."),
             ("Name a primary color.", "Red is a primary color."))
USER, ASSISTANT = "User:", "Assistant:"


def dialogue_document(question: str, exchanges: Sequence[tuple[str, str]] = EXCHANGES) -> str:
    """The transcript: header, the exchanges, the question, and an open assistant turn."""
    turns = [f"{USER} {q}\n{ASSISTANT} {a}" for q, a in exchanges]
    return "\n\n".join([HEADER, *turns, f"{USER} {question}\n{ASSISTANT}"])


def exchanges_of(shots: Sequence[list[dict]]) -> list[tuple[str, str]]:
    """Solved chat exchanges (user turn, then the assistant's reply) as (question, answer) pairs."""
    return [(shot[0]["content"], shot[-1]["content"]) for shot in shots]


def dialogue(llm: LLM, question: str, *, shots: Sequence[list[dict]] = (), max_tokens: int = 256,
             seed: int | None = None, extract: Callable[[str], str | None] = extract_answer) -> Result:
    """One greedy continuation of the transcript (the exchanges: `shots`, else EXCHANGES), cut at the next user
    turn. Trace: the document and the text."""
    llm = Metered(llm)
    document = dialogue_document(question, exchanges_of(shots) or EXCHANGES)
    (g,) = llm.complete_text(document, max_tokens=max_tokens, stop=[f"\n{USER}"], seed=seed)
    text = g.text.strip()
    return Result(extract(text), {"document": document, "text": text, "finish_reason": g.finish_reason}, llm.usage)
