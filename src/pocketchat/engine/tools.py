"""Tools the engine runs when a model writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

A tool takes the call's JSON arguments and returns one string that the engine feeds back as a `tool`
turn. A tiny model reads that string, so outputs are short, and a tool never raises and never hangs:
every failure is a one-line string starting with "Error: " the model can learn to react to.

Two tools ship: `calculator` (exact arithmetic from a whitelisted syntax tree, never `eval`) and
`python` (the model's code in a separate, resource-limited interpreter). New tools register by adding a
`Tool` to `TOOLS`. The sandbox needs a POSIX system (rlimits, process groups).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pocketchat.errors import UserError

MAX_ERROR_CHARS = 200  # an error is one short line; long exception messages are cut


def _error(message: str) -> str:
    message = " ".join(message.split())
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return f"Error: {message}"


# ----------------------------------------------------------------------------------------------------------
# The Tool interface

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}


def _argument_problem(arguments: object, schema: dict) -> str | None:
    """What is wrong with `arguments` for this JSON schema (the flat subset tools use), or None."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in arguments:
            return f"missing argument {name!r}"
    for name, value in arguments.items():
        if name not in properties:  # always refused: `fn` takes exactly the declared properties as keywords
            return f"unexpected argument {name!r} (expected: {', '.join(properties)})"
        wanted = properties[name].get("type")
        if wanted not in _JSON_TYPES:
            continue  # untyped, or a type this subset does not check
        # JSON true/false arrive as Python bools, which are ints too; only "boolean" accepts them.
        if not isinstance(value, _JSON_TYPES[wanted]) or (isinstance(value, bool) and wanted != "boolean"):
            return f"argument {name!r} must be a {wanted}, got {type(value).__name__}"
    return None


@dataclass(frozen=True)
class Tool:
    """A function a model may call: the OpenAI function-tool description plus the code behind it."""

    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object, as in OpenAI's `tools[].function.parameters`
    fn: Callable[..., str]  # called with the validated arguments as keywords

    def run(self, arguments: dict) -> str:
        """The tool's output, or "Error: ..." for bad arguments or any failure. Never raises."""
        problem = _argument_problem(arguments, self.parameters)
        if problem is not None:
            return _error(problem)
        try:
            return self.fn(**arguments)
        except Exception as e:  # a tool bug must not kill the generation that called it
            return _error(f"{type(e).__name__}: {e}")

    def spec(self) -> dict:
        """This tool in the OpenAI `tools` list shape."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


# ----------------------------------------------------------------------------------------------------------
# calculator: arithmetic over a whitelisted syntax tree

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
        return _error(f"expression longer than {CALC_MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return _error(f"not an arithmetic expression: {expression.strip()[:40]!r}")
    try:
        return format_number(_evaluate(tree))
    except ZeroDivisionError:
        return _error("division by zero")
    except OverflowError:
        return _error("result too large")
    except ValueError as e:  # ours, or math's "math domain error"
        return _error(str(e))


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly, e.g. 37*12 or (2.5+1)**2/3. "
                "Supports + - * / // % **, parentheses, pi, e, sqrt, abs, round, min, max.",
    parameters={"type": "object",
                "properties": {"expression": {"type": "string", "description": "the arithmetic expression"}},
                "required": ["expression"], "additionalProperties": False},
    fn=calculate,
)


# ----------------------------------------------------------------------------------------------------------
# python: the model's code in a separate interpreter with resource limits and an audit hook
#
# Layers, outermost first: a wall-clock timeout that kills the process group; rlimits on CPU time, address
# space, file size, processes and core dumps; a minimal environment (no secrets from ours); a fresh temp
# directory as cwd, removed afterwards; and inside the child, a `sys.addaudithook` guard that refuses
# sockets, subprocesses, forks, signals to other processes, and any write outside that directory.
# It guards against what a model's code does by mistake or naively; it is not a jail for code written to
# escape (reads are not restricted, and an audit hook lives in the interpreter it guards). Serve untrusted
# users from a container or VM.


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock; the CPU-time limit follows it
    memory_bytes: int = 256 << 20  # address space of the child interpreter
    file_bytes: int = 1 << 20  # the largest file the code may write
    output_bytes: int = 4096  # stdout kept for the model; the rest is counted and dropped
    code_chars: int = 20_000


# The child's whole program. It is source text, not a function of this module, so that the child starts in
# ~30 ms: it imports only modules built into the interpreter (`_ast`, not `ast`), and no site-packages (-S).
_CHILD_SOURCE = r'''
import _ast, _posixsubprocess, _signal, os, resource, sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
FORBIDDEN_EVENTS = frozenset({
    "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "os.kill", "os.killpg", "os.chdir", "os.chown", "os.link", "os.symlink",  # links could point outside
    "resource.setrlimit", "resource.prlimit",  # root could raise its limits again
    # the guard itself: tracers can rewrite its frames, gc can reach the hook function
    "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
FORBIDDEN_PREFIXES = ("socket.", "ctypes.")
# Modules that bypass the audited API: raw memory and fork, hook-free subinterpreters, C code that writes
# files (sqlite's ATTACH, dbm, readline history, shared memory); and builtin modules whose re-import would
# restore the functions replaced below.
FORBIDDEN_IMPORTS = frozenset({
    "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels", "_sqlite3", "_dbm", "_gdbm",
    "readline", "_posixshmem", "_multiprocessing", "posix", "_signal",
})
FORBIDDEN_IMPORT_PREFIXES = ("_test",)  # CPython's test helpers poke at interpreter internals
# Functions that change the system but raise no audit event in CPython 3.11: replaced before the code runs.
UNAUDITED_OS = ("mkfifo", "mknod", "chroot", "pidfd_open", "sched_setscheduler", "sched_setparam")
UNAUDITED = {os: UNAUDITED_OS, sys.modules["posix"]: UNAUDITED_OS, _signal: ("pidfd_send_signal",),
             _posixsubprocess: ("fork_exec",)}
# Audit events that change the file system: (positions of path arguments, positions of dir_fd arguments).
PATH_EVENTS = {
    "os.mkdir": ((0,), (2,)), "os.rmdir": ((0,), (1,)), "os.remove": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)),
    "os.chmod": ((0,), (2,)), "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()),
    "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
}
FUNCTION_INTERNALS = frozenset({"__code__", "__defaults__", "__kwdefaults__"})


def make_audit_hook(workdir):
    # Everything the hook uses is bound here, once: the code can rebind builtins and module attributes,
    # but not these closure variables (and gc, which could reach them, is refused).
    fspath, pathlike, deny = os.fspath, os.PathLike, PermissionError
    isinstance_, str_, bytes_, int_ = isinstance, str, bytes, int
    decode, startswith, split = bytes.decode, str.startswith, str.split
    forbidden_events, forbidden_prefixes = FORBIDDEN_EVENTS, FORBIDDEN_PREFIXES
    forbidden_imports, forbidden_import_prefixes = FORBIDDEN_IMPORTS, FORBIDDEN_IMPORT_PREFIXES
    path_events, write_flags, function_internals = PATH_EVENTS, WRITE_FLAGS, FUNCTION_INTERNALS
    prefix = workdir + "/"

    def inside(path, relative_ok):
        # Purely textual: the directory holds no links (link and symlink are refused) and cwd cannot move,
        # so a path without ".." that starts with the directory stays in it.
        if isinstance_(path, pathlike):
            path = fspath(path)
        if isinstance_(path, bytes_):
            path = decode(path, "utf-8", "surrogateescape")
        if not isinstance_(path, str_):  # a file descriptor: we cannot tell where it points
            return False
        if not startswith(path, "/"):
            if not relative_ok:
                return False
            path = prefix + path
        return ".." not in split(path, "/") and (path == workdir or startswith(path, prefix))

    def hook(event, args):
        if event in forbidden_events or startswith(event, forbidden_prefixes):
            raise deny(f"{event} is not allowed in the sandbox")
        if event == "open":
            path, mode, flags = args
            # builtin open() passes a mode and resolves relative paths against cwd; os.open passes None and
            # may resolve against a dir_fd the event does not show, so it must name an absolute path.
            if flags & write_flags and not isinstance_(path, int_) and not inside(path, mode is not None):
                raise deny(f"writing {path!r} is not allowed: only the current directory is writable")
        elif event in path_events:
            paths, dir_fds = path_events[event]
            for i in dir_fds:
                if args[i] != -1:
                    raise deny(f"{event} with dir_fd is not allowed in the sandbox")
            for i in paths:
                if not inside(args[i], True):
                    raise deny(f"{event} on {args[i]!r} is not allowed: only the current directory is writable")
        elif event == "import" and (args[0] in forbidden_imports or startswith(args[0], forbidden_import_prefixes)):
            raise deny(f"importing {args[0]} is not allowed in the sandbox")
        elif event in ("object.__setattr__", "object.__delattr__") and args[1] in function_internals:
            raise deny(f"changing a function's {args[1]} is not allowed in the sandbox")

    return hook


def refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"{name} is not allowed in the sandbox")
    return refused


def describe(exc):
    """One line for the model: `line N: Type: message`, N being the deepest line of its own code."""
    line = exc.lineno if isinstance(exc, SyntaxError) and exc.filename == "<code>" else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<code>":
            line = tb.tb_lineno
        tb = tb.tb_next
    try:
        message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    except Exception:  # a user-defined __str__ can fail too
        message = ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"line {line}: {text}" if line is not None else text


def main(code_path, workdir, memory, cpu, file_bytes, max_error_chars):
    """Limits, then the guard, then the code. REPL-like, a final expression's value is printed, so `2**10`
    answers 1024. On failure: a one-line summary as the last line of stderr, and exit status 1."""
    with open(code_path, encoding="utf-8") as f:
        code = f.read()
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, 0)):  # no new processes or threads (root is exempt)
        resource.setrlimit(limit, (value, value))
    for module, names in UNAUDITED.items():
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse(f"{module.__name__}.{name}"))
    write, exit_now = os.write, os._exit  # the code may rebind os.*; the summary must still get out
    sys.argv = ["<code>"]
    sys.addaudithook(make_audit_hook(workdir))

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = compile(code, "<code>", "exec", _ast.PyCF_ONLY_AST)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], _ast.Expr) else None
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is not None:
            value = eval(compile(_ast.Expression(last.value), "<code>", "eval"), namespace)
            if value is not None:
                print(repr(value))
    except SystemExit as e:
        if e.code not in (None, 0):
            write(2, f"\nexit status {e.code}\n".encode(errors="replace"))
            exit_now(1)
    except BaseException as e:
        namespace.clear()  # frees what a memory bomb allocated before the summary needs memory
        write(2, f"\n{describe(e)[:max_error_chars]}\n".encode(errors="replace"))
        exit_now(1)


main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
'''


@dataclass
class _Captured:
    stdout: bytes  # the first output_bytes of it
    stdout_total: int
    stderr_tail: bytes
    returncode: int | None  # None: still running at the deadline, then killed


_STDERR_TAIL_BYTES = 1024  # the child's one-line error summary is the last line of its stderr


def _capture(proc: subprocess.Popen, deadline: float, limits: SandboxLimits) -> _Captured:
    """Read both pipes until the child exits or the deadline, keeping bounded bytes whatever it prints."""
    head, tail, total = bytearray(), bytearray(), 0
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    total += len(chunk)
                    head += chunk[: max(0, limits.output_bytes - len(head))]
                else:
                    tail = (tail + chunk)[-_STDERR_TAIL_BYTES:]
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = None
    return _Captured(bytes(head), total, bytes(tail), returncode)


def _failure(returncode: int | None, stderr_tail: bytes, limits: SandboxLimits) -> str | None:
    """Why the run failed, or None if it succeeded."""
    if returncode == 0:
        return None
    if returncode is None:
        return f"timed out after {limits.timeout_s:g} s"
    if returncode == -signal.SIGXCPU:
        return "CPU time limit exceeded"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a signal number without a name
            return f"killed by signal {-returncode}"
    lines = stderr_tail.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if returncode == 1 and lines else f"exit status {returncode}"


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> str:
    """Run `code` in a fresh sandboxed interpreter; return its stdout, or "Error: ..." and then its stdout."""
    if len(code) > limits.code_chars:
        return _error(f"code longer than {limits.code_chars} characters")
    root = Path(tempfile.mkdtemp(prefix="pocketchat-python-")).resolve()
    try:
        workdir = root / "work"  # the code's cwd and the only place it may write
        workdir.mkdir()
        code_path = root / "code.py"
        code_path.write_text(code, encoding="utf-8", errors="replace")  # "replace": lone surrogates from JSON
        cpu_s = math.ceil(limits.timeout_s) + 1
        command = [sys.executable, "-I", "-S", "-B", "-u", "-X", "utf8", "-c", _CHILD_SOURCE, str(code_path),
                   str(workdir), str(limits.memory_bytes), str(cpu_s), str(limits.file_bytes), str(MAX_ERROR_CHARS)]
        deadline = time.monotonic() + limits.timeout_s
        proc = subprocess.Popen(command, cwd=workdir, env={"HOME": str(workdir), "TMPDIR": str(workdir)},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)  # its own process group, killed as a whole
        with proc:
            try:
                captured = _capture(proc, deadline, limits)
            finally:
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    output = captured.stdout.decode("utf-8", "replace").rstrip("\n")
    if captured.stdout_total > limits.output_bytes:
        output += f"\n[output truncated: {captured.stdout_total} bytes in all]"
    reason = _failure(captured.returncode, captured.stderr_tail, limits)
    if reason is None:
        return output
    return _error(reason) + (f"\n{output}" if output else "")


PYTHON = Tool(
    name="python",
    description="Run Python code (standard library only) and return what it prints; the value of a final "
                "expression is printed too. 5 s time limit, no network, no files outside the current directory.",
    parameters={"type": "object",
                "properties": {"code": {"type": "string", "description": "the Python program"}},
                "required": ["code"], "additionalProperties": False},
    fn=run_python,
)


# ----------------------------------------------------------------------------------------------------------
# Registry and tool calls

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (CALCULATOR, PYTHON)}


def get_tool(name: str, tools: Mapping[str, Tool] = TOOLS) -> Tool:
    if name not in tools:
        raise UserError(f"unknown tool {name!r} (available: {', '.join(tools)})")
    return tools[name]


def openai_tool_specs(tools: Mapping[str, Tool] | Iterable[Tool] = TOOLS) -> list[dict]:
    """The OpenAI `tools` request field describing these tools."""
    return [tool.spec() for tool in (tools.values() if isinstance(tools, Mapping) else tools)]


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def parse_tool_call(text: str) -> tuple[str, dict]:
    """(name, arguments) from `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. The closing tag may
    be missing (generation stops on it). `arguments` may also be a JSON string, as in OpenAI's API."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        raise ValueError(f"no {TOOL_CALL_OPEN} tag")
    body = text[start + len(TOOL_CALL_OPEN):]
    end = body.find(TOOL_CALL_CLOSE)
    body = body[:end] if end >= 0 else body
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"tool call is not valid JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(call, dict):
        raise ValueError("tool call must be a JSON object")
    name, arguments = call.get("name"), call.get("arguments", {})
    if not isinstance(name, str):
        raise ValueError('tool call needs a string "name"')
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ValueError(f'"arguments" string is not valid JSON: {e.msg}') from None
    if not isinstance(arguments, dict):
        raise ValueError('tool call "arguments" must be a JSON object')
    return name, arguments


def run_tool_call(text: str, tools: Mapping[str, Tool] = TOOLS) -> str:
    """The output for the model of the tool call in `text`; every failure is an "Error: ..." string."""
    try:
        name, arguments = parse_tool_call(text)
        tool = get_tool(name, tools)
    except (ValueError, UserError) as e:
        return _error(str(e))
    return tool.run(arguments)
