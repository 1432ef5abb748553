"""GSM8K-style word problems: short stories with 2-4 arithmetic steps and a whole-number answer.

Each template draws its numbers so that every intermediate value is a positive integer (divisions are
exact), then writes the question and its solution as labelled steps "Label: expr = value". The same steps
become the tool style's calculator calls, so the step-by-step and tool solutions are one computation.
The split key is the template and its numbers: names and objects are decoration, so a test problem is
never a train problem with the names swapped.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pocketchat.tasks.base import NUMBER, Call, Example, Task

NAMES = ("Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Lily", "Noah", "Emma", "Omar", "Nina", "Jack", "Sofia", "Liam",
         "Maya", "Ethan", "Chloe", "Ryan", "Grace", "Lucas", "Ella", "Adam", "Ruby", "Max", "Hana", "Ivan", "Aria",
         "Tom", "Kira", "Dan")


@dataclass(frozen=True)
class _Step:
    label: str
    expression: str
    value: int


def _op(label: str, a: int, op: str, b: int) -> _Step:
    if op == "/":
        assert a % b == 0, f"{a}/{b} is not whole: templates must draw divisible numbers"
        return _Step(label, f"{a}/{b}", a // b)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return _Step(label, f"{a}{op}{b}", value)


# A template draws numbers and returns (the numbers that identify the instance, question, steps).
# Every count it writes next to a plural noun is at least 2.
Template = Callable[[random.Random], tuple[tuple[int, ...], str, list[_Step]]]


def _shopping(rng):
    items = rng.sample(("notebooks", "pens", "apples", "stickers", "candles", "cups", "muffins", "comics",
                        "balloons", "sandwiches", "toy cars", "plates"), 2)
    name = rng.choice(NAMES)
    n1, p1, n2, p2 = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 6), rng.randint(2, 9)
    c1, c2 = _op(items[0].capitalize(), n1, "*", p1), _op(items[1].capitalize(), n2, "*", p2)
    total = _op("Total", c1.value, "+", c2.value)
    bill = rng.choice([b for b in (10, 20, 50, 100, 200) if b > total.value][:2])  # one of the next two notes up
    question = (f"{name} buys {n1} {items[0]} for ${p1} each and {n2} {items[1]} for ${p2} each. {name} pays "
                f"with a ${bill} bill. How many dollars of change does {name} get?")
    return (n1, p1, n2, p2, bill), question, [c1, c2, total, _op("Change", bill, "-", total.value)]


def _sharing(rng):
    container, thing = rng.choice((("boxes", "cookies"), ("bags", "marbles"), ("jars", "candies"),
                                   ("packs", "stickers"), ("boxes", "crayons"), ("bags", "apples")))
    name = rng.choice(NAMES)
    while True:
        boxes, per_box = rng.randint(2, 6), rng.randint(3, 12)
        friends = [f for f in range(2, 7) if (boxes * per_box) % f == 0 and boxes * per_box // f >= 2]
        if friends:
            break
    f = rng.choice(friends)
    total = _op("Total", boxes, "*", per_box)
    each = _op("Each friend", total.value, "/", f)
    given = rng.randint(1, each.value - 1)
    question = (f"{name} has {boxes} {container} with {per_box} {thing} in each. {name} shares all the {thing} "
                f"equally among {f} friends. Each friend then gives away {given} of them. "
                f"How many {thing} does each friend have now?")
    return (boxes, per_box, f, given), question, [total, each, _op("Now", each.value, "-", given)]


def _travel(rng):
    vehicle = rng.choice(("car", "train", "bus", "truck", "boat"))
    s1, t1, s2, t2 = rng.randrange(20, 95, 5), rng.randint(2, 5), rng.randrange(20, 95, 5), rng.randint(2, 4)
    d1, d2 = _op("First part", s1, "*", t1), _op("Second part", s2, "*", t2)
    question = (f"A {vehicle} travels at {s1} km per hour for {t1} hours, then at {s2} km per hour for {t2} hours. "
                "How many kilometers does it travel in total?")
    return (s1, t1, s2, t2), question, [d1, d2, _op("Total", d1.value, "+", d2.value)]


def _reading(rng):
    name = rng.choice(NAMES)
    per_day, days, extra = rng.randint(5, 20), rng.randint(2, 7), rng.randint(5, 30)
    pages = per_day * days + extra + rng.randint(5, 120)
    first = _op(f"In {days} days", per_day, "*", days)
    read = _op("Read", first.value, "+", extra)
    question = (f"{name}'s book has {pages} pages. {name} reads {per_day} pages a day for {days} days, then "
                f"{extra} more pages on Sunday. How many pages are left to read?")
    return (pages, per_day, days, extra), question, [first, read, _op("Left", pages, "-", read.value)]


def _ages(rng):
    name, relative = rng.choice(NAMES), rng.choice(("mother", "father", "aunt", "uncle", "grandmother"))
    age, times, years = rng.randint(4, 12), rng.randint(3, 6), rng.randint(2, 10)
    now = _op(f"{relative.capitalize()} now", age, "*", times)
    question = (f"{name} is {age} years old. {name}'s {relative} is {times} times as old. "
                f"How old will the {relative} be in {years} years?")
    return (age, times, years), question, [now, _op(f"In {years} years", now.value, "+", years)]


def _sibling_ages(rng):
    a, b = rng.sample(NAMES, 2)
    age, older, years = rng.randint(3, 15), rng.randint(2, 9), rng.randint(2, 10)
    other = _op(b, age, "+", older)
    both = _op("Sum now", age, "+", other.value)
    added = _op("Years added", 2, "*", years)
    question = (f"{a} is {age} years old. {b} is {older} years older than {a}. "
                f"What will the sum of their ages be in {years} years?")
    return (age, older, years), question, [other, both, added, _op("Sum then", both.value, "+", added.value)]


def _savings(rng):
    name, thing = rng.choice(NAMES), rng.choice(("book", "game", "kite", "ball", "puzzle", "backpack"))
    start, weekly, weeks = rng.randint(5, 30), rng.randint(3, 15), rng.randint(2, 8)
    saved = _op("Saved", weekly, "*", weeks)
    total = _op("Total", start, "+", saved.value)
    cost = rng.randint(5, total.value - 1)
    question = (f"{name} has ${start}. {name} saves ${weekly} every week for {weeks} weeks, then spends ${cost} "
                f"on a {thing}. How many dollars does {name} have left?")
    return (start, weekly, weeks, cost), question, [saved, total, _op("Left", total.value, "-", cost)]


def _garden(rng):
    plant, fruit = rng.choice((("tomato", "tomatoes"), ("pepper", "peppers"), ("bean", "beans"),
                               ("strawberry", "strawberries"), ("pumpkin", "pumpkins")))
    rows, per_row, dead, each = rng.randint(3, 9), rng.randint(4, 12), rng.randint(2, 9), rng.randint(2, 6)
    plants = _op("Plants", rows, "*", per_row)
    alive = _op("Alive", plants.value, "-", dead)
    question = (f"A garden has {rows} rows with {per_row} {plant} plants in each row. {dead} plants die. "
                f"Each remaining plant gives {each} {fruit}. How many {fruit} does the garden give?")
    return (rows, per_row, dead, each), question, [plants, alive, _op(fruit.capitalize(), alive.value, "*", each)]


def _teams(rng):
    while True:
        classes, size = rng.randint(2, 6), rng.randint(15, 30)
        team_sizes = [t for t in range(2, 7) if (classes * size) % t == 0]
        if team_sizes:
            break
    team, balls = rng.choice(team_sizes), rng.randint(2, 5)
    students = _op("Students", classes, "*", size)
    teams = _op("Teams", students.value, "/", team)
    question = (f"A school has {classes} classes with {size} students each. The students form teams of {team}, "
                f"and each team gets {balls} balls. How many balls are needed?")
    return (classes, size, team, balls), question, [students, teams, _op("Balls", teams.value, "*", balls)]


def _baking(rng):
    name = rng.choice(NAMES)
    per_cake, morning, afternoon = rng.randint(2, 4), rng.randint(2, 5), rng.randint(2, 5)
    cakes = _op("Cakes", morning, "+", afternoon)
    used = _op("Eggs used", cakes.value, "*", per_cake)
    dozens = rng.randint(-(-used.value // 12), 5)  # enough eggs for every cake
    bought = _op("Eggs bought", dozens, "*", 12)
    question = (f"A cake needs {per_cake} eggs. {name} bakes {morning} cakes in the morning and {afternoon} cakes "
                f"in the afternoon. {name} bought {dozens} dozen eggs. How many eggs are left?")
    return ((per_cake, morning, afternoon, dozens), question,
            [cakes, used, bought, _op("Left", bought.value, "-", used.value)])


def _wages(rng):
    name = rng.choice(NAMES)
    rate, h1, h2, bonus = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 8), rng.randint(5, 50)
    hours = _op("Hours", h1, "+", h2)
    pay = _op("Pay", hours.value, "*", rate)
    question = (f"{name} earns ${rate} per hour. {name} works {h1} hours on Monday and {h2} hours on Tuesday, "
                f"and also gets a ${bonus} bonus. How many dollars does {name} earn in total?")
    return (rate, h1, h2, bonus), question, [hours, pay, _op("Total", pay.value, "+", bonus)]


def _unit_price(rng):
    item = rng.choice(("apples", "pencils", "tickets", "bottles of juice", "notebooks", "flowers"))
    price, n = rng.randint(2, 9), rng.randint(2, 8)
    m = rng.choice([k for k in range(2, 13) if k != n])
    one = _op("Each", price * n, "/", n)
    question = f"{n} {item} cost ${price * n}. How many dollars do {m} {item} cost?"
    return (price, n, m), question, [one, _op(f"{m} {item}", one.value, "*", m)]


def _theater(rng):
    place = rng.choice(("theater", "cinema", "concert hall"))
    rows, seats = rng.randint(5, 15), rng.randint(8, 20)
    half = min(40, rows * seats // 2)  # at least 20: everyone gets a seat
    adults, children = rng.randint(5, half), rng.randint(5, half)
    total = _op("Seats", rows, "*", seats)
    people = _op("People", adults, "+", children)
    question = (f"A {place} has {rows} rows of {seats} seats. {adults} adults and {children} children come to a "
                "show. How many seats are empty?")
    return (rows, seats, adults, children), question, [total, people, _op("Empty", total.value, "-", people.value)]


def _pets(rng):
    name = rng.choice(NAMES)
    dogs, cats, dog_food, cat_food, days = (rng.randint(2, 4), rng.randint(2, 4), rng.randint(2, 5),
                                            rng.randint(2, 4), rng.randint(2, 7))
    d, c = _op("Dogs", dogs, "*", dog_food), _op("Cats", cats, "*", cat_food)
    day = _op("Per day", d.value, "+", c.value)
    question = (f"{name} has {dogs} dogs and {cats} cats. Each dog eats {dog_food} cups of food a day and each "
                f"cat eats {cat_food} cups. How many cups of food do they eat in {days} days?")
    return (dogs, cats, dog_food, cat_food, days), question, [d, c, day, _op(f"In {days} days", day.value, "*", days)]


TEMPLATES: dict[str, Template] = {
    "shopping": _shopping, "sharing": _sharing, "travel": _travel, "reading": _reading, "ages": _ages,
    "sibling_ages": _sibling_ages, "savings": _savings, "garden": _garden, "teams": _teams, "baking": _baking,
    "wages": _wages, "unit_price": _unit_price, "theater": _theater, "pets": _pets,
}


@dataclass(frozen=True)
class WordProblems(Task):
    name: str = "word"
    kind = NUMBER

    def sample(self, rng: random.Random) -> Example:
        template = rng.choice(sorted(TEMPLATES))
        numbers, question, steps = TEMPLATES[template](rng)
        return Example(task=self.name, question=question, answer=str(steps[-1].value),
                       steps=[f"{s.label}: {s.expression} = {s.value}" for s in steps],
                       calls=[Call(s.expression, str(s.value), note=f"{s.label}:") for s in steps],
                       key=f"story:{template}:{','.join(map(str, numbers))}")
