"""Refuse, in an instrumented build, a kernel that reads memory through a compiler builtin.

The access counts and the race check see the loads and stores the compiler instruments
(-fsanitize=thread): plain ones, and memcpy & co. through the shim. A CPU vector builtin
(__builtin_ia32_*: _mm_loadh_pi, _mm256_i32gather_ps, _mm256_maskload_ps of <immintrin.h>,
no target attribute needed for the SSE ones) and the compiler's own atomics (__atomic_*,
__sync_*, and <atomic>, which is made of them; the shim's atomicAdd & co. count themselves)
are calls the instrumentation passes by: one thread read a whole row with them and counted
no read. So are the instrumentation's atomic hooks called by name (__tsan_atomic32_store
stores anywhere, uncounted: a kernel set its own store count back with it; the shim's
memcpy is __tsan_memcpy, whose pieces are counted and checked). CUDA device code has
none of them, so the kernel's share of the preprocessed source
(what follows its `#line 1`: its own lines and the headers it includes; token pasting and
macros undone) may name none of them.

Every line of that share is scanned, whatever file its line marker names: the executor's
headers that a kernel includes use none of them (<cuda_bf16.h>'s atomics call a helper the
shim defines before the kernel), and a file name is the kernel's to write (`#line 1
".../cpu/shim_bf16.h"` had hidden an atomic row read when the executor's headers were
skipped). An output without the kernel's own marker is refused, not passed.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .errors import KernelCompileError

__all__ = ["uncounted_builtins", "refuse_uncounted_builtins"]

_UNCOUNTED = re.compile(
    r"\b(__builtin_(?:ia32|aarch64|neon|arm|sve|mve|riscv|s390|altivec|vsx|ppc|mips|msa|"
    r"loongarch|lsx|lasx)_\w+|__atomic_\w+|__sync_\w+|__c11_atomic_\w+|__tsan_atomic\w+)")
# atomics that touch no memory
_HARMLESS = re.compile(r"__atomic_(thread_fence|signal_fence|always_lock_free|is_lock_free)$")
_MARKER = re.compile(r'^#\s*\d+\s+"((?:\\.|[^"\\])*)"', re.M)


def uncounted_builtins(preprocessed: str, quoted_filename: str
                       ) -> list[tuple[str, str]] | None:
    """(builtin, file its line marker names) for each builtin of `_UNCOUNTED` named after the
    kernel source's first line marker in `preprocessed` (the compiler's -E output); None when
    no marker names the kernel source (nothing tells its lines from the shim's)."""
    markers = list(_MARKER.finditer(preprocessed))
    start = next((m.start() for m in markers if m.group(1) == quoted_filename), None)
    if start is None:
        return None
    found: dict[str, str] = {}
    at = [m for m in markers if m.start() >= start]
    for here, after in zip(at, at[1:] + [None]):
        chunk = preprocessed[here.end():after.start() if after else len(preprocessed)]
        for name in _UNCOUNTED.findall(chunk):
            if not _HARMLESS.match(name):
                found.setdefault(name, here.group(1).rsplit("/", 1)[-1])
    return list(found.items())


def refuse_uncounted_builtins(cmd: tuple[str, ...], flags: list[str], tu_path: Path,
                              quoted_filename: str, *, kernel: str, filename: str) -> None:
    """Preprocess the translation unit at `tu_path` (it compiled) and raise
    KernelCompileError when `uncounted_builtins` finds any, or cannot tell."""
    r = subprocess.run([*cmd, *flags, "-E", str(tu_path)], capture_output=True, text=True,
                       errors="replace")
    found = uncounted_builtins(r.stdout, quoted_filename)
    if found is None:
        raise KernelCompileError.refused(
            kernel, filename, "has no line of its own in the compiler's preprocessed output, so "
            "its reads could not be checked for builtins the access counts do not see",
            "keep the kernel's source as CUDA C, without line directives (#line); if it is, "
            "report this as a bug of the CPU executor.")
    if found:
        names = ", ".join(f"{name} (in {where})" for name, where in found[:3])
        raise KernelCompileError.refused(
            kernel, filename, f"uses {names}: a CPU vector builtin, a compiler atomic or an "
            f"instrumentation hook (__tsan_atomic*) touches memory where the CPU executor's "
            f"access counts and race check do not see it, and CUDA device code has none of "
            f"them",
            "read the arrays with plain loads (float4 v = *(const float4 *)p; x[i]); for an "
            "atomic, call CUDA's atomicAdd, atomicCAS, ... (no <immintrin.h>, no <atomic>)")
