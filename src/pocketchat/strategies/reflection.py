"""Reflection: have the model check its answer against the task, and try again when the check fails.

A model that cannot go back within one completion can go back across completions: shown its own attempt,
it judges the attempt as a reader, which is easier than writing it (Shinn et al., 2023; Madaan et al.,
2023). The critic is the model itself by default, or a `verify` function when the task can be checked
without knowing the answer (a Game of 24 expression either makes 24 from the four numbers or it doesn't).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pocketchat.strategies.llm import LLM, Metered, Result
from pocketchat.tasks import extract_answer

CHECK_PROMPT = ("Check your answer against the question step by step. Is it correct? "
                "Start your reply with yes or no.")
RETRY_PROMPT = "Your answer is wrong. {feedback}\nSolve the problem again and end with a line \"Answer: X\"."
_VERDICT = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)


def critique(llm: LLM, messages: list[dict], attempt: str, max_tokens: int) -> tuple[bool, str]:
    """The model's verdict on its own attempt: (accepted, its reply). A reply that starts with neither yes
    nor no accepts: a retry is only worth its tokens when the critic says clearly that something is wrong."""
    (reply,) = llm.complete([*messages, {"role": "assistant", "content": attempt},
                             {"role": "user", "content": CHECK_PROMPT}], max_tokens=max_tokens)
    verdict = _VERDICT.match(reply.text)
    return not (verdict and verdict.group(1).lower() == "no"), reply.text


def reflection(llm: LLM, messages: list[dict], *, rounds: int = 2, max_tokens: int = 256, temperature: float = 0.0,
               seed: int | None = None, extract: Callable[[str], str | None] = extract_answer,
               verify: Callable[[str], str | None] | None = None) -> Result:
    """Answer, then up to `rounds` times: check the answer, and if the check fails answer again.

    verify(answer) returns None when the answer is right, else what is wrong; without it the model is the
    critic. Trace: attempts [{text, answer, accepted, feedback}]; the answer is the last attempt's."""
    llm = Metered(llm)
    convo, attempts = list(messages), []
    for k in range(rounds + 1):
        (g,) = llm.complete(convo, max_tokens=max_tokens, temperature=temperature, seed=None if seed is None else seed + k)
        found = extract(g.text)
        attempts.append({"text": g.text, "answer": found, "accepted": None, "feedback": None})
        if k == rounds:
            break
        if found is None:
            accepted, feedback = False, "No \"Answer:\" line was found."
        elif verify is not None:
            feedback = verify(found)
            accepted = feedback is None
        else:
            accepted, feedback = critique(llm, convo, g.text, max_tokens)
        attempts[-1].update(accepted=accepted, feedback=feedback)
        if accepted:
            break
        convo += [{"role": "assistant", "content": g.text},
                  {"role": "user", "content": RETRY_PROMPT.format(feedback=feedback or "").strip()}]
    return Result(attempts[-1]["answer"], {"attempts": attempts}, llm.usage)
