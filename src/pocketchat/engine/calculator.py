"""The calculator tool: exact arithmetic from a whitelisted syntax tree, never `eval`."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from pocketchat.engine.tools import Tool, one_string_argument, tool_error

CALC_MAX_CHARS = 200
CALC_MAX_DEPTH = 100  # syntax-tree depth; keeps the recursive evaluator far from Python's recursion limit
CALC_MAX_DIGITS = 100  # no intermediate result may exceed 10**100 in magnitude
CALC_MAX_ROUND_DIGITS = 15  # round(x, n) with a huge negative n would compute 10**-n
_CALC_LIMIT = 10**CALC_MAX_DIGITS

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_FUNCTIONS: dict[str, tuple[Callable, int, int]] = {  # name: (function, fewest args, most args)
    "sqrt": (math.sqrt, 1, 1), "abs": (abs, 1, 1), "round": (round, 1, 2),
    "min": (lambda *xs: min(xs), 1, 20), "max": (lambda *xs: max(xs), 1, 20),
}


def _checked(value: int | float) -> int | float:
    """Refuse a result too big to be useful before it feeds an operation that could take forever."""
    if isinstance(value, complex):
        raise ValueError("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("result too large")
    if abs(value) > _CALC_LIMIT:
        raise ValueError("result too large")
    return value


def _power(base: int | float, exponent: int | float) -> int | float:
    # int ** int is exact and unbounded, so 9**387420489 would run for minutes: predict its size first.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log10(abs(base)) > CALC_MAX_DIGITS:
            raise ValueError("result too large")
    return base**exponent  # float powers overflow fast, raising OverflowError or returning inf


def _evaluate(node: ast.AST, depth: int = 0) -> int | float:
    if depth > CALC_MAX_DEPTH:
        raise ValueError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool is an int: excluded
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and (type(node.op) in _BINARY or isinstance(node.op, ast.Pow)):
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, depth + 1))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        name = node.func.id
        fn, fewest, most = _FUNCTIONS[name]
        if node.keywords or not fewest <= len(node.args) <= most:
            count = f"{fewest} to {most} arguments" if most > fewest else f"{fewest} argument"
            raise ValueError(f"{name}() takes {count}")
        args = [_evaluate(arg, depth + 1) for arg in node.args]
        if name == "round" and len(args) == 2 and not (
                isinstance(args[1], int) and abs(args[1]) <= CALC_MAX_ROUND_DIGITS):
            limit = CALC_MAX_ROUND_DIGITS
            raise ValueError(f"round() digits must be an integer from -{limit} to {limit}")
        return _checked(fn(*args))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ValueError("use ** for powers, not ^")
    if isinstance(node, ast.Tuple):
        raise ValueError("one expression only, and no thousands separators (write 1000, not 1,000)")
    if isinstance(node, ast.Name):
        raise ValueError(f"unknown name {node.id!r} (known: {', '.join([*_CONSTANTS, *_FUNCTIONS])})")
    raise ValueError(f"unsupported syntax: {ast.unparse(node)[:40]!r}")


def format_number(value: int | float) -> str:
    """Integers exactly; floats rounded to 6 decimals without trailing zeros, so 0.1 + 0.2 reads "0.3"."""
    if isinstance(value, int):
        return str(value)
    if 1e-4 <= abs(value) < 1e15:
        return f"{value:.6f}".rstrip("0").rstrip(".")
    if value == 0:
        return "0"
    return f"{value:.6g}"  # too small or too large for fixed notation: 6 significant digits


def calculate(expression: str) -> str:
    """Evaluate arithmetic: numbers, + - * / // % **, unary signs, parentheses, pi, e, sqrt abs round min max."""
    if len(expression) > CALC_MAX_CHARS:
        return tool_error(f"expression longer than {CALC_MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return tool_error(f"not an arithmetic expression: {expression.strip()[:40]!r}")
    try:
        return format_number(_evaluate(tree))
    except ZeroDivisionError:
        return tool_error("division by zero")
    except OverflowError:
        return tool_error("result too large")
    except ValueError as e:  # ours, or math's "math domain error"
        return tool_error(str(e))


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly, e.g. 37*12 or (2.5+1)**2/3. "
                "Supports + - * / // % **, parentheses, pi, e, sqrt, abs, round, min, max.",
    parameters=one_string_argument("expression", "the arithmetic expression"),
    fn=calculate,
)
