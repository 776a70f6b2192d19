"""The macros a kernel finds defined on the CPU executor: the compiler's own, the shim's,
those of the C headers the shim includes (EOF, M_PI, RAND_MAX...), which NVRTC does not
define, and those of the executor's stand-ins for the CUDA headers a kernel may include. The
grader's lint (grading/source_macros.py) refuses a conditional on one: a kernel's `#ifndef
EOF` / `#define EOF 0` would keep stdio.h's -1 on the CPU only."""
from __future__ import annotations

import functools
import os
import re
import subprocess

from .compiler import (BASE_FLAGS, CLANG_INSTRUMENT_FLAGS, HERE, INCLUDE_DIR, INSTRUMENT_FLAGS,
                       INSTRUMENTED_OPT, PLAIN_OPT)
from .errors import CompilerNotFoundError
from .kernel_checks import kernel_flags
from .tool import run_tool
from .toolchain import compiler

__all__ = ["prelude_macros"]


@functools.lru_cache(maxsize=None)
def prelude_macros() -> frozenset[str] | None:
    """The names of the macros defined before a kernel's source in either of the executor's
    builds (plain and instrumented), as its compiler lists them (-dM); None where there is no
    compiler, or it could not be run or failed."""
    names: set[str] = set()
    # the shim, then every CUDA header the executor has in its stead (<cuda_fp16.h>, <mma.h>
    # ...), which a kernel may include; not one that only refuses (cooperative_groups.h)
    headers = [HERE / "shim.h", *(h for h in sorted(INCLUDE_DIR.glob("*.h"))
                                  if "#error" not in h.read_text(errors="replace"))]
    try:
        cmd, _ident, is_clang = compiler()
        # (the builds' flags as compiler.compile_source puts them: -fno-exceptions, -fno-math-
        # errno... each defines or drops macros)
        instrument = (*INSTRUMENT_FLAGS, *(CLANG_INSTRUMENT_FLAGS if is_clang else ()))
        for opt, extra in ((PLAIN_OPT, ()), (INSTRUMENTED_OPT, instrument)):
            r = run_tool([*cmd, "-std=c++17", opt, *BASE_FLAGS, *kernel_flags(is_clang), *extra,
                          "-I", str(INCLUDE_DIR),
                          *[f for h in headers for f in ("-include", str(h))],
                          "-x", "c++", "-dM", "-E", os.devnull])
            if r.returncode != 0:
                return None
            names.update(re.findall(r"^#define (\w+)", r.stdout, re.M))
    except (CompilerNotFoundError, OSError, subprocess.SubprocessError):
        return None
    return frozenset(names)
