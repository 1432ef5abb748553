"""Search puzzles for Tree of Thoughts: Game of 24, and a small "reach the target" puzzle.

Both are countdown puzzles: combine the given numbers with the allowed operations, each number exactly
once, to make the target. A solution is written one step at a time, "13 - 9 = 4 (left: 4 4 10)", so a
search can branch on the next step and judge what is left; that is what makes them the ToT paper's test.

- game24: four numbers from 1 to 13, + - * /, target 24. The paper's benchmark is 1,362 puzzles from
  4nums.com, which is not available offline; puzzles are generated instead: draw four numbers, keep them
  when an exhaustive search finds a solution. (The solvable sets of four numbers from 1 to 13 are exactly
  1,362 — the same space, a test counts them — but drawn uniformly rather than ranked by human solve time.)
- reach: three numbers from 1 to 12, + and -, and a target they can reach that is not their plain sum, so
  every instance needs a choice of signs. Small enough for small models, still a search.

Answers are expressions such as "(13 - 9) * (10 - 4)", graded exactly by `Countdown.correct` (parse,
each number once, evaluate with fractions); many answers are right, so they are not compared as strings.
The puzzles are `Task`s (seeded, split by a hash of the numbers and target) kept out of the task registry,
whose grading compares normalised answer strings: look them up in `PUZZLES`.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from pocketchat.errors import UserError
from pocketchat.tasks.base import AnswerKind, Call, Example, Task

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

EXPRESSION = AnswerKind("expression", lambda s: "".join(s.split()), re.compile(r"[\d+\-*/() ]+"),
                        "Answer with just the expression.")


def fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


@dataclass(frozen=True)
class Step:
    """One move: two of the numbers on the table replaced by a op b."""

    a: Fraction
    op: str
    b: Fraction
    result: Fraction

    def text(self, left: Sequence[Fraction]) -> str:
        return f"{fmt(self.a)} {self.op} {fmt(self.b)} = {fmt(self.result)} (left: {' '.join(fmt(x) for x in sorted(left))})"


def apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """a op b exactly, or None for a division by zero."""
    return None if op == "/" and b == 0 else _APPLY[op](a, b)


@lru_cache(maxsize=100_000)
def _search(values: tuple[Fraction, ...], target: Fraction, ops: str, whole: bool) -> tuple[Step, ...] | None:
    """Steps that turn `values` (sorted) into [target], or None. whole: only non-negative whole intermediates."""
    if len(values) == 1:
        return () if values[0] == target else None
    for i in range(len(values)):
        for j in range(len(values)):
            if i == j or (i > j and values[i] == values[j]):
                continue
            rest = values[:min(i, j)] + values[min(i, j) + 1:max(i, j)] + values[max(i, j) + 1:]
            for op in ops:
                if op in "+*" and i > j:  # commutative: one order is enough
                    continue
                r = apply(values[i], op, values[j])
                if r is None or (whole and (r < 0 or r.denominator != 1)):
                    continue
                found = _search(tuple(sorted(rest + (r,))), target, ops, whole)
                if found is not None:
                    return (Step(values[i], op, values[j], r), *found)
    return None


@lru_cache(maxsize=100_000)
def _reachable(values: tuple[Fraction, ...], ops: str) -> frozenset[Fraction]:
    """Every value that `values` (sorted) can make, using each of them once."""
    if len(values) == 1:
        return frozenset(values)
    out = set()
    for i in range(len(values)):
        for j in range(len(values)):
            rest = values[:min(i, j)] + values[min(i, j) + 1:max(i, j)] + values[max(i, j) + 1:]
            for op in ops if i != j else ():
                if (r := apply(values[i], op, values[j])) is not None:
                    out |= _reachable(tuple(sorted(rest + (r,))), ops)
    return frozenset(out)


def solve(numbers: Sequence[int], target: int, ops: str) -> list[Step] | None:
    """One solution as steps, preferring one whose intermediate results are whole numbers; None if unsolvable."""
    values = tuple(sorted(Fraction(x) for x in numbers))
    for whole in (True, False):
        found = _search(values, Fraction(target), ops, whole)
        if found is not None:
            return list(found)
    return None


def compose(numbers: Sequence[int], steps: Sequence[Step]) -> str:
    """The one expression that performs `steps` on `numbers`, e.g. "(13 - 9) * (10 - 4)"."""
    table = [(Fraction(x), str(x)) for x in numbers]
    for step in steps:
        exprs = []
        for operand in (step.a, step.b):
            k = next(k for k, (v, _) in enumerate(table) if v == operand)
            exprs.append(table.pop(k)[1])
        wrap = [e if e.lstrip("-").isdigit() else f"({e})" for e in exprs]
        table.append((step.result, f"{wrap[0]} {step.op} {wrap[1]}"))
    return table[0][1]


def expression_problem(text: str, numbers: Sequence[int], target: int, ops: str) -> str | None:
    """What is wrong with `text` as a solution (a short reason), or None when it is right.

    Accepts "×" and "÷" and a trailing "= target"; the numbers must be the puzzle's, each exactly once."""
    text = text.replace("×", "*").replace("÷", "/").strip().rstrip(".")
    text = re.sub(r"=\s*-?\d+\s*$", "", text).strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):
        return f"not an expression: {text[:40]!r}"
    used: list[int] = []

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and _AST_OPS.get(type(node.op), "?") in ops:
            a, b = value(node.left), value(node.right)
            result = apply(a, _AST_OPS[type(node.op)], b)
            if result is None:
                raise ValueError("division by zero")
            return result
        raise ValueError(f"only whole numbers and {' '.join(ops)} are allowed")

    try:
        result = value(tree)
    except ValueError as e:
        return str(e)
    if Counter(used) != Counter(numbers):
        return f"uses {' '.join(map(str, sorted(used)))}, not each of {' '.join(map(str, sorted(numbers)))} once"
    if result != target:
        return f"makes {fmt(result)}, not {target}"
    return None


@dataclass(frozen=True)
class Countdown(Task):
    """Reach the target from `count` numbers in 1..high with `ops`; target None: draw a reachable one."""

    name: str
    count: int
    high: int
    ops: str
    target: int | None = None
    max_target: int = 20  # drawn targets lie in 1..max_target
    kind = EXPRESSION

    def sample(self, rng: random.Random) -> Example:
        while True:
            numbers = sorted(rng.randint(1, self.high) for _ in range(self.count))
            target = self.target if self.target is not None else self._draw_target(numbers, rng)
            steps = solve(numbers, target, self.ops) if target is not None else None
            if steps is not None:
                break
        left = [Fraction(x) for x in numbers]
        texts, calls = [], []
        for step in steps:
            left.remove(step.a)
            left.remove(step.b)
            left.append(step.result)
            texts.append(step.text(left))
            calls.append(Call(f"{fmt(step.a)}{step.op}{fmt(step.b)}", fmt(step.result)))
        return Example(task=self.name, question=self.question(numbers, target), answer=compose(numbers, steps),
                       steps=texts, calls=calls, key=f"{self.name}:{' '.join(map(str, numbers))}={target}")

    def _draw_target(self, numbers: list[int], rng: random.Random) -> int | None:
        made = _reachable(tuple(sorted(Fraction(x) for x in numbers)), self.ops)
        targets = [t for t in range(1, self.max_target + 1) if t != sum(numbers) and t in made]
        return rng.choice(targets) if targets else None

    def question(self, numbers: Sequence[int], target: int) -> str:
        return (f"Use the numbers {' '.join(map(str, numbers))} and {' '.join(self.ops)} to make {target}. "
                "Use each number exactly once.")

    @staticmethod
    def puzzle(example: Example) -> tuple[list[int], int]:
        """The numbers and the target of an instance (from its key)."""
        numbers, target = example.key.split(":", 1)[1].split("=")
        return [int(x) for x in numbers.split()], int(target)

    def correct(self, example: Example, answer: str | None) -> bool:
        numbers, target = self.puzzle(example)
        return answer is not None and expression_problem(answer, numbers, target, self.ops) is None


PUZZLES: dict[str, Countdown] = {p.name: p for p in (
    Countdown("game24", count=4, high=13, ops="+-*/", target=24),
    Countdown("reach", count=3, high=12, ops="+-"),
)}


def get_puzzle(name: str) -> Countdown:
    if name not in PUZZLES:
        raise UserError(f"unknown puzzle {name!r} (valid: {', '.join(PUZZLES)})")
    return PUZZLES[name]
