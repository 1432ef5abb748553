"""Tree of Thoughts: breadth-first search over partial solutions, the model proposing and judging the steps.

A chain of thought commits to every step it writes. ToT (Yao et al., 2023) keeps several partial solutions
("states") alive: at each depth the model generates next steps for each of the b best states, judges the
new states, and the search keeps the b best. The model's own judgement prunes the tree, so it can back out
of a step that looked fine when it was written.

- generator "sample": n_generate independent completions of one next step each (good when steps are rich);
  "propose": one completion listing several different next steps (good when steps are small, as in 24).
- evaluator "value": each state is rated sure / likely / impossible, n_evaluate times (20 / 1 / 0.001, as in
  the paper, averaged); ratings are cached by `value_key`, so states that leave the same numbers on the
  table are rated once. "vote": n_evaluate votes for the most promising of the level's states.
- selection "greedy": the b best (ties: first generated); "sample": b distinct states drawn in proportion
  to their values, seeded.

A task says how to prompt, parse and extend its states (`ToTTask`): `CountdownToT` for Game of 24 and the
reach puzzle, `StepsToT` for any question (a state is the list of steps written so far).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Protocol

from pocketchat.errors import UserError
from pocketchat.strategies.llm import LLM, Metered, Result
from pocketchat.tasks import extract_answer
from pocketchat.tasks.game24 import apply, fmt

VALUES = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}
_VALUE_WORD = re.compile(r"\b(sure|likely|impossible)\b", re.IGNORECASE)
_VOTE = re.compile(r"best choice is\D*(\d+)", re.IGNORECASE)


def parse_value(text: str) -> float:
    """The last sure / likely / impossible in a rating; 0 when there is none."""
    words = _VALUE_WORD.findall(text)
    return VALUES[words[-1].lower()] if words else 0.0


def parse_vote(text: str, choices: int) -> int | None:
    """The 0-based choice a vote names ("The best choice is 2" -> 1), or None."""
    found = _VOTE.findall(text)
    k = int(found[-1]) - 1 if found else -1
    return k if 0 <= k < choices else None


class ToTTask(Protocol):
    depth: int  # steps from the root to a complete solution

    def root(self) -> Hashable: ...
    def generate_prompt(self, state, several: bool) -> list[dict]: ...  # several: propose, else one step
    def steps(self, text: str) -> list[str]: ...  # candidate steps in a completion, in order
    def extend(self, state, step: str) -> Hashable | None: ...  # None: the step is not valid from state
    def value_prompt(self, state) -> list[dict]: ...
    def exact_value(self, state) -> float | None: ...  # a value known without the model
    def value_key(self, state) -> Hashable: ...
    def vote_prompt(self, states: Sequence) -> list[dict]: ...
    def is_final(self, state) -> bool: ...
    def answer(self, state) -> str | None: ...
    def show(self, state) -> str: ...


@dataclass
class Node:
    id: int
    parent: int | None
    depth: int
    step: str
    state: str  # as the task shows it
    value: float | None = None
    selected: bool = False


def _lines(text: str) -> list[str]:
    return [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", line).strip() for line in text.splitlines() if line.strip()]


# -- Game of 24 and the reach puzzle --------------------------------------------------------------------------

_STEP = re.compile(r"(-?\d+(?:/\d+)?)\s*([-+*/×x÷])\s*(-?\d+(?:/\d+)?)\s*=")
_SYMBOL = {"×": "*", "x": "*", "÷": "/"}


@dataclass(frozen=True)
class CountdownState:
    left: tuple[tuple[Fraction, str], ...]  # the numbers on the table, each with the expression that made it
    steps: tuple[str, ...] = ()


class CountdownToT:
    """States are the numbers left; a step combines two of them. The arithmetic is done exactly here (the
    model picks the move, a step naming a number that is not on the table is invalid), and a state with one
    number left needs no judge: it is the target or it is not.

    Proposals and ratings are asked for after a worked exchange on another puzzle (the paper's prompts are
    few-shot too): shown only a format, a small model copies the example's numbers instead of using its own."""

    DEMO = (2, 8, 14)  # the propose demonstration's numbers
    DEMO_TARGET = 10  # the value demonstrations' target: 4 6 can make it, 1 2 cannot

    def __init__(self, numbers: Sequence[int], target: int, ops: str):
        self.numbers, self.target, self.ops = list(numbers), target, ops
        self.depth = len(numbers) - 1

    def root(self) -> CountdownState:
        return self._start(self.numbers)

    @staticmethod
    def _start(numbers: Sequence[int]) -> CountdownState:
        return CountdownState(tuple((Fraction(x), str(x)) for x in sorted(numbers)))

    def _table(self, state: CountdownState) -> str:
        return " ".join(fmt(v) for v, _ in state.left)

    def _rules(self) -> str:
        return f"Operations: {' '.join(self.ops)}. Each number is used exactly once."

    def _moves(self, state: CountdownState) -> list[str]:
        """Every whole-number move from `state` (larger number first for - and /), shown as a step."""
        out = []
        for op in self.ops:
            for i, j in itertools.combinations(range(len(state.left)), 2):
                small, large = state.left[i][0], state.left[j][0]
                a, b = (small, large) if op in "+*" else (large, small)
                result = apply(a, op, b)
                if result is None or result.denominator != 1:
                    continue
                child = self.extend(state, f"{fmt(a)} {op} {fmt(b)} =")
                if child is not None and child.steps[-1] not in out:
                    out.append(child.steps[-1])
        return out

    def _propose(self, table: str, several: bool) -> str:
        ask = ("List up to 8 different possible next steps, one per line" if several
               else "Write one possible next step, on one line")
        return (f"Numbers: {table}. Target: {self.target}. {self._rules()}\n"
                f"Combine two of the numbers with one operation. {ask}, in the form \"a op b = c (left: the numbers "
                "that remain)\".")

    def generate_prompt(self, state: CountdownState, several: bool) -> list[dict]:
        demo = self._start(self.DEMO)
        moves = self._moves(demo)[: 8 if several else 1]
        return [{"role": "user", "content": self._propose(self._table(demo), several)},
                {"role": "assistant", "content": "\n".join(moves)},
                {"role": "user", "content": self._propose(self._table(state), several)}]

    def steps(self, text: str) -> list[str]:
        return [line for line in _lines(text) if _STEP.search(line)]

    def extend(self, state: CountdownState, step: str) -> CountdownState | None:
        m = _STEP.search(step)
        if m is None or _SYMBOL.get(m[2], m[2]) not in self.ops:
            return None
        op, left = _SYMBOL.get(m[2], m[2]), list(state.left)
        operands = []
        for text in (m[1], m[3]):
            k = next((k for k, (v, _) in enumerate(left) if v == Fraction(text)), None)
            if k is None:
                return None
            operands.append(left.pop(k))
        (a, ea), (b, eb) = operands
        result = apply(a, op, b)
        if result is None:
            return None
        wrap = [e if e.lstrip("-").isdigit() else f"({e})" for e in (ea, eb)]
        left.append((result, f"{wrap[0]} {op} {wrap[1]}"))
        left.sort(key=lambda x: x[0])
        shown = f"{fmt(a)} {op} {fmt(b)} = {fmt(result)} (left: {' '.join(fmt(v) for v, _ in left)})"
        return CountdownState(tuple(left), state.steps + (shown,))

    def _value(self, table: str, target: int) -> str:
        return (f"Can the numbers {table} make {target}? {self._rules()} "
                "Try a few combinations, then end with one word: sure, likely or impossible.")

    def value_prompt(self, state: CountdownState) -> list[dict]:
        demos = []
        for numbers in ((4, 6), (1, 2)):  # worked ratings: every move, then the verdict
            start = self._start(numbers)
            moves = [m.split(" (left")[0] for m in self._moves(start)]
            made = any(self.extend(start, m).left[0][0] == self.DEMO_TARGET for m in moves)
            demos += [{"role": "user", "content": self._value(self._table(start), self.DEMO_TARGET)},
                      {"role": "assistant", "content": "\n".join([*moves, "sure" if made else "impossible"])}]
        return [*demos, {"role": "user", "content": self._value(self._table(state), self.target)}]

    def exact_value(self, state: CountdownState) -> float | None:
        if len(state.left) > 1:
            return None
        return VALUES["sure"] if state.left[0][0] == self.target else VALUES["impossible"]

    def value_key(self, state: CountdownState) -> Hashable:
        return tuple(v for v, _ in state.left)

    def vote_prompt(self, states: Sequence[CountdownState]) -> list[dict]:
        choices = "\n".join(f"Choice {i}: {self.show(s)}" for i, s in enumerate(states, 1))
        return [{"role": "user", "content": (
            f"Goal: make {self.target} from {' '.join(map(str, sorted(self.numbers)))}. {self._rules()}\n"
            f"Which of these partial solutions is most likely to reach {self.target}?\n{choices}\n"
            "Think it over, then end with \"The best choice is N\".")}]

    def is_final(self, state: CountdownState) -> bool:
        return len(state.left) == 1

    def answer(self, state: CountdownState) -> str | None:
        return state.left[0][1] if self.is_final(state) else None

    def show(self, state: CountdownState) -> str:
        return "; ".join(state.steps) or f"(start: {self._table(state)})"


# -- any question: a state is the steps written so far ------------------------------------------------------

_ANSWER_STEP = re.compile(r"^answer:", re.IGNORECASE)


class StepsToT:
    """For a free question. A step is a line of reasoning; a state ending in "Answer: X" is complete."""

    def __init__(self, question: str, depth: int = 4):
        self.question, self.depth = question, depth

    def root(self) -> tuple[str, ...]:
        return ()

    def _so_far(self, state: tuple[str, ...]) -> str:
        return "\n".join(state) or "(none yet)"

    def generate_prompt(self, state: tuple[str, ...], several: bool) -> list[dict]:
        ask = ("Propose up to 5 different possible next steps, one per line." if several
               else "Write only the next step, on one line.")
        return [{"role": "user", "content": (
            f"{self.question}\n\nSteps so far:\n{self._so_far(state)}\n\n{ask} "
            "When the answer is known, the step is the final line \"Answer: X\".")}]

    def steps(self, text: str) -> list[str]:
        return _lines(text)

    def extend(self, state: tuple[str, ...], step: str) -> tuple[str, ...] | None:
        return None if not step or step in state else (*state, step)

    def value_prompt(self, state: tuple[str, ...]) -> list[dict]:
        return [{"role": "user", "content": (
            f"{self.question}\n\nPartial solution:\n{self._so_far(state)}\n\nAre these steps correct and on the way "
            "to the answer? Think briefly, then end with one word: sure, likely or impossible.")}]

    def exact_value(self, state: tuple[str, ...]) -> float | None:
        return None

    def value_key(self, state: tuple[str, ...]) -> Hashable:
        return state

    def vote_prompt(self, states: Sequence[tuple[str, ...]]) -> list[dict]:
        choices = "\n".join(f"Choice {i}:\n{self._so_far(s)}" for i, s in enumerate(states, 1))
        return [{"role": "user", "content": (
            f"{self.question}\n\nWhich partial solution is most promising?\n{choices}\n\n"
            "Think it over, then end with \"The best choice is N\".")}]

    def is_final(self, state: tuple[str, ...]) -> bool:
        return bool(state) and bool(_ANSWER_STEP.match(state[-1]))

    def answer(self, state: tuple[str, ...]) -> str | None:
        return extract_answer(state[-1]) if self.is_final(state) else None

    def show(self, state: tuple[str, ...]) -> str:
        return " | ".join(state) or "(start)"


# -- the search ---------------------------------------------------------------------------------------------

GENERATORS, EVALUATORS, SELECTIONS = ("sample", "propose"), ("value", "vote"), ("greedy", "sample")


def tree_of_thoughts(llm: LLM, task: ToTTask, *, breadth: int = 3, depth: int | None = None,
                     generator: str = "propose", n_generate: int = 3, evaluator: str = "value", n_evaluate: int = 3,
                     selection: str = "greedy", temperature: float = 0.7, max_tokens: int = 256,
                     seed: int = 0) -> Result:
    """BFS to `depth` (the task's by default) keeping `breadth` states per level.

    The answer is that of the best complete state left at the end (None if none is complete). Trace: nodes
    [{id, parent, depth, step, state, value, selected}] in creation order (the root is node 0), and
    evaluations (model calls that rated states) and cache_hits (ratings reused)."""
    for name, value, valid in (("generator", generator, GENERATORS), ("evaluator", evaluator, EVALUATORS),
                               ("selection", selection, SELECTIONS)):
        if value not in valid:
            raise UserError(f"tree_of_thoughts: {name} must be one of {', '.join(valid)}, got {value!r}")
    if breadth < 1 or n_generate < 1 or n_evaluate < 1 or (depth is not None and depth < 1):
        raise UserError("tree_of_thoughts: breadth, depth, n_generate and n_evaluate must be >= 1")
    llm, rng, calls = Metered(llm), random.Random(seed), itertools.count(seed)  # one seed per call: repeatable
    root = task.root()
    nodes = [Node(0, None, 0, "", task.show(root), selected=True)]
    states = {0: root}
    frontier, cache, stats = [0], {}, {"evaluations": 0, "cache_hits": 0}

    def complete(messages: list[dict], n: int) -> list[str]:
        return [g.text for g in llm.complete(messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                             seed=next(calls))]

    for level in range(1, (depth or task.depth) + 1):
        children, seen = [], set()
        for parent in frontier:
            if task.is_final(states[parent]):  # complete: carried over to compete with the new states
                children.append(parent)
                continue
            if generator == "propose":
                proposed = task.steps(complete(task.generate_prompt(states[parent], True), 1)[0])
            else:
                proposed = [s for text in complete(task.generate_prompt(states[parent], False), n_generate)
                            for s in task.steps(text)[:1]]
            for step in proposed:
                state = task.extend(states[parent], step)
                if state is None or state in seen:
                    continue
                seen.add(state)
                node = Node(len(nodes), parent, level, step, task.show(state))
                nodes.append(node)
                states[node.id] = state
                children.append(node.id)
        if not children:
            break
        _evaluate(task, [nodes[i] for i in children], states, evaluator, n_evaluate, complete, cache, stats)
        frontier = _select(children, [nodes[i].value for i in children], breadth, selection, rng)
        for i in frontier:
            nodes[i].selected = True
    done = [i for i in frontier if task.is_final(states[i])]
    best = max(done, key=lambda i: nodes[i].value or 0.0, default=None)  # max keeps the first of equals
    trace = {"nodes": [asdict(n) for n in nodes], "best": best, **stats}
    return Result(task.answer(states[best]) if best is not None else None, trace, llm.usage)


def _evaluate(task, candidates: list[Node], states: dict, evaluator: str, n_evaluate: int, complete, cache: dict,
              stats: dict) -> None:
    if evaluator == "vote":  # votes compare the states of one level: every candidate is voted on afresh
        counts = [0] * len(candidates)
        stats["evaluations"] += 1
        for text in complete(task.vote_prompt([states[c.id] for c in candidates]), n_evaluate):
            if (k := parse_vote(text, len(candidates))) is not None:
                counts[k] += 1
        for c, count in zip(candidates, counts):
            c.value = float(count)
        return
    for c in candidates:
        if c.value is not None:
            continue
        state, key = states[c.id], task.value_key(states[c.id])
        exact = task.exact_value(state)
        if exact is not None:
            c.value = exact
        elif key in cache:
            c.value = cache[key]
            stats["cache_hits"] += 1
        else:
            stats["evaluations"] += 1
            ratings = complete(task.value_prompt(state), n_evaluate)
            c.value = cache[key] = sum(parse_value(t) for t in ratings) / len(ratings)


def _select(ids: list[int], values: list[float], breadth: int, selection: str, rng: random.Random) -> list[int]:
    if selection == "greedy":
        order = sorted(range(len(ids)), key=lambda k: -values[k])  # stable: ties keep generation order
        return [ids[k] for k in order[:breadth]]
    pool, chosen = list(range(len(ids))), []
    while pool and len(chosen) < breadth:
        weights = [values[k] for k in pool]
        k = rng.choices(pool, weights=weights if sum(weights) > 0 else None)[0]
        pool.remove(k)
        chosen.append(ids[k])
    return chosen
