"""The `python` tool: the model's code in a separate, confined interpreter.

The child (`sandbox_child.py`, run as a script) puts on its own layers before the code runs: rlimits, uid
nobody when started as root, Landlock, seccomp, then an audit hook; its docstring says what each one stops.
Here, around it: a wall-clock timeout that kills its process group, a minimal environment (no secrets from
ours), and a fresh temp directory as cwd, removed afterwards. Where the kernel refuses a layer the tool
still runs, weaker; `sandbox_status()` says which layers are on. Needs a POSIX system; the kernel layers
need Linux.
"""

from __future__ import annotations

import functools
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pocketchat.engine import sandbox_child
from pocketchat.engine.sandbox_child import SANDBOX_ID
from pocketchat.engine.tools import MAX_ERROR_CHARS, Tool, one_string_argument, tool_error

CHILD_PROGRAM = Path(sandbox_child.__file__)  # run as a script in the child, not imported there


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock; the CPU-time limit follows it
    memory_bytes: int = 256 << 20  # address space of the child interpreter
    file_bytes: int = 1 << 20  # the largest file the code may write
    output_bytes: int = 4096  # stdout kept for the model; the rest is counted and dropped
    code_chars: int = 20_000


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


def _run_child(code: str, limits: SandboxLimits, report: bool = False) -> _Captured:
    """Run `code` in a fresh confined interpreter (or, with `report`, only confine one and have it print
    which layers it got)."""
    root = Path(tempfile.mkdtemp(prefix="pocketchat-python-")).resolve()
    try:
        workdir = root / "work"  # the code's cwd and the only place it may write
        workdir.mkdir()
        code_path = root / "code.py"
        code_path.write_text(code, encoding="utf-8", errors="replace")  # "replace": lone surrogates from JSON
        if os.geteuid() == 0:  # the child turns into nobody, who must reach and own its directory
            root.chmod(0o711)
            os.chown(workdir, SANDBOX_ID, SANDBOX_ID)
        cpu_s = math.ceil(limits.timeout_s) + 1
        command = [sys.executable, "-I", "-S", "-B", "-u", "-X", "utf8", str(CHILD_PROGRAM), str(code_path),
                   str(workdir), str(limits.memory_bytes), str(cpu_s), str(limits.file_bytes), str(MAX_ERROR_CHARS),
                   str(int(report))]
        deadline = time.monotonic() + limits.timeout_s
        proc = subprocess.Popen(command, cwd=workdir, env={"HOME": str(workdir), "TMPDIR": str(workdir)},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)  # its own process group, killed as a whole
        with proc:
            try:
                return _capture(proc, deadline, limits)
            finally:
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> str:
    """Run `code` in a fresh sandboxed interpreter; return its stdout, or "Error: ..." and then its stdout."""
    if len(code) > limits.code_chars:
        return tool_error(f"code longer than {limits.code_chars} characters")
    captured = _run_child(code, limits)
    output = captured.stdout.decode("utf-8", "replace").rstrip("\n")
    if captured.stdout_total > limits.output_bytes:
        output += f"\n[output truncated: {captured.stdout_total} bytes in all]"
    reason = _failure(captured.returncode, captured.stderr_tail, limits)
    if reason is None:
        return output
    return tool_error(reason) + (f"\n{output}" if output else "")


@functools.cache
def sandbox_status() -> str:
    """One line saying which layers confine the Python tool on this machine, e.g. `python sandbox: uid 65534,
    landlock on (ABI 7), seccomp on, audit hook on`. Measured once per process, by a child that confines
    itself and reports what the kernel let it do."""
    limits = SandboxLimits()
    captured = _run_child("", limits, report=True)
    reason = _failure(captured.returncode, captured.stderr_tail, limits)
    if reason is not None:
        return f"python sandbox: does not start ({reason})"
    return "python sandbox: " + captured.stdout.decode("utf-8", "replace").strip()


PYTHON = Tool(
    name="python",
    description="Run Python code (standard library only) and return what it prints; the value of a final "
                "expression is printed too. 5 s time limit, no network, no files outside the current directory.",
    parameters=one_string_argument("code", "the Python program"),
    fn=run_python,
)
