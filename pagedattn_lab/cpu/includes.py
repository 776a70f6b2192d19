"""Under the grader, a kernel may read no file but its own source and the headers.

The grader shows a kernel's compile error to the learner (the grades table): a kernel that
included a file of the machine it was graded on (`#include "/etc/passwd"`, a path out of the
build folder, an include computed by a macro) got that file's lines back in the compiler's
messages. Under the grader ($PAGEDATTN_LAB_GRADING_CXX set) the compiler lists the files it
read (-MD, written even when the compile fails); a kernel that read one outside the
compiler's own include folders, the executor's headers and its build folder is refused, and
none of the compiler's messages is shown.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import tempfile
from pathlib import Path

from .errors import KernelCompileError
from .tool import run_tool

__all__ = ["graded", "dependency_flags", "refuse_outside_includes"]

DEPS_NAME = "kernel.d"


def graded() -> bool:
    return bool(os.environ.get("PAGEDATTN_LAB_GRADING_CXX"))


def dependency_flags(build: Path) -> list[str]:
    """The compile's extra flags: the list of files read, under the grader only (the path is
    the build folder's, so it stays out of the cache key)."""
    return ["-MD", "-MF", str(build / DEPS_NAME)] if graded() else []


@functools.lru_cache(maxsize=None)
def system_include_dirs(cmd: tuple[str, ...]) -> tuple[str, ...]:
    """The folders the compiler searches for #include <...> (its own list, from -v)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cpp"
        probe.write_text("\n")
        r = run_tool([*cmd, "-E", "-v", str(probe)])
    dirs, inside = [], False
    for line in r.stderr.splitlines():
        if line.startswith("#include"):
            inside = True
        elif line.startswith("End of search list"):
            inside = False
        elif inside and line.startswith(" "):
            dirs.append(os.path.realpath(line.strip().removesuffix(" (framework directory)")))
    return tuple(dirs)


def _dependencies(text: str) -> list[str]:
    """The prerequisites of the make rule the compiler wrote (escaped spaces kept)."""
    text = text.replace("\\\n", " ")
    _, _, rest = text.partition(": ")
    return [re.sub(r"\\(.)", r"\1", p).replace("$$", "$")
            for p in re.findall(r"(?:\\.|[^\s\\])+", rest)]


def _inside(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def refuse_outside_includes(build: Path, cmd: tuple[str, ...], executor_dir: Path, *,
                            kernel: str, filename: str, compiled: bool) -> None:
    """Under the grader: raise KernelCompileError if the compile in `build` read a file
    outside `executor_dir`, `build` and the compiler's include folders, or did not say
    (`compiled`: whether that compile succeeded)."""
    if not graded():
        return
    roots = [os.path.realpath(executor_dir), os.path.realpath(build),
             *system_include_dirs(tuple(cmd))]
    try:
        read = _dependencies((build / DEPS_NAME).read_text(errors="replace"))
    except OSError:
        read = None
    outside = None if read is None else \
        [p for p in map(os.path.realpath, read) if not _inside(p, roots)]
    if read is not None and not outside:
        return
    # No list: GCC and Clang write none when an #include names no file; a compiler that
    # ignores -MD writes none even for a kernel that builds (the grader's, not the learner's).
    why = ("the compile failed before the list was written, as it does when an #include names "
           "no file" if not compiled else f"the grader's compiler ({shlex.join(cmd)}) wrote "
           f"none although the compile succeeded: it does not support -MD")
    what = (f"the include check could not run: the compiler wrote no list of the files it "
            f"read ({why})" if read is None else
            f"it includes {', '.join(sorted(set(outside))[:3])}, which is neither a CUDA header "
            f"nor a system header")
    raise KernelCompileError.refused(
        kernel, filename, f"was refused by the grader: {what}; the compiler's messages are "
        f"not shown, as they could show the lines of a file it read",
        "grade with GCC or Clang ($CXX where the grader starts): they list the files read"
        if read is None and compiled else
        "a kernel includes only the CUDA headers (<cuda_fp16.h>, <mma.h>, ...); paste what it "
        "needs from another file into the kernel source")
