"""Self-consistency: sample several chains of thought and take the answer most of them reach.

One sampled chain can go wrong at any step; independent chains rarely go wrong the same way, so the
majority answer is right more often than a single chain (Wang et al., 2022). Votes count normalised
answers ("1,234" and "1234" agree); a sample with no readable answer abstains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pocketchat.strategies.llm import LLM, Metered, Result
from pocketchat.tasks import extract_answer
from pocketchat.tasks.base import normalize_number


def self_consistency(llm: LLM, messages: list[dict], *, n: int = 5, temperature: float = 0.7, max_tokens: int = 256,
                     seed: int | None = None, extract: Callable[[str], str | None] = extract_answer,
                     normalize: Callable[[str], str] = normalize_number) -> Result:
    """Majority vote over n samples; a tie goes to the answer sampled first.

    The n samples are one `complete(n=n)` call: one batch on the local engine, one request to an endpoint.
    Trace: samples [{text, answer, tokens}] (tokens: its completion tokens), votes {answer: count} (most
    first) and shares {answer: votes / n}. `vote` recounts any subset of the samples (e.g. the first k)."""
    llm = Metered(llm)
    samples = llm.complete(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    answers = [extract(g.text) for g in samples]
    winner, ranked = vote(answers, normalize)
    trace = {"samples": [{"text": g.text, "answer": a, "tokens": g.tokens} for g, a in zip(samples, answers)],
             "votes": ranked, "shares": {a: c / n for a, c in ranked.items()}}
    return Result(winner, trace, llm.usage)


def vote(answers: list[str | None], normalize: Callable[[str], str] = normalize_number) -> tuple[str | None, dict]:
    """The majority of the normalised answers (None abstains; a tie goes to the first sampled) and the
    votes {answer: count}, most first."""
    votes = Counter(normalize(a) for a in answers if a is not None)  # insertion order = first sampled
    winner = max(votes, key=votes.__getitem__) if votes else None  # max keeps the first of equal counts
    return winner, dict(sorted(votes.items(), key=lambda kv: -kv[1]))
