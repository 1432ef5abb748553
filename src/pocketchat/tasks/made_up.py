"""Made-up names: pronounceable non-words like "Drailmoth" that no model can know anything about.

The grounded-QA and JSON data of the SFT mixture (`data/sft_mixture.py`) and the RAG facts corpus
(`tasks/facts.py`) name their people and places with them, so an answer can only come from the given text.
"""

from __future__ import annotations

import random

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "sk", "t",
           "th", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "k"]


def made_up_word(rng: random.Random, syllables: int | None = None) -> str:
    """A capitalised non-word of `syllables` syllables (2, 2 or 3 at random when None)."""
    n = syllables or rng.choice([2, 2, 3])
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n)).capitalize()


def with_article(noun: str) -> str:
    """"a baker", "an owl"."""
    return ("an " if noun[0] in "aeiou" else "a ") + noun
