"""Tools a model calls: the calculator against Python arithmetic, and the tool-call plumbing (the Python
sandbox has tests/test_sandbox.py). Every bad call must come back as an "Error: ..." string."""

import json
import math
import random
import time

import pytest

from pocketchat.engine.calculator import CALCULATOR, calculate
from pocketchat.engine.toolcalls import TOOLS, get_tool, openai_tool_specs, parse_tool_call, run_tool_call
from pocketchat.engine.tools import Tool
from pocketchat.errors import UserError

# ---------------------------------------------------------------------------------------------- calculator

def random_expression(rng: random.Random, depth: int, ops: list[str]) -> str:
    if depth == 0 or rng.random() < 0.3:
        return str(rng.randint(0, 99))
    kind = rng.random()
    if kind < 0.15:
        return f"-{random_expression(rng, depth - 1, ops)}"
    if kind < 0.3:
        return f"({random_expression(rng, depth - 1, ops)})"
    if kind < 0.4:
        return f"({random_expression(rng, depth - 1, ops)})**{rng.randint(0, 3)}"
    return f"{random_expression(rng, depth - 1, ops)} {rng.choice(ops)} {random_expression(rng, depth - 1, ops)}"


def python_value(expression: str):
    try:
        return eval(expression)  # our own generated arithmetic, the reference to compare against
    except ZeroDivisionError:
        return ZeroDivisionError


def test_calculator_is_exact_on_random_integer_expressions():
    rng = random.Random(0)
    checked = errors = 0
    for _ in range(600):
        expression = random_expression(rng, 4, ["+", "-", "*", "//", "%"])
        expected = python_value(expression)
        if expected is not ZeroDivisionError and abs(expected) > 10**100:
            continue
        got = calculate(expression)
        if expected is ZeroDivisionError:
            assert got == "Error: division by zero", expression
            errors += 1
        else:
            assert got == str(expected), expression
        checked += 1
    assert checked > 500 and errors > 0  # both paths exercised


def test_calculator_matches_python_on_random_float_expressions():
    rng = random.Random(1)
    for _ in range(400):
        expression = random_expression(rng, 4, ["+", "-", "*", "/"])
        expected = python_value(expression)
        got = calculate(expression)
        if expected is ZeroDivisionError:
            assert got == "Error: division by zero", expression
            continue
        assert math.isclose(float(got), expected, rel_tol=1e-5, abs_tol=1e-6), (expression, got, expected)
        if float(expected).is_integer() and abs(expected) < 1e15:
            assert got == str(int(expected)), expression  # 12/2 reads "6", not "6.0"


@pytest.mark.parametrize("expression, expected", [
    ("37*12", "444"), ("37 * 12 ", "444"), ("12/2", "6"), ("1/3", "0.333333"), ("2/3", "0.666667"),
    ("0.1+0.2", "0.3"), ("2**-1", "0.5"), ("-2**2", "-4"), ("(-2)**2", "4"), ("2**3**2", "512"),
    ("1+2*3", "7"), ("(1+2)*3", "9"), ("10-4-3", "3"), ("-7//2", "-4"), ("7%3", "1"), ("--3", "3"),
    ("-(2+3)*+4", "-20"), ("sqrt(16)", "4"), ("sqrt(2)", "1.414214"), ("round(2.567, 2)", "2.57"),
    ("round(7.5)", "8"), ("max(1, 5, 3)", "5"), ("min(4, -2.5)", "-2.5"), ("abs(-3.5)", "3.5"),
    ("2*pi", "6.283185"), ("1e20", "1e+20"), ("1/3*1e-6", "3.33333e-07"), ("2**100", str(2**100)),
    ("-0.0", "0"), ("3.0", "3"),
])
def test_calculator_values_and_formatting(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize("expression, expected", [
    ("1/0", "Error: division by zero"), ("5//0", "Error: division by zero"), ("5 % 0.0", "Error: division by zero"),
    ("0**-1", "Error: division by zero"), ("2^10", "Error: use ** for powers, not ^"),
    ("sqrt(-1)", "Error: math domain error"), ("(-8)**0.5", "Error: result is not a real number"),
    ("9**9**9**9", "Error: result too large"), ("10**100000", "Error: result too large"),
    ("10**101", "Error: result too large"), ("1e308*10", "Error: result too large"),
    ("10.0**400", "Error: result too large"), ("99999999999*" * 15 + "1", "Error: result too large"),
    ("round(12345, -10**9)", "Error: round() digits must be an integer from -15 to 15"),
    ("-" * 150 + "1", "Error: expression nested too deeply"),
    ("1" + "+1" * 150, "Error: expression longer than 200 characters"),
    ("(" * 150 + "1" + ")" * 150, "Error: expression longer than 200 characters"),
    ("min()", "Error: min() takes 1 to 20 arguments"), ("sqrt(1, 2)", "Error: sqrt() takes 1 argument"),
    ("abs(x=1)", "Error: abs() takes 1 argument"),
    ("1,000", "Error: one expression only, and no thousands separators (write 1000, not 1,000)"),
])
def test_calculator_errors(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os')", "__import__('os').system('ls')", "().__class__.__bases__", "(1).real", "abs.__self__",
    "lambda: 1", "x", "open('f')", "[1, 2]", "'a' * 10", "1 if 1 else 2", "True + 1", "1j", "f'{1}'",
    "(x := 1)", "1 < 2", "~1", "1 << 10000", "", "1 +", "2 ** ", "1\x002",
])
def test_calculator_refuses_everything_but_arithmetic(expression):
    start = time.perf_counter()
    assert calculate(expression).startswith("Error: ")
    assert time.perf_counter() - start < 0.1


def test_calculator_tool_checks_arguments():
    assert CALCULATOR.run({"expression": "37*12"}) == "444"
    assert CALCULATOR.run({}) == "Error: missing argument 'expression'"
    assert CALCULATOR.run({"expression": 5}) == "Error: argument 'expression' must be a string, got int"
    assert CALCULATOR.run({"expression": "1", "x": 2}) == \
        "Error: unexpected argument 'x' (expected: expression)"
    assert CALCULATOR.run(["1+1"]) == "Error: arguments must be a JSON object, got list"


# -------------------------------------------------------------------------------------------- tool calls

def test_parse_tool_call():
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "37*12"}}</tool_call>'
    assert parse_tool_call(call) == ("calculator", {"expression": "37*12"})
    assert parse_tool_call("Let me compute. " + call + " trailing") == ("calculator", {"expression": "37*12"})
    assert parse_tool_call(call.removesuffix("</tool_call>")) == ("calculator", {"expression": "37*12"})
    assert parse_tool_call('<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"1\\"}"}') == \
        ("python", {"code": "1"})
    assert parse_tool_call('<tool_call>{"name": "now"}</tool_call>') == ("now", {})


@pytest.mark.parametrize("text, reason", [
    ('{"name": "calculator"}', "no <tool_call> tag"),
    ("<tool_call>{'name': 'calculator'}</tool_call>", "not valid JSON"),
    ("<tool_call>[1]</tool_call>", "must be a JSON object"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'needs a string "name"'),
    ('<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>', '"arguments" must be a JSON object'),
    ('<tool_call>{"name": "calculator", "arguments": "{oops"}</tool_call>', '"arguments" is not valid JSON'),
])
def test_parse_tool_call_rejects_malformed_calls(text, reason):
    with pytest.raises(UserError, match=reason):
        parse_tool_call(text)


def test_run_tool_call_returns_output_or_error_string():
    assert run_tool_call('<tool_call>{"name": "calculator", "arguments": {"expression": "37*12"}}</tool_call>') == "444"
    assert run_tool_call('<tool_call>{"name": "python", "arguments": {"code": "2**10"}}</tool_call>') == "1024"
    assert run_tool_call('<tool_call>{"name": "search", "arguments": {}}</tool_call>') == \
        "Error: unknown tool 'search' (available: calculator, python)"
    assert run_tool_call("<tool_call>{nope</tool_call>").startswith("Error: tool call is not valid JSON")
    assert run_tool_call('<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>') == \
        "Error: missing argument 'expression'"


def test_new_tools_register_and_failures_never_raise():
    def broken(text: str) -> str:
        raise RuntimeError("x" * 1000)

    echo = Tool("echo", "Repeat the text.", {"type": "object", "properties": {"text": {"type": "string"}},
                                             "required": ["text"]}, fn=lambda text: text)
    bad = Tool("broken", "Always fails.", echo.parameters, fn=broken)
    tools = {**TOOLS, echo.name: echo, bad.name: bad}
    assert run_tool_call('<tool_call>{"name": "echo", "arguments": {"text": "hi"}}</tool_call>', tools) == "hi"
    result = run_tool_call('<tool_call>{"name": "broken", "arguments": {"text": "hi"}}</tool_call>', tools)
    assert result.startswith("Error: RuntimeError: xxx") and len(result) <= len("Error: ") + 200
    assert get_tool("echo", tools) is echo
    with pytest.raises(UserError, match="unknown tool 'echo'"):
        get_tool("echo")


def test_openai_tool_specs():
    specs = openai_tool_specs(TOOLS)
    assert specs == openai_tool_specs(TOOLS.values())
    assert [s["function"]["name"] for s in specs] == ["calculator", "python"]
    for spec, tool in zip(specs, TOOLS.values()):
        assert spec == {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                                         "parameters": tool.parameters}}
        assert spec["function"]["parameters"]["required"] == list(spec["function"]["parameters"]["properties"])
    assert json.loads(json.dumps(specs)) == specs
