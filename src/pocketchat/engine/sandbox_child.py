"""The Python tool's child program, run as a script by `pocketchat.engine.sandbox` (which imports it only for
its constants): it confines itself, then runs the model's code.

It imports only the standard library (the interpreter runs with -I -S, no site-packages), so it starts in
~15 ms. Layers, in the order they go on; each one is kept by the kernel, and none can be taken off by the code:

1. rlimits: CPU time, address space, file size, no core dumps, no new processes or threads (RLIMIT_NPROC,
   which the kernel does not apply to uid 0: hence layer 2).
2. uid: started as root, the child becomes 65534 (nobody) with no groups and no capabilities: no device
   nodes, no signals or priorities for other users' processes, and RLIMIT_NPROC applies.
3. Landlock (Linux >= 5.13): reads only beneath the interpreter's library and the system's shared libraries,
   writes only beneath the work directory, no device nodes, fifos, sockets or symlinks anywhere; no TCP
   (ABI 4); no signals to processes outside the sandbox (ABI 6).
4. seccomp (the system's libseccomp): the syscalls that reach other processes (signals, pidfds, ptrace,
   priorities, scheduling, rlimits of others), start processes or threads, open sockets, make device
   nodes, enter namespaces or use io_uring fail with EPERM.
5. The audit hook: refuses with a clear message what a model's code does by mistake. It lives in the
   interpreter it guards, so code written to escape gets around it; layers 2-4 are the wall.
A layer the kernel refuses is skipped, and said so: with `report` set, the child prints what it applied
(the tool's status line) and runs nothing.
"""

import _ast, _posixsubprocess, _signal, os, resource, sys

SANDBOX_ID = 65534  # uid and gid of "nobody"

# Landlock (include/uapi/linux/landlock.h). The syscall numbers are the same on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
NET_ALL = 0b11  # bind and connect TCP (ABI 4)
SCOPE_ALL = 0b11  # abstract unix sockets and signals outside the sandbox (ABI 6)
PR_SET_NO_NEW_PRIVS = 38
# Read-only places the interpreter may need besides sys.path: shared libraries that extension modules
# load, time zones, and harmless devices.
SYSTEM_READ_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/share/zoneinfo")
SYSTEM_READ_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/zero", "/dev/urandom")

# seccomp, through libseccomp (its seccomp.h): allow by default, these syscalls fail with EPERM.
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
SCMP_CMP_NE = 1
NR_SCMP_ERROR = -1  # seccomp_syscall_resolve_name: no such syscall on this architecture
DENIED_SYSCALLS = (
    # other processes: signals, pidfds, tracing, memory, priorities, scheduling, process groups
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "setpriority", "sched_setscheduler", "sched_setparam", "sched_setattr", "sched_setaffinity", "ioprio_set",
    "migrate_pages", "move_pages", "setpgid", "setsid",  # leaving the process group would escape the kill
    # new processes, threads and programs
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    # the network, device nodes, namespaces and mounts, and kernel interfaces that bypass the rest
    "socket", "mknod", "mknodat", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "open_by_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "userfaultfd",
    "perf_event_open", "keyctl", "add_key", "request_key", "personality",
)


def library_dirs():
    """The directories the interpreter imports from (sys.path as -I -S leaves it)."""
    return [path for path in sys.path if os.path.isdir(path)]


def drop_root(read_fds):
    """As root, become nobody. The interpreter's library may lie where nobody cannot reach (a pyenv in
    /root), so imports go through the directory descriptors opened as root: /proc/self/fd/N reaches a
    directory without searching its parents."""
    def through_fd(path):
        for directory, fd in read_fds.items():
            if path == directory or path.startswith(directory + "/"):
                return f"/proc/self/fd/{fd}{path[len(directory):]}"
        return path

    sys.path[:] = [through_fd(path) for path in sys.path]
    for module in list(sys.modules.values()):  # packages imported at startup (encodings) import more later
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [through_fd(path) for path in module.__path__]
    sys.path_importer_cache.clear()
    try:
        os.setgroups([])
        os.setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
        os.setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
    except OSError as e:  # a user namespace that does not map 65534: stay root, and say so
        return f"uid 0 (setuid to {SANDBOX_ID}: {e.strerror})"
    return f"uid {SANDBOX_ID}"


def landlock_rules(read_fds, workdir):
    """(fd, access) for every place the code may reach, opened before the uid changes: nobody may not be
    able to search the directories above the library or the work directory."""
    read = FS_READ_FILE | FS_READ_DIR
    # The work directory: everything but executing, device nodes, fifos, sockets and symlinks.
    work = ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_FIFO | FS_MAKE_SOCK | FS_MAKE_SYM | FS_IOCTL_DEV)
    rules = [(fd, read) for fd in read_fds.values()] + [(os.open(workdir, os.O_PATH | os.O_CLOEXEC), work)]
    for path, access in ([(p, read) for p in SYSTEM_READ_DIRS] + [(p, FS_READ_FILE) for p in SYSTEM_READ_FILES]
                         + [("/dev/null", FS_WRITE_FILE)]):
        try:
            rules.append((os.open(path, os.O_PATH | os.O_CLOEXEC), access))
        except FileNotFoundError:
            continue  # not on this system
    return rules


def landlock(ctypes, libc, rules):
    """Restrict the file system to `rules` (and TCP, and signals, where the kernel's ABI has them).
    Returns the status, and restricts nothing if the kernel has no Landlock."""
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        return f"landlock unavailable (kernel: {os.strerror(ctypes.get_errno())})"
    handled = (1 << 13) - 1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) \
        | (FS_IOCTL_DEV if abi >= 5 else 0)

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    # Older kernels take a shorter struct: the fields their ABI knows.
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = RulesetAttr(handled, NET_ALL if abi >= 4 else 0, SCOPE_ALL if abi >= 6 else 0)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return f"landlock unavailable (create_ruleset: {os.strerror(ctypes.get_errno())})"
    try:
        for fd, access in rules:
            rule = PathBeneath(access & handled, fd)
            if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                return f"landlock unavailable (add_rule: {os.strerror(ctypes.get_errno())})"
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
            return f"landlock unavailable (restrict_self: {os.strerror(ctypes.get_errno())})"
    finally:
        os.close(ruleset)
    return f"landlock on (ABI {abi})"


def seccomp(ctypes):
    """Make the syscalls in DENIED_SYSCALLS fail with EPERM. Returns the status."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "seccomp unavailable (no libseccomp.so.2)"

    class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                    ("datum_b", ctypes.c_uint64)]

    lib.seccomp_init.restype, lib.seccomp_init.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    deny = SCMP_ACT_ERRNO | 1  # EPERM
    context = lib.seccomp_init(SCMP_ACT_ALLOW)  # also kills any syscall made through a foreign ABI
    if not context:
        return "seccomp unavailable (seccomp_init failed)"
    try:
        rules = [(name, 0, None) for name in DENIED_SYSCALLS]
        # prlimit64 on itself (pid 0) is how getrlimit works; on another process it is refused.
        rules.append(("prlimit64", 1, (ArgCmp * 1)(ArgCmp(0, SCMP_CMP_NE, 0, 0))))
        for name, count, compare in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number != NR_SCMP_ERROR:  # vfork, for one, does not exist on arm64
                error = lib.seccomp_rule_add_array(context, deny, number, count, compare)
                if error:
                    return f"seccomp unavailable (rule for {name}: {os.strerror(-error)})"
        error = lib.seccomp_load(context)
        if error:
            return f"seccomp unavailable (kernel: {os.strerror(-error)})"
    finally:
        lib.seccomp_release(context)
    return "seccomp on"


def confine(workdir):
    """Layers 2 to 4; returns what each one did, for the status line."""
    if sys.platform != "linux":  # the syscall numbers and /proc/self/fd below are Linux's
        return [f"uid {os.geteuid()} (not Linux)", "landlock unavailable (not Linux)",
                "seccomp unavailable (not Linux)"]
    import ctypes  # before Landlock and seccomp: it loads libraries and `syscall` needs it

    libc = ctypes.CDLL(None, use_errno=True)
    read_fds = {path: os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in library_dirs()}
    rules = landlock_rules(read_fds, workdir)
    if os.geteuid() == 0:
        uid = drop_root(read_fds)
    else:
        uid = f"uid {os.geteuid()} (not started as root)"
    layers = [uid, landlock(ctypes, libc, rules), seccomp(ctypes)]
    for fd, _ in rules[len(read_fds):]:  # the library's stay open: imports go through them
        os.close(fd)
    # ctypes's functions are refused by the audit hook; and with the kernel layers on, they give nothing more
    for name in ("ctypes", "_ctypes", "ctypes._endian"):
        sys.modules.pop(name, None)
    return layers


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
    # Copies, not the module's tables: the code can reach this module as __main__ and edit those.
    forbidden_events, forbidden_prefixes = frozenset(FORBIDDEN_EVENTS), FORBIDDEN_PREFIXES
    forbidden_imports, forbidden_import_prefixes = frozenset(FORBIDDEN_IMPORTS), FORBIDDEN_IMPORT_PREFIXES
    path_events, write_flags, function_internals = dict(PATH_EVENTS), WRITE_FLAGS, frozenset(FUNCTION_INTERNALS)
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


def main(code_path, workdir, memory, cpu, file_bytes, max_error_chars, report):
    """Limits, then the guard, then the code. REPL-like, a final expression's value is printed, so `2**10`
    answers 1024. On failure: a one-line summary as the last line of stderr, and exit status 1."""
    with open(code_path, encoding="utf-8") as f:
        code = f.read()
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, 0)):  # no new processes or threads (root is exempt)
        resource.setrlimit(limit, (value, value))
    layers = confine(workdir)
    for module, names in UNAUDITED.items():
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse(f"{module.__name__}.{name}"))
    write, exit_now = os.write, os._exit  # the code may rebind os.*; the summary must still get out
    sys.argv = ["<code>"]
    sys.addaudithook(make_audit_hook(workdir))
    if report:
        print(", ".join([*layers, "audit hook on"]))
        return

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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
