"""The Python tool against hostile code: the limits, the audit hook's refusals, and the kernel's layers.

The escape tests run code that gets past the audit hook (a hook lives in the interpreter it guards) and
check the file system and other processes afterwards: what they show refused, the kernel refused. A test
needing a layer this machine's kernel lacks is skipped, naming it; sandbox_status() says so too."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pocketchat.engine.sandbox import CHILD_PROGRAM, PYTHON, SANDBOX_ID, SandboxLimits, run_python, sandbox_status

QUICK = SandboxLimits(timeout_s=2.0)  # only hostile code gets near it
SHORT = SandboxLimits(timeout_s=0.5)  # for code that runs forever


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
    ("import os, signal\nfd = os.open('.', os.O_RDONLY)\n"  # any fd: the call never reaches the kernel
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


# ------------------------------------------------------------------------------------ python: kernel layers

def needs(layer: str) -> None:
    if f"{layer} on" not in sandbox_status():
        pytest.skip(f"{layer} is not on here ({sandbox_status()}): this escape is open on this machine")


@pytest.fixture
def open_dir():
    """A directory anyone may reach and write (tmp_path's parents are closed to nobody), so that file
    permissions do not keep the child out: only the sandbox's layers do."""
    path = tempfile.mkdtemp(prefix="pocketchat-test-open-")
    os.chmod(path, 0o777)
    with open(os.path.join(path, "keep.txt"), "w") as f:
        f.write("precious")
    yield path
    shutil.rmtree(path)


# A fresh copy of a builtin module has the original functions, not those the child replaced (escape 3).
FRESH = """import importlib.util
def fresh(name):
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
def attempt(name, call):
    try:
        call()
        print(name, "done")
    except OSError as e:
        print(name, "refused", e.errno)
"""
# A path that names one place to the open and another to the audit hook, which asks second (escape 1).
FLIP = """class Flip:
    def __init__(self, real):
        self.real, self.calls = real, 0
    def __fspath__(self):
        self.calls += 1
        return self.real if self.calls == 1 else "inside.txt"
"""


def test_escape_1_a_path_that_changes_its_answer_writes_nothing_outside(open_dir):
    needs("landlock")
    target = os.path.join(open_dir, "evil")
    result = run_python(FLIP + f"import io\nio.FileIO(Flip({target!r}), 'w').write(b'x')", QUICK)
    assert result.startswith("Error: line 8: PermissionError: [Errno 13] Permission denied"), result
    assert os.listdir(open_dir) == ["keep.txt"]


def kernel_layers_only(code: str, workdir: str) -> str:
    """Run `code` confined by the child's kernel layers (uid, Landlock, seccomp) but without its audit hook:
    what an escape that gets past the hook meets. Returns its stdout."""
    os.chmod(workdir, 0o777)  # nobody's, when we are root
    program = (f"import sys\nsys.path.insert(0, {str(CHILD_PROGRAM.parent)!r})\nimport sandbox_child\n"
               f"sandbox_child.confine({workdir!r})\n" + code)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", program], cwd=workdir, capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_escape_2_the_hooks_tables_are_out_of_reach_and_the_kernel_refuses_anyway(open_dir, tmp_path):
    needs("landlock")
    keep, new = os.path.join(open_dir, "keep.txt"), os.path.join(open_dir, "new")
    tamper = f"""import sys, os
main = sys.modules["__main__"]
main.PATH_EVENTS.clear()
main.FORBIDDEN_EVENTS = frozenset()
attempt("mkdir", lambda: os.mkdir({new!r}))
attempt("rename", lambda: os.rename({keep!r}, "moved"))
attempt("open", lambda: os.open({new!r}, os.O_WRONLY | os.O_CREAT))
"""
    # the hook works from its own copies of its tables: it still refuses (errno None: not the kernel)
    assert run_python(FRESH + tamper, QUICK) == "mkdir refused None\nrename refused None\nopen refused None"
    # without the hook at all, the kernel refuses the same calls
    workdir = tmp_path / "work"
    workdir.mkdir()
    assert kernel_layers_only(FRESH + tamper.replace("main.", "# main."), str(workdir)) == \
        "mkdir refused 13\nrename refused 13\nopen refused 13"
    assert os.listdir(open_dir) == ["keep.txt"] and os.listdir(workdir) == []
    with open(keep) as f:
        assert f.read() == "precious"


def test_escape_3_a_fresh_posix_makes_no_fifo_and_no_device_node(open_dir):
    needs("seccomp")
    code = FRESH + f"""import stat
posix = fresh("posix")
attempt("fifo outside", lambda: posix.mkfifo({os.path.join(open_dir, "fifo")!r}))
attempt("device outside", lambda: posix.mknod({os.path.join(open_dir, "null")!r}, stat.S_IFCHR | 0o666,
                                                posix.makedev(1, 3)))
attempt("fifo inside", lambda: posix.mkfifo("fifo"))
attempt("device inside", lambda: posix.mknod("null", stat.S_IFCHR | 0o666, posix.makedev(1, 3)))
print(posix.listdir("."))
"""
    assert run_python(code, QUICK) == ("fifo outside refused 1\ndevice outside refused 1\n"
                                       "fifo inside refused 1\ndevice inside refused 1\n[]")
    assert os.listdir(open_dir) == ["keep.txt"]


def test_escape_4_no_signal_or_priority_reaches_another_process_of_the_same_user():
    needs("seccomp")
    # the child's own uid: nobody when we are root, else ours
    victim = subprocess.Popen(["sleep", "30"], user=SANDBOX_ID if os.geteuid() == 0 else None)
    try:
        priority = os.getpriority(os.PRIO_PROCESS, victim.pid)
        code = FRESH + f"""posix, _signal = fresh("posix"), fresh("_signal")
attempt("pidfd", lambda: _signal.pidfd_send_signal(posix.pidfd_open({victim.pid}), 9))
attempt("kill", lambda: posix.kill({victim.pid}, 9))
attempt("nice", lambda: posix.setpriority(posix.PRIO_PROCESS, {victim.pid}, 19))
"""
        # kill: the audit hook, whose os.kill event a fresh module raises too
        assert run_python(code, QUICK) == "pidfd refused 1\nkill refused None\nnice refused 1"
        time.sleep(0.05)  # a signal, had one been sent, would have landed by now
        assert victim.poll() is None
        assert os.getpriority(os.PRIO_PROCESS, victim.pid) == priority
    finally:
        victim.kill()
        victim.wait()


def test_escape_5_no_process_or_thread_starts_even_for_root():
    needs("seccomp")
    code = FRESH + """import threading
posix = fresh("posix")
attempt("fork", lambda: print("forked", posix.fork()))
try:
    threading.Thread(target=print, args=("thread ran",)).start()
except RuntimeError as e:
    print("thread refused:", e)
"""
    assert run_python(code, QUICK) == "fork refused None\nthread refused: can't start new thread"


def test_status_says_which_layers_are_on_and_each_claim_holds():
    status = sandbox_status()
    match = re.fullmatch(r"python sandbox: uid (\d+)( \(.+\))?, landlock (on \(ABI \d+\)|"
                         r"unavailable \(.+\)), seccomp (on|unavailable \(.+\)), audit hook on", status)
    assert match, status
    uid, landlock, seccomp = int(match[1]), match[3].startswith("on"), match[4] == "on"
    if os.geteuid() == 0 and match[2] is None:  # root, and no reason given why the uid stayed
        assert uid == SANDBOX_ID
    # each claim checked by what the child can do: its uid, reading a file outside its library (world-
    # readable, so only Landlock refuses it), and a syscall only seccomp refuses
    code = """import os
def errno(call):
    try:
        call()
    except OSError as e:
        return e.errno
os.getuid(), errno(lambda: open("/etc/passwd").close()), \
    errno(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))"""
    assert run_python(code, QUICK) == repr((uid, 13 if landlock else None, 1 if seccomp else None))
