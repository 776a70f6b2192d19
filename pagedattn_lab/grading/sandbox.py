"""The guard rail of the grader's last resort (`--isolation none`): an audit hook.

Where the machine allows no namespaces (isolation.py), the runner installs this in the
submission's process before the first cell:

    from pagedattn_lab.grading.sandbox import install
    install("/tmp/pagedattn-grade-xyz/box", compiler=["/usr/bin/c++"])

It uses a Python audit hook (PEP 578): once added, a hook cannot be removed, and it sees
every `open()` for writing, `os.remove/rename/truncate/mkdir/chmod...`, `shutil.rmtree`,
`sqlite3.connect`, `os.system`, `subprocess.Popen`, `os.exec*`, `os.kill`... Writes are
allowed inside the folder only; the one program that may run is the compiler the grader
chose, with the flags the CPU executor uses (no `-wrapper`, `-B`, `-specs`, plugins or
response files, sources and outputs inside the folder or the package). A refused
operation raises PermissionError in the learner's cell.

This is a guard against accidents, not a security boundary: native code (ctypes, a
compiled kernel) is not audited, reads are not restricted, and a process that escapes
its process group outlives the time limit. The grader says so, loudly, when it has to
fall back to it; grade untrusted submissions with the namespaces of isolation.py.
"""
from __future__ import annotations

import os
import sys

from ..cpu.compiler import (BASE_FLAGS, CLANG_INSTRUMENT_FLAGS, INSTRUMENT_FLAGS,
                            INSTRUMENTED_OPT, OPTIONAL_FLAGS, PLAIN_OPT, QUIET, RELRO_FLAG,
                            WRAP_FLAG)
from ..cpu.kernel_checks import KERNEL_FLAGS

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {  # event -> indices of the path arguments to check
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.truncate": (0,),
    "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,), "os.symlink": (1,),
    "os.link": (1,), "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (1,), "os.chflags": (0,), "os.lchmod": (0,),
    "sqlite3.connect": (0,),
}
SHELL_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
                "pty.spawn", "os.fork", "os.forkpty"}
KILL_EVENTS = {"os.kill", "os.killpg", "signal.pthread_kill", "signal.pidfd_send_signal"}
# what the CPU executor passes to the compiler besides -D/-U/-std= options and paths: its
# own lists and flags (cpu/compiler.py), and the link's literal flags, which must be added
# here when compile_source adds one (its --wrap list, then its RELRO flag, were refused, and
# no kernel could be built at level none: test_grade_kernel_host)
COMPILER_FLAGS = {*BASE_FLAGS, QUIET, *KERNEL_FLAGS, *OPTIONAL_FLAGS, *INSTRUMENT_FLAGS,
                  *CLANG_INSTRUMENT_FLAGS, PLAIN_OPT, INSTRUMENTED_OPT, WRAP_FLAG, RELRO_FLAG,
                  "-Werror", "-c", "-o", "-I", "-shared",
                  "-ldl", "-Wl,-z,defs", "-undefined", "dynamic_lookup", "--version",
                  "-DPAL_FIBER_UCONTEXT", "-MD", "-MF", "-E", "-v", "-S"}

_installed: dict = {}


def _real(path) -> str | None:
    if isinstance(path, int) or path is None:
        return None  # a file descriptor: opened (and checked) earlier
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        return os.path.realpath(os.fspath(path))
    except TypeError:
        return None


def _inside(path: str, roots) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def compiler_call_allowed(argv, compiler, roots) -> bool:
    """Whether `argv` runs `compiler` with only the executor's flags, on files in `roots`."""
    argv = [os.fsdecode(a) for a in argv] if isinstance(argv, (list, tuple)) else []
    if not compiler or len(argv) < len(compiler) or \
            os.path.realpath(argv[0]) != os.path.realpath(compiler[0]) or \
            argv[1:len(compiler)] != list(compiler[1:]):
        return False
    for arg in argv[len(compiler):]:
        if arg in COMPILER_FLAGS or arg.startswith(("-D", "-U", "-std=")):
            continue
        if arg.startswith("-") or not _inside(os.path.realpath(arg), roots):
            return False
    return True


def install(workdir: str, allow_files=(), allow_dirs=(), compiler=None) -> None:
    """Refuse, for the rest of this process, writes outside `workdir` (and `allow_*`) and
    every program but `compiler` (a command list) with the executor's flags."""
    if _installed:
        return
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [os.path.realpath(workdir)] + [os.path.realpath(d) for d in allow_dirs]
    files = {os.path.realpath(f) for f in allow_files} | {"/dev/null"}
    compiler = [str(c) for c in compiler] if compiler else None
    _installed.update(roots=roots, files=files, compiler=compiler)

    def allowed(path) -> bool:
        real = _real(path)
        return real is None or real in files or _inside(real, roots)

    def refuse(what: str) -> None:
        raise PermissionError(f"refused by the grader: {what} (a graded notebook may only "
                              f"write inside its own folder {roots[0]})")

    def hook(event: str, args) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                      (isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and not allowed(path):
                refuse(f"opening {path!r} for writing")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and \
                        args[i] not in (":memory:", "") and not allowed(args[i]):
                    refuse(f"{event}({args[i]!r})")
        elif event == "subprocess.Popen":
            if not compiler_call_allowed(args[1], compiler, roots + [package]):
                refuse(f"running {args[1]!r} (only the course's compiler may run, with the "
                       f"CPU executor's flags)")
        elif event in SHELL_EVENTS:
            refuse(f"{event}")
        elif event in KILL_EVENTS:
            pid = args[0] if args else None
            if pid != os.getpid():
                refuse(f"{event}{tuple(args)!r}")

    sys.addaudithook(hook)
