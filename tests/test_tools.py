"""Tools a model calls: the calculator against Python arithmetic, the Python sandbox against hostile code,
and the tool-call plumbing. Every hostile case must come back as an "Error: ..." string, quickly."""

import json
import math
import os
import random
import socket
import tempfile
import time

import pytest

from pocketchat.engine.tools import (CALCULATOR, PYTHON, TOOLS, SandboxLimits, Tool, calculate, get_tool,
                                     openai_tool_specs, parse_tool_call, run_python, run_tool_call)
from pocketchat.errors import UserError

QUICK = SandboxLimits(timeout_s=2.0)  # only hostile code gets near it
SHORT = SandboxLimits(timeout_s=0.5)  # for code that runs forever


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


# ------------------------------------------------------------------------------------------ python: normal

@pytest.mark.parametrize("code, expected", [
    ("print(sum(range(10)))", "45"),
    ("2**10", "1024"),
    ("x = 5\nx * 2", "10"),
    ("'hi'", "'hi'"),
    ("print('a')\nNone", "a"),
    ("def f(n):\n    return n * n\n\nprint([f(i) for i in range(4)])", "[0, 1, 4, 9]"),
    ("import math\nmath.factorial(20)", "2432902008176640000"),
    ("with open('a.txt', 'w') as f:\n    f.write('saved')\nprint(open('a.txt').read())", "saved"),
    ("import pathlib, tempfile\np = pathlib.Path(tempfile.mkdtemp()) / 'n.txt'\np.write_text('ok')\n"
     "p.rename(p.with_name('m.txt'))\nprint(p.with_name('m.txt').read_text())", "ok"),
    ("import os\nos.mkdir('d')\nos.remove('d') if False else os.rmdir('d')\nprint(os.listdir('.'))", "[]"),
])
def test_python_runs_code_and_prints_the_last_expression(code, expected):
    assert run_python(code, QUICK) == expected


@pytest.mark.parametrize("code, expected", [
    ("1/0", "Error: line 1: ZeroDivisionError: division by zero"),
    ("print('before')\n[][3]", "Error: line 2: IndexError: list index out of range\nbefore"),
    ("def f(:\n  pass", "Error: line 1: SyntaxError: invalid syntax"),
    ("import sys\nsys.exit(3)", "Error: exit status 3"),
    ("import sys\nprint('done')\nsys.exit(0)", "done"),
])
def test_python_reports_failures_in_one_line(code, expected):
    assert run_python(code, QUICK) == expected


def test_python_tool_checks_arguments():
    assert PYTHON.run({"code": "print(6 * 7)"}) == "42"
    assert PYTHON.run({"code": 1}) == "Error: argument 'code' must be a string, got int"
    assert PYTHON.run({"code": "x" * 20_001}) == "Error: code longer than 20000 characters"


# ----------------------------------------------------------------------------------------- python: hostile

def test_infinite_loop_times_out():
    start = time.perf_counter()
    assert run_python("while True:\n    pass", SHORT) == "Error: timed out after 0.5 s"
    assert time.perf_counter() - start < 2


def test_endless_printing_times_out_with_bounded_output():
    start = time.perf_counter()
    result = run_python("while True:\n    print('x' * 1000)", SHORT)
    assert time.perf_counter() - start < 2
    assert result.startswith("Error: timed out after 0.5 s\nxxx")
    assert len(result) < SHORT.output_bytes + 200 and "[output truncated: " in result


def test_huge_output_is_truncated_with_a_note():
    result = run_python("print('x' * 10**7)", QUICK)
    assert result == "x" * QUICK.output_bytes + "\n[output truncated: 10000001 bytes in all]"


@pytest.mark.parametrize("code, line, refused", [
    ("import os\nos.fork()", 2, "os.fork"),
    ("import os\nwhile True:\n    os.fork()", 3, "os.fork"),
    ("import subprocess\nsubprocess.run(['ls'])", 2, "subprocess.Popen"),
    ("import os\nos.system('ls')", 2, "os.system"),
    ("import os\nos.execv('/bin/ls', ['ls'])", 2, "os.exec"),
    ("import os\nos.posix_spawn('/bin/ls', ['ls'], {})", 2, "os.posix_spawn"),
    ("import _posixsubprocess\n_posixsubprocess.fork_exec()", 2, "_posixsubprocess.fork_exec"),
    ("import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess", 3, "importing _posixsubprocess"),
    ("import ctypes", 1, "importing _ctypes"),
    ("import sqlite3", 1, "importing _sqlite3"),
    ("import _testcapi", 1, "importing _testcapi"),
    ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", 2, "os.kill"),
    ("import os, signal\nfd = os.open(f'/proc/{os.getppid()}', os.O_RDONLY)\n"
     "signal.pidfd_send_signal(fd, signal.SIGKILL)", 3, "_signal.pidfd_send_signal"),
    ("import os\nos.pidfd_open(os.getppid())", 2, "os.pidfd_open"),
    ("import os\nos.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))", 2, "os.sched_setscheduler"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", 2, "resource.setrlimit"),
    ("import sys\nsys.settrace(lambda *a: None)", 2, "sys.settrace"),
    ("import gc\ngc.get_objects()", 2, "gc.get_objects"),
    ("def f():\n    pass\nf.__code__ = (lambda: 1).__code__", 3, "changing a function's __code__"),
])
def test_no_processes_signals_or_guard_tampering(code, line, refused):
    assert run_python(code, QUICK) == f"Error: line {line}: PermissionError: {refused} is not allowed in the sandbox"


@pytest.mark.parametrize("code", ["x = ' ' * 10**10", "x = []\nwhile True:\n    x.append(' ' * 10**6)"])
def test_memory_bombs_hit_the_memory_limit(code):
    start = time.perf_counter()
    assert run_python(code).endswith("MemoryError")
    assert time.perf_counter() - start < 3


def test_huge_file_hits_the_file_size_limit():
    code = "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 65536)"
    assert run_python(code, QUICK) == "Error: line 3: OSError: [Errno 27] File too large"


def test_no_network():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        raw = run_python(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))", QUICK)
        helper = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))", QUICK)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert raw == "Error: line 2: PermissionError: socket.__new__ is not allowed in the sandbox"
    assert helper == "Error: line 2: PermissionError: socket.getaddrinfo is not allowed in the sandbox"


@pytest.mark.parametrize("template", [
    "open({target!r}, 'w').write('x')",
    "open({target!r}, 'a')",
    "import pathlib\npathlib.Path({target!r}).write_text('x')",
    "import os\nos.open({target!r}, os.O_WRONLY | os.O_CREAT)",
    "import os\nfd = os.open({outside!r}, os.O_RDONLY)\nos.open('evil', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
    "import os\nos.mkdir({target!r})",
    "import os\nos.symlink({outside!r}, 'link')\nopen('link/evil', 'w')",
    "import os\nos.link({existing!r}, 'hard')",
    "import os\nos.rename({existing!r}, 'moved')",
    "import os\nos.remove({existing!r})",
    "import os\nos.truncate({existing!r}, 0)",
    "import os\nos.chmod({existing!r}, 0o777)",
    "import os\nos.chdir({outside!r})\nopen('evil', 'w')",
    "open('../evil', 'w')",
    "import os\nos.mknod({target!r})",
    "import shutil\nshutil.copy('/etc/hostname', {target!r})",
])
def test_no_writes_outside_the_sandbox(tmp_path, template):
    outside = tmp_path / "outside"
    outside.mkdir()
    existing = outside / "keep.txt"
    existing.write_text("precious")
    existing.chmod(0o644)
    code = template.format(target=str(outside / "evil"), outside=str(outside), existing=str(existing))
    result = run_python(code, QUICK)
    assert result.startswith("Error: line "), result
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert existing.read_text() == "precious" and existing.stat().st_mode & 0o777 == 0o644


def test_sandbox_directory_is_removed_and_nothing_left_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_python("open('a.txt', 'w').write('x')\nimport os\nos.getcwd()", QUICK).startswith(f"'{tmp_path}/")
    assert run_python("open('b.txt', 'w').write('x')\nwhile True:\n    pass", SHORT).startswith("Error: timed out")
    assert os.listdir(tmp_path) == []


def test_child_gets_no_secrets_from_our_environment(monkeypatch):
    monkeypatch.setenv("POCKETCHAT_TEST_SECRET", "hunter2")
    assert run_python("import os\nos.environ.get('POCKETCHAT_TEST_SECRET')", QUICK) == ""


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
    ('<tool_call>{"name": "calculator", "arguments": "{oops"}</tool_call>', '"arguments" string is not valid JSON'),
])
def test_parse_tool_call_rejects_malformed_calls(text, reason):
    with pytest.raises(ValueError, match=reason):
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
