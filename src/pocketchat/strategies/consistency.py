"""Self-consistency: sample several chains of thought and take the answer most of them reach.

One sampled chain can go wrong at any step; independent chains rarely go wrong the same way, so the
majority answer is right more often than a single chain (Wang et al., 2022). Votes count normalised
answers ("1,234" and "1234" agree); a sample with no readable answer abstains, and so does a chain that
max_tokens cut off before it concluded (its last number is an intermediate result, not its answer), unless
every chain was cut off.
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
    Trace: samples [{text, answer, tokens, finished}] (tokens: its completion tokens; finished: not cut off
    by max_tokens), votes {answer: count} (most first) and shares {answer: votes / n}. `tally` recounts any
    subset of the samples (e.g. the first k)."""
    llm = Metered(llm)
    samples = llm.complete(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    trace_samples = [{"text": g.text, "answer": extract(g.text), "tokens": g.tokens,
                      "finished": g.finish_reason != "length"} for g in samples]
    winner, ranked = tally(trace_samples, normalize)
    trace = {"samples": trace_samples, "votes": ranked, "shares": {a: c / n for a, c in ranked.items()}}
    return Result(winner, trace, llm.usage)


def tally(samples: list[dict], normalize: Callable[[str], str] = normalize_number) -> tuple[str | None, dict]:
    """The vote over trace samples ({answer, finished}): finished chains only, unless none of them answered.
    Any prefix of a trace's samples is what a run with that many samples would have drawn."""
    finished = [s["answer"] for s in samples if s["finished"] and s["answer"] is not None]
    return vote(finished or [s["answer"] for s in samples], normalize)


def vote(answers: list[str | None], normalize: Callable[[str], str] = normalize_number) -> tuple[str | None, dict]:
    """The majority of the normalised answers (None abstains; a tie goes to the first sampled) and the
    votes {answer: count}, most first."""
    votes = Counter(normalize(a) for a in answers if a is not None)  # insertion order = first sampled
    winner = max(votes, key=votes.__getitem__) if votes else None  # max keeps the first of equal counts
    return winner, dict(sorted(votes.items(), key=lambda kv: -kv[1]))
