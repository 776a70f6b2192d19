"""Turn a race found by the shared-memory race check into a `SharedMemoryRace`.

The worker reports the two threads, the byte (an offset in dynamic shared memory, or an
address in the kernel's library for a static `__shared__` variable) and the two accesses'
code addresses. The variable's name comes from the library's symbol table (`nm`) or from the
source's `extern __shared__` declaration, the source lines from its line tables
(`addr2line`); both tools come with the compiler (binutils). Without them the report says
less, never something wrong.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess

from . import abi
from .errors import SharedMemoryRace, no_barrier_between
from .report import fmt3, xyz

_KINDS = {abi.RACE_WAW: "write after write", abi.RACE_RAW: "read after write",
          abi.RACE_WAR: "write after read"}
_VERB = {"read": "reads", "write": "writes", "atomic": "atomically updates"}
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+(?P<type>[^;{}]*?)\s*\b(?P<name>[A-Za-z_]\w*)"
                            r"\s*\[\s*\]")


def binutils_output(name: str, *args: str) -> str:
    """The standard output of binutils' `name` (nm, addr2line) run on `args`; "" where the
    tool is missing or fails (the reports then say less, never something wrong)."""
    exe = shutil.which(name)
    if not exe:
        return ""
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=32)
def data_symbols(lib_path: str) -> tuple:
    """(start, size, demangled name) of the library's data symbols, but the guards between
    the static __shared__ arrays, shim.h's and runtime.cpp's last (a report names the array,
    not the guard, nor a name of the runtime's)."""
    out = []
    for line in binutils_output("nm", "-C", "-S", "--defined-only", lib_path).splitlines():
        parts = line.split(None, 3)
        if (len(parts) == 4 and parts[2].lower() in ("b", "d", "s")
                and "__pal_sguard" not in parts[3] and "pal_shared_guard" not in parts[3]):
            try:
                out.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
            except ValueError:
                continue
    return tuple(out)


def _line(lib_path: str, pc: int, filename: str) -> int | None:
    """The kernel source line of a code address (the innermost frame in the kernel's file,
    so that an access inside an inlined shim function names the kernel's call)."""
    if not pc:
        return None
    out = binutils_output("addr2line", "-i", "-e", lib_path, f"{pc - 1:#x}")
    for text in out.splitlines():
        file, _, rest = text.rpartition(":")
        m = re.match(r"\d+", rest)
        if m and file.endswith(filename) and int(m.group(0)) > 0:
            return int(m.group(0))
    return None


def _linear(thread, block) -> int:
    """The thread's index in its block (x fastest), which decides its warp."""
    x, y, z = (int(v) for v in thread)
    bx, by = int(block[0]), int(block[1])
    return x + bx * (y + by * z)


def _variable(r, info, source) -> tuple[str | None, int | None, str]:
    """(name, byte offset in it, description) of the shared byte; the offset is None where
    the static variable is not known (no `nm`), as KernelFault's is."""
    if r.region == abi.REGION_DYN_SHARED:
        names = [m.group("name") for m in _EXTERN_SHARED.finditer(source)]
        decl = _EXTERN_SHARED.search(source)
        name = names[0] if names else None
        what = (f"dynamic shared memory `{name}` (extern __shared__ {' '.join(decl.group('type').split())}[])"
                if decl else "dynamic shared memory")
        return name, int(r.offset), f"{what} (byte {r.offset})"
    for start, size, sym in data_symbols(info.source[0]) if info.source else ():
        if start <= r.offset < start + max(size, 1):
            name = sym.rsplit("::", 1)[-1]
            off = int(r.offset - start)
            return name, off, f"`{sym}` (static __shared__, byte {off})"
    return None, None, "a static __shared__ variable"


def _hint(kind: int, r, line, other_line, same_warp: bool) -> str:
    if kind == abi.RACE_RAW and r.other_atomic:
        return ("A thread reads a shared value that other threads are still updating with "
                "atomics; read it after a __syncthreads() that follows all the atomics.")
    if kind == abi.RACE_RAW and line is not None and line == other_line:
        return ("Every thread reads and writes the same shared variable on this line (like "
                "`acc += x`): the updates overwrite each other on a GPU. Use atomicAdd, or "
                "give each thread its own slot, __syncthreads(), and reduce.")
    hint = _kind_hint(kind)
    if same_warp and kind != abi.RACE_WAW:
        hint += (" Both threads are lanes of one warp: where only that warp shares the data, "
                 "a __syncwarp() there orders them too; a shuffle, a vote or a WMMA call "
                 "does not order shared memory.")
    return hint


def _kind_hint(kind: int) -> str:
    if kind == abi.RACE_RAW:
        return ("A thread reads shared memory that another thread wrote with no barrier "
                "between: put a __syncthreads() after the writes and before the reads.")
    if kind == abi.RACE_WAR:
        return ("A thread overwrites shared memory that another thread read (or still has "
                "to read) with no barrier between: put a __syncthreads() after the reads "
                "and before the next writes (e.g. at the end of each loop iteration).")
    return ("Two threads write the same shared byte with no barrier between, so which "
            "value stays is unspecified on a GPU: let one thread write, or use atomics.")


def race_error(r, info) -> SharedMemoryRace:
    lib_path, filename, source = info.source or ("", "", "")
    kind = int(r.race_kind)
    name, offset, where = _variable(r, info, source)
    line = _line(lib_path, int(r.pc), filename) if lib_path else None
    other_line = _line(lib_path, int(r.other_pc), filename) if lib_path else None
    thread = tuple(r.thread)
    other = xyz(int(r.other_thread), info.block)
    access = {0: "read", 1: "write", 2: "atomic"}.get(int(r.is_write), "write")
    first = {abi.RACE_WAW: "atomically wrote" if r.other_atomic else "wrote",
             abi.RACE_RAW: "atomically wrote" if r.other_atomic else "wrote",
             abi.RACE_WAR: "read"}[kind]
    same_warp = _linear(thread, info.block) // 32 == int(r.other_thread) // 32
    at = (lambda n: f" at line {n}" if n else "")
    msg = (f"kernel {info.kernel!r}: shared-memory race ({_KINDS[kind]}) in block "
           f"{fmt3(r.block)}: thread {fmt3(thread)} {_VERB[access]} {where}{at(line)}, which thread "
           f"{fmt3(other)} {first}{at(other_line)} {no_barrier_between(same_warp)}. "
           f"{_hint(kind, r, line, other_line, same_warp)}")
    return SharedMemoryRace(
        msg, kernel=info.kernel, block=tuple(r.block), thread=thread, other_thread=other,
        kind=_KINDS[kind], variable=name, offset=offset, line=line, other_line=other_line,
        access=access, same_warp=same_warp, region="shared memory", buffer=None, arg_index=None, index=offset,
        size=None, address=int(r.addr), signal=None)
