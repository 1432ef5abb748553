"""Multi-digit addition, subtraction and multiplication.

The worked steps are the school algorithms, one short line each, because a small model learns an
algorithm it can see: addition and subtraction go column by column from the ones (with carries and
borrows), multiplication splits the first factor by place value and adds the partial products.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pocketchat.errors import UserError
from pocketchat.tasks.base import NUMBER, Call, Example, Task

_PHRASES = {
    "+": ("What is {a} + {b}?", "Compute {a} + {b}.", "What is {a} plus {b}?", "Add {a} and {b}."),
    "-": ("What is {a} - {b}?", "Compute {a} - {b}.", "What is {a} minus {b}?", "Subtract {b} from {a}."),
    "*": ("What is {a} * {b}?", "Compute {a} * {b}.", "What is {a} times {b}?", "Multiply {a} by {b}."),
}


def _digits(n: int) -> list[int]:
    """Ones first."""
    return [int(d) for d in reversed(str(n))]


def addition_steps(a: int, b: int) -> list[str]:
    """ "7+6 = 13, carry 1" per column, ones first; a missing digit is written as 0 to keep lines regular.
    The last column writes its whole sum, so the answer is that sum followed by the ones digits above it."""
    da, db = _digits(a), _digits(b)
    width = max(len(da), len(db))
    steps, carry = [], 0
    for i in range(width):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        total = x + y + carry
        line = f"{x}+{y}" + ("+1" if carry else "") + f" = {total}"
        carry = int(total >= 10 and i < width - 1)
        steps.append(line + (", carry 1" if carry else ""))
    return steps


def subtraction_steps(a: int, b: int) -> list[str]:
    """ "12-7 = 5, borrow 1" per column, ones first (a >= b); the answer is the column results read upwards."""
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i, x in enumerate(da):
        y = db[i] if i < len(db) else 0
        if x - y - borrow < 0:
            x += 10
            next_borrow = 1
        else:
            next_borrow = 0
        line = f"{x}-{y}" + ("-1" if borrow else "") + f" = {x - y - borrow}"
        steps.append(line + (", borrow 1" if next_borrow else ""))
        borrow = next_borrow
    return steps


def multiplication_steps(a: int, b: int) -> list[str]:
    """347*86 -> "300*86 = 25800", "40*86 = 3440", "7*86 = 602", "25800+3440+602 = 29842"."""
    parts = [d * 10**i for i, d in reversed(list(enumerate(_digits(a)))) if d]
    steps = [f"{part}*{b} = {part * b}" for part in parts]
    if len(parts) > 1:
        steps.append("+".join(str(part * b) for part in parts) + f" = {a * b}")
    return steps


@dataclass(frozen=True)
class Arithmetic(Task):
    """a op b with each operand's digit count drawn uniformly from an inclusive range."""

    name: str
    op: str  # "+", "-" or "*"
    digits_a: tuple[int, int]
    digits_b: tuple[int, int]
    kind = NUMBER

    def __post_init__(self):
        if self.op not in _PHRASES:
            raise UserError(f"task {self.name}: op must be one of {' '.join(_PHRASES)}, got {self.op!r}")
        for field, (lo, hi) in (("digits_a", self.digits_a), ("digits_b", self.digits_b)):
            if not 1 <= lo <= hi:
                raise UserError(f"task {self.name}: {field} must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")

    def sample(self, rng: random.Random) -> Example:
        a, b = _operand(rng, self.digits_a), _operand(rng, self.digits_b)
        if self.op == "-" and a < b:
            a, b = b, a  # answers stay non-negative
        if self.op == "+":
            answer, steps = a + b, addition_steps(a, b)
        elif self.op == "-":
            answer, steps = a - b, subtraction_steps(a, b)
        else:
            answer, steps = a * b, multiplication_steps(a, b)
        # a+b and b+a are one instance for the split, so a test sum is never trained in swapped order
        x, y = sorted((a, b)) if self.op in "+*" else (a, b)
        return Example(task=self.name, question=rng.choice(_PHRASES[self.op]).format(a=a, b=b),
                       answer=str(answer), steps=steps, calls=[Call(f"{a}{self.op}{b}", str(answer))],
                       key=f"arith:{x}{self.op}{y}")


def _operand(rng: random.Random, digits: tuple[int, int]) -> int:
    d = rng.randint(*digits)
    return rng.randint(10 ** (d - 1), 10**d - 1)
