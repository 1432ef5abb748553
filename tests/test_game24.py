"""The search puzzles: generated instances are solvable and split, the checker is exact, steps replay."""

import re
from fractions import Fraction
from itertools import combinations_with_replacement

import pytest

from pocketchat.errors import UserError
from pocketchat.tasks import split_of
from pocketchat.tasks.game24 import PUZZLES, compose, expression_problem, get_puzzle, solve


@pytest.mark.parametrize("name", list(PUZZLES))
def test_instances_are_solved_by_their_reference_and_split(name):
    puzzle = get_puzzle(name)
    train, test = puzzle.generate("train", 40, seed=0), puzzle.generate("test", 40, seed=0)
    assert train == puzzle.generate("train", 40, seed=0)
    assert {e.key for e in train}.isdisjoint(e.key for e in test)
    assert all(split_of(e.key) == "test" for e in test)
    for e in train + test:
        numbers, target = puzzle.puzzle(e)
        assert len(numbers) == puzzle.count and all(1 <= x <= puzzle.high for x in numbers)
        assert e.question == f"Use the numbers {' '.join(map(str, numbers))} and {' '.join(puzzle.ops)} to make {target}. " \
                             "Use each number exactly once."
        assert puzzle.correct(e, e.answer) and puzzle.correct(e, f"{e.answer} = {target}")
        if name == "game24":
            assert target == 24
        else:
            assert 1 <= target <= puzzle.max_target and target != sum(numbers)
        # the steps replay: each combines two numbers on the table, and the last leaves the target
        table = list(numbers)
        for step, call in zip(e.steps, e.calls, strict=True):
            a, op, b, result, left = re.fullmatch(r"(\S+) ([-+*/]) (\S+) = (\S+) \(left: ([^)]*)\)", step).groups()
            table.remove(Fraction(a))
            table.remove(Fraction(b))
            table.append(Fraction(result))
            assert {"+": Fraction(a) + Fraction(b), "-": Fraction(a) - Fraction(b), "*": Fraction(a) * Fraction(b),
                    "/": Fraction(a) / Fraction(b) if Fraction(b) else None}[op] == Fraction(result)
            assert sorted(table) == [Fraction(x) for x in left.split()]
            assert (call.expression, call.result) == (f"{a}{op}{b}", result)
        assert table == [target]


def test_checker_is_exact():
    numbers = [4, 9, 10, 13]
    assert expression_problem("(13 - 9) * (10 - 4)", numbers, 24, "+-*/") is None
    assert expression_problem("(13-9)×(10-4) = 24.", numbers, 24, "+-*/") is None
    assert expression_problem("6 / (1 - 3 / 4)", [1, 3, 4, 6], 24, "+-*/") is None  # fractions are exact
    assert expression_problem("(13 - 9) * (10 - 4) * 1", numbers, 24, "+-*/") == \
        "uses 1 4 9 10 13, not each of 4 9 10 13 once"
    assert expression_problem("13 + 9 + 10 - 4", numbers, 24, "+-*/") == "makes 28, not 24"
    assert expression_problem("(13 - 9) * (10 - 4)", numbers, 24, "+-") == "only whole numbers and + - are allowed"
    assert expression_problem("4 / (10 - 10) + 9 + 13", [4, 9, 10, 10, 13], 24, "+-*/") == "division by zero"
    assert expression_problem("-4 + 9 + 10 + 13", numbers, 28, "+-*/") is not None  # no unary minus
    assert expression_problem("2 ** 3", [2, 3], 8, "+-*/") is not None
    assert expression_problem("4 9 10 13", numbers, 24, "+-*/").startswith("not an expression")


def test_solver_and_compose():
    steps = solve([1, 3, 4, 6], 24, "+-*/")  # the classic that needs a fraction
    assert steps is not None and any(s.result.denominator != 1 for s in steps)
    assert expression_problem(compose([1, 3, 4, 6], steps), [1, 3, 4, 6], 24, "+-*/") is None
    assert solve([1, 1, 1, 1], 24, "+-*/") is None
    whole = solve([4, 9, 10, 13], 24, "+-*/")
    assert all(s.result.denominator == 1 and s.result >= 0 for s in whole)  # whole intermediates preferred
    assert get_puzzle("game24").correct(get_puzzle("game24").generate("test", 1, 0)[0], None) is False
    with pytest.raises(UserError, match="game24, reach"):
        get_puzzle("game25")


@pytest.mark.slow
def test_solvable_sets_of_four_are_the_benchmarks_1362():
    assert sum(solve(c, 24, "+-*/") is not None for c in combinations_with_replacement(range(1, 14), 4)) == 1362
