"""A guard rail for graded notebooks: refuse writes, deletes and shell commands outside the
notebook's own working folder.

The grader installs this in each submission's Jupyter kernel before the first cell runs:

    from pagedattn_lab.grading.sandbox import install
    install("/tmp/grade-xyz/work", allow_files=["/tmp/grade-xyz/results.jsonl"])

It uses a Python audit hook (PEP 578). Once added, a hook cannot be removed, and it sees
every `open()` for writing, `os.remove/unlink/rmdir/rename/replace/truncate/mkdir/chmod`,
`shutil.rmtree`, `os.system`, `subprocess.Popen`, `os.exec*`, `os.kill`... A refused
operation raises PermissionError in the learner's cell, which the grader reports.

Limits (this is a guard against accidents and careless code, not a security sandbox):
- native code is not audited: a C extension, `ctypes` calls or a compiled kernel can still
  write anywhere the user can. Grade untrusted submissions in a container or a VM;
- child processes are allowed only for C/C++ compilers (the CPU executor needs them), and
  what those compilers write is not checked;
- reads are not restricted, and the notebook can still use CPU and memory: the grader's
  per-notebook time limit (and the OS) bound those.
"""
from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
ALLOWED_PROGRAMS = {"c++", "g++", "gcc", "cc", "clang", "clang++", "nvcc", "ld", "as",
                    "cicc", "ptxas", "collect2", "cc1plus", "cc1"}
PATH_EVENTS = {  # event -> indices of the path arguments to check
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.truncate": (0,),
    "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,), "os.symlink": (1,),
    "os.link": (1,), "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (1,), "os.chflags": (0,), "os.lchmod": (0,),
}
SHELL_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
                "pty.spawn"}
KILL_EVENTS = {"os.kill", "os.killpg", "signal.pthread_kill"}

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


def install(workdir: str, allow_files=(), allow_dirs=()) -> None:
    """Refuse, for the rest of this process, writes outside `workdir` (and `allow_*`)."""
    if _installed:
        return
    roots = [os.path.realpath(workdir)] + [os.path.realpath(d) for d in allow_dirs]
    files = {os.path.realpath(f) for f in allow_files} | {"/dev/null"}
    _installed.update(roots=roots, files=files)

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
                if i < len(args) and not allowed(args[i]):
                    refuse(f"{event}({args[i]!r})")
        elif event == "subprocess.Popen":
            executable, argv = args[0], args[1]
            program = executable or (argv[0] if isinstance(argv, (list, tuple)) and argv
                                     else argv)
            name = os.path.basename(os.fsdecode(program)) if program else ""
            if name not in ALLOWED_PROGRAMS:
                refuse(f"running {name or program!r}")
        elif event in SHELL_EVENTS:
            refuse(f"{event}")
        elif event in KILL_EVENTS:
            pid = args[0] if args else None
            if pid != os.getpid():
                refuse(f"{event}{tuple(args)!r}")

    sys.addaudithook(hook)
