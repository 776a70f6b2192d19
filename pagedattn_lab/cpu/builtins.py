"""Refuse, in an instrumented build, a kernel that reads memory through a compiler builtin.

The access counts and the race check see the loads and stores the compiler instruments
(-fsanitize=thread): plain ones, and memcpy & co. through the shim. A CPU vector builtin
(__builtin_ia32_*: _mm_loadh_pi, _mm256_i32gather_ps, _mm256_maskload_ps of <immintrin.h>,
no target attribute needed for the SSE ones) and the compiler's own atomics (__atomic_*,
__sync_*, and <atomic>, which is made of them; the shim's atomicAdd & co. count themselves)
are calls the instrumentation passes by: one thread read a whole row with them and counted
no read. CUDA device code has neither, so the kernel's share of the preprocessed source
(what follows its `#line 1`: its own lines and the headers it includes; token pasting and
macros undone) may name none of them.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .errors import KernelCompileError

__all__ = ["uncounted_builtins", "refuse_uncounted_builtins"]

_UNCOUNTED = re.compile(
    r"\b(__builtin_(?:ia32|aarch64|neon|arm|sve|mve|riscv|s390|altivec|vsx|ppc|mips|msa|"
    r"loongarch|lsx|lasx)_\w+|__atomic_\w+|__sync_\w+|__c11_atomic_\w+)")
# atomics that touch no memory
_HARMLESS = re.compile(r"__atomic_(thread_fence|signal_fence|always_lock_free|is_lock_free)$")
_MARKER = re.compile(r'^#\s*\d+\s+"((?:\\.|[^"\\])*)"', re.M)


def uncounted_builtins(preprocessed: str, quoted_filename: str, executor_dir: str
                       ) -> list[tuple[str, str]]:
    """(builtin, file it is named in) for each builtin of `_UNCOUNTED` named after the kernel
    source's first line marker in `preprocessed` (the compiler's -E output), but in the
    executor's own headers (<cuda_bf16.h>'s atomics count themselves)."""
    markers = list(_MARKER.finditer(preprocessed))
    start = next((m.start() for m in markers if m.group(1) == quoted_filename), None)
    if start is None:
        return []
    found: dict[str, str] = {}
    at = [m for m in markers if m.start() >= start]
    for here, after in zip(at, at[1:] + [None]):
        if here.group(1).startswith(executor_dir.rstrip(os.sep) + os.sep):
            continue
        chunk = preprocessed[here.end():after.start() if after else len(preprocessed)]
        for name in _UNCOUNTED.findall(chunk):
            if not _HARMLESS.match(name):
                found.setdefault(name, here.group(1).rsplit("/", 1)[-1])
    return list(found.items())


def refuse_uncounted_builtins(cmd: tuple[str, ...], flags: list[str], tu_path: Path,
                              quoted_filename: str, executor_dir: Path, *, kernel: str,
                              filename: str) -> None:
    """Preprocess the translation unit at `tu_path` (it compiled) and raise
    KernelCompileError when `uncounted_builtins` finds any."""
    r = subprocess.run([*cmd, *flags, "-E", str(tu_path)], capture_output=True, text=True,
                       errors="replace")
    found = uncounted_builtins(r.stdout, quoted_filename, str(executor_dir))
    if found:
        names = ", ".join(f"{name} (in {where})" for name, where in found[:3])
        raise KernelCompileError.refused(
            kernel, filename, f"uses {names}: a CPU vector builtin or a compiler atomic reads "
            f"memory where the CPU executor's access counts and race check do not see it, and "
            f"CUDA device code has neither",
            "read the arrays with plain loads (float4 v = *(const float4 *)p; x[i]); for an "
            "atomic, call CUDA's atomicAdd, atomicCAS, ... (no <immintrin.h>, no <atomic>)")
