"""Letter-level tasks over a built-in list of common words: counting a letter and spelling a word.

A BPE model sees "strawberry" as two or three tokens, not ten letters, so these tasks test (and train)
exactly what tokenization hides. Both tasks key their split on the word alone, so a held-out word is
never spelled in training, whatever the task.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from importlib import resources

from pocketchat.tasks.base import NUMBER, SPELLING, Example, Task

WORDS: tuple[str, ...] = tuple(resources.files(__package__).joinpath("words.txt").read_text().split())


def spelled(word: str) -> str:
    return "-".join(word)


@dataclass(frozen=True)
class CountLetters(Task):
    name: str = "count_letters"
    kind = NUMBER

    def sample(self, rng: random.Random) -> Example:
        word = rng.choice(WORDS)
        if rng.random() < 0.8:
            letter = rng.choice(word)  # by position, so repeated letters (the interesting cases) come up more
        else:
            letter = rng.choice([c for c in string.ascii_lowercase if c not in word])
        count = word.count(letter)
        question = rng.choice((f'How many times does the letter "{letter}" appear in "{word}"?',
                               f'How many "{letter}" letters are in the word "{word}"?'))
        # A running tally on the spelled word: r(1) ... r(2) ... the count is the last tally.
        if count:
            seen, marked = 0, []
            for c in word:
                seen += c == letter
                marked.append(f"{c}({seen})" if c == letter else c)
            steps = ["-".join(marked)]
        else:
            steps = [f"{spelled(word)} has no {letter}"]
        return Example(task=self.name, question=question, answer=str(count), steps=steps, calls=[],
                       key=f"vocab:{word}")


@dataclass(frozen=True)
class Spell(Task):
    name: str = "spell"
    kind = SPELLING

    def sample(self, rng: random.Random) -> Example:
        word = rng.choice(WORDS)
        question = rng.choice((f'Spell the word "{word}" with dashes between the letters.',
                               f'Spell "{word}" letter by letter, with dashes between the letters.'))
        return Example(task=self.name, question=question, answer=spelled(word),
                       steps=[f'"{word}" has {len(word)} letters.'], calls=[], key=f"vocab:{word}")
