"""Unseen facts: documents about made-up people and villages, and questions answered by exact spans.

The RAG benchmark's corpus. Every name is a random pronounceable non-word, so no model can know any of
these facts: whatever a model gets right beyond chance came from the retrieved text, never from memory.
Documents have several paragraphs, each naming its entity, so a chunk that holds one can be found by the
name; the questions use the phrasings of the SFT mixture's grounded-QA data, so a model finetuned on it
knows what is asked.
Everything is generated from `seed`: the same arguments give the same corpus.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pocketchat.errors import UserError
from pocketchat.tasks.made_up import made_up_word, with_article

_JOBS = ["baker", "pilot", "teacher", "carpenter", "doctor", "painter", "gardener", "engineer", "farmer",
         "librarian", "chemist", "sailor", "potter", "weaver"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "gray", "white", "black", "pink"]
_ANIMALS = ["cat", "dog", "parrot", "goat", "horse", "rabbit", "turtle", "owl"]
_FOODS = ["apples", "soup", "rice", "cheese", "bread", "plums", "noodles", "honey"]
_INSTRUMENTS = ["violin", "flute", "drums", "piano", "harp", "trumpet", "cello", "guitar"]
_THINGS = ["lamp", "kettle", "basket", "bicycle", "clock", "umbrella", "radio", "chair"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]

# Paragraphs of (sentence, question, answer key); a paragraph's first sentence names the entity.
_PERSON = [
    [("{name} lives in the town of {town}.", "Where does {name} live?", "town"),
     ("{he} works as {a_job}.", "What is {name}'s job?", "job"),
     ("{he} is {age} years old.", "How old is {name}?", "age")],
    [("{name} has {a_animal} called {pet}.", "What is the name of {name}'s {animal}?", "pet"),
     ("Every morning {name} eats {food}.", "What does {name} eat every morning?", "food"),
     ("{his} favorite color is {color}.", "What is {name}'s favorite color?", "color")],
    [("{name} opened a workshop in {year}.", "In which year did {name} open a workshop?", "year"),
     ("{his} sister is called {sister}.", "What is the name of {name}'s sister?", "sister"),
     ("In the evenings {he_lower} plays the {instrument}.", "Which instrument does {name} play?", "instrument")],
]
_VILLAGE = [
    [("{place} is a village on the river {river}.", "Which river is {place} on?", "river"),
     ("About {people} people live there.", "How many people live in {place}?", "people")],
    [("The mayor of {place} is {mayor}.", "Who is the mayor of {place}?", "mayor"),
     ("{place} was founded in {year}.", "When was {place} founded?", "year")],
    [("{place} is known for its {color} {thing}s.", "What is {place} known for?", "known"),
     ("Every {month} the village holds a market.", "In which month does {place} hold its market?", "month")],
]


@dataclass(frozen=True)
class FactDocument:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class FactQuestion:
    question: str
    answer: str  # a span of the document's text
    doc_id: str  # the document that holds the answer


def _person(rng: random.Random, name: str) -> dict:
    she = rng.random() < 0.5
    job, animal = rng.choice(_JOBS), rng.choice(_ANIMALS)
    return {"name": name, "he": "She" if she else "He", "he_lower": "she" if she else "he",
            "his": "Her" if she else "His", "town": made_up_word(rng, 3), "job": job, "a_job": with_article(job),
            "age": rng.randint(19, 88), "animal": animal, "a_animal": with_article(animal), "pet": made_up_word(rng, 2),
            "food": rng.choice(_FOODS), "color": rng.choice(_COLORS), "year": rng.randint(1900, 2015),
            "sister": f"{made_up_word(rng, 2)} {name.split()[1]}", "instrument": rng.choice(_INSTRUMENTS)}


def _village(rng: random.Random, name: str) -> dict:
    color, thing = rng.choice(_COLORS), rng.choice(_THINGS)
    return {"place": name, "river": made_up_word(rng, 2), "people": rng.randint(120, 9800),
            "mayor": f"{made_up_word(rng, 2)} {made_up_word(rng, 2)}", "year": rng.randint(1100, 1990),
            "color": color, "thing": thing, "known": f"{color} {thing}s", "month": rng.choice(_MONTHS)}


def facts_corpus(n_documents: int = 40, questions_per_document: int = 2,
                 seed: int = 0) -> tuple[list[FactDocument], list[FactQuestion]]:
    """n_documents documents (60% people, 40% villages) and questions_per_document questions about each,
    on different facts, in document order."""
    if n_documents < 1 or not 1 <= questions_per_document <= 6:
        raise UserError(f"facts_corpus needs n_documents >= 1 and 1 <= questions_per_document <= 6, got "
                        f"{n_documents} and {questions_per_document}")
    rng = random.Random(f"facts:{seed}")
    docs, questions, names = [], [], set()
    while len(docs) < n_documents:
        person = rng.random() < 0.6
        name = f"{made_up_word(rng, 2)} {made_up_word(rng, 2)}" if person else made_up_word(rng, 3)
        if name in names:
            continue
        names.add(name)
        entity, paragraphs = (_person(rng, name), _PERSON) if person else (_village(rng, name), _VILLAGE)
        doc_id = f"{'person' if person else 'village'}-{len(docs):04d}"
        text = "\n\n".join(" ".join(s.format(**entity) for s, _, _ in p) for p in paragraphs)
        docs.append(FactDocument(doc_id, name, text))
        facts = [fact for p in paragraphs for fact in p]
        for _, question, key in rng.sample(facts, questions_per_document):
            questions.append(FactQuestion(question.format(**entity), str(entity[key]), doc_id))
    return docs, questions


def write_documents(docs: list[FactDocument], path: str | Path) -> None:
    """One JSON line per document, {"id", "title", "text"}: what `pocketchat index` reads."""
    Path(path).write_text("".join(json.dumps(asdict(d)) + "\n" for d in docs), encoding="utf-8")


def answer_correct(answer: str, completion: str) -> bool:
    """Whether the completion states the answer: the span, as whole words, case and spacing aside."""
    norm = lambda s: " ".join(s.lower().split())
    return re.search(rf"(?<!\w){re.escape(norm(answer))}(?!\w)", norm(completion)) is not None
