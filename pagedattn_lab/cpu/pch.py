"""The shim parsed once: a precompiled header for the kernels' compiles (GCC).

Every kernel's translation unit starts with shim.h (with the headers it includes, ~20,000
lines once preprocessed); parsing it is ~40% of a kernel's compile at -O2, and the test suite
on a machine with an empty cache builds ~900 kernels. GCC reads a precompiled header in its
place, to the same assembly, when the compile's options are the ones it was built with; where
they are not (a kernel's -D naming a macro the shim reads, say) GCC says nothing and reads
the text header beside it, so a kernel means the same with or without one.

Used only where the compile cache is trusted (cpu/artifacts.py) and not under the grader
(includes.graded): a precompiled header is code, and one planted by another process would
change what every kernel means; the grader's compiles stay as they were. Clang does not look
for one behind an -include of a header, so there is none for it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .artifacts import trusted_cache
from .includes import graded
from .tool import run_tool

__all__ = ["shim_pch_flags"]

HEADER = "pal_shim.h"   # includes shim.h by its path; HEADER.gch beside it


def shim_pch_flags(cmd: tuple[str, ...], is_clang: bool, pch_flags: tuple[str, ...],
                   shim: Path, key: str, root: Path) -> list[str]:
    """The flags that make a kernel's compile read the shim precompiled (built into `root`
    once per `key`: compiler, shim files and `pch_flags`), or [] where there is none."""
    if is_clang or graded() or not trusted_cache():
        return []
    folder = root / f"pch-{key[:24]}"
    # looked for at every compile: the cache may be deleted at any time (cpu/README.md)
    if not all((folder / name).is_file() for name in (HEADER, HEADER + ".gch")) and \
            not _build(cmd, pch_flags, str(shim), folder):
        return []
    return ["-include", str(folder / HEADER)]


_FAILED: set = set()   # (cmd, flags) this compiler could not precompile: not tried again


def _build(cmd: tuple[str, ...], pch_flags: tuple[str, ...], shim: str, final: Path) -> bool:
    """Build HEADER and its precompiled form into `final`; False if the compiler cannot (the
    compiles then parse the shim as before)."""
    if (cmd, pch_flags) in _FAILED:
        return False
    tmp = Path(tempfile.mkdtemp(prefix=".pch-", dir=final.parent))
    (tmp / HEADER).write_text(f'#include "{shim}"\n')
    r = run_tool([*cmd, *pch_flags, "-x", "c++-header", str(tmp / HEADER), "-o",
                  str(tmp / (HEADER + ".gch"))])
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        _FAILED.add((cmd, pch_flags))
        return False
    try:
        os.rename(tmp, final)
    except OSError:   # another process finished first (theirs is used), or a part of one
        shutil.rmtree(tmp, ignore_errors=True)   # is left by a deletion (then none is)
    return all((final / name).is_file() for name in (HEADER, HEADER + ".gch"))
