"""Refuse, in an instrumented build, a kernel that calls the C library.

The instrumented build (access counts, race check) sees the loads and stores the compiler
emits for the kernel's own code, not those of the C library: a kernel that read its inputs
with bcopy or read(), or wrote its outputs with mempcpy, showed the counts none of those
accesses (a one-thread copy passed the checks of who reads and stores what). A write is
caught after the launch (counters.py); a read leaves no trace. CUDA device code has no C
library, so the kernel object of an instrumented build may refer only to the shim's
functions (__pal_*, __tsan_*: memcpy, memmove and memset go there, counted; see
kernel_object.count_library_copies), the math library, the compiler's own helpers and a
few functions that touch no array of the kernel's; a function of any other library (the C
library's, Python's) is refused.

Which library provides a name is asked of the dynamic loader (dlsym, then dladdr): in this
process's global scope (the C and math libraries, Python's) and in the C++ library's.
Linux only, like kernel_object.py.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re

from .errors import KernelCompileError
from .kernel_object import undefined_symbols

__all__ = ["library_calls", "refuse_library_calls"]

# Libraries whose functions a kernel may call: math (libm, its vector variants), the
# compiler's helpers (libgcc_s: __popcountdi2 where there is no popcnt instruction), the
# loader's (__tls_get_addr).
_ALLOWED_LIBRARIES = re.compile(r"^(libm|libmvec|libgcc_s|ld-linux[\w.-]*|ld64)\.so")
_ALLOWED_NAMES = re.compile(
    r"^(__pal_\w+|__tsan_\w+|blockDim|gridDim"
    # the handlers of the index and shift checks (ubsan.cpp)
    r"|__ubsan_handle_(shift_)?out_of_bounds(_abort)?|__ubsan_handle_type_mismatch_v1(_abort)?"
    # the stack protector; device new, malloc and free (memcpy, memmove and memset are the
    # hooks' by now: kernel_object.count_library_copies)
    r"|__stack_chk_fail|__stack_chk_guard|malloc|free|_Zn[wa]\w+"
    r"|_Zd[la]\w+"
    # a class with virtual functions: its type information, a pure virtual's stand-in
    r"|_ZTVN10__cxxabiv1\w+|__cxa_pure_virtual|__cxa_deleted_virtual"
    # the C library's share of the math functions (glibc keeps these in libc)
    r"|(__)?(frexp|ldexp|modf|scalbl?n|copysign|isinf|isnan|finite|fpclassify|signbit)"
    r"(f|l|f128)?)$")


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


@functools.lru_cache(maxsize=None)
def _scopes() -> tuple:
    """Where to look names up: this process's global scope, and the C++ library with what
    it needs (the kernel library is linked with it; it may not be loaded here yet)."""
    process = ctypes.CDLL(None)
    process.dlsym.restype = ctypes.c_void_p
    process.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    try:
        cxx = ctypes.CDLL("libstdc++.so.6")._handle
    except OSError:
        cxx = None
    return process, (None, *([cxx] if cxx else []))


@functools.lru_cache(maxsize=None)
def _provider(name: str) -> str | None:
    """The file name of the library that defines `name`, or None (no library has it: one
    of libgcc.a's helpers, linked in statically)."""
    process, handles = _scopes()
    for handle in handles:
        address = process.dlsym(handle, name.encode())
        info = _DlInfo()
        if address and process.dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
            return os.path.basename((info.dli_fname or b"").decode(errors="replace"))
    return None


def library_calls(path: str) -> list[str]:
    """The names of the object at `path` that belong to a library a kernel may not call."""
    found = []
    for name in dict.fromkeys(undefined_symbols(path)):
        if _ALLOWED_NAMES.match(name):
            continue
        lib = _provider(name)
        if lib is not None and not _ALLOWED_LIBRARIES.match(lib):
            found.append(f"{name} ({lib})")
    return found


def refuse_library_calls(path: str, *, kernel: str, filename: str) -> None:
    """Raise KernelCompileError when `library_calls` finds any (Linux, ELF)."""
    found = library_calls(path) if os.name == "posix" and hasattr(ctypes.CDLL(None), "dladdr") \
        else []
    if found:
        raise KernelCompileError.refused(
            kernel, filename, f"calls {', '.join(found[:4])}: the CPU executor counts a "
            f"kernel's memory accesses and checks its races in its own code only, and CUDA "
            f"device code has no such library function",
            "read and write the arrays with the kernel's own loads and stores (x[i] = v, or "
            "memcpy); the CUDA math functions (expf, fmaxf, ...) are fine")
