"""The exceptions of the CPU executor.

Every launch failure is a `KernelError` (a RuntimeError) that names the kernel and, where
known, the block and thread (as (x, y, z) tuples) that caused it.
"""
from __future__ import annotations

__all__ = ["KernelError", "KernelFault", "SharedMemoryRace", "KernelDeadlock", "WarpSyncError", "KernelTimeout",
           "KernelAssertionError", "KernelCompileError", "CompilerNotFoundError",
           "ExecutorUnavailableError"]


class KernelError(RuntimeError):
    """A kernel launch failed. Attributes: kernel, block, thread (tuples or None)."""

    def __init__(self, message: str, *, kernel: str | None = None, block=None, thread=None,
                 **details):
        super().__init__(message)
        self.kernel = kernel
        self.block = block
        self.thread = thread
        for key, value in details.items():
            setattr(self, key, value)


class KernelFault(KernelError):
    """A bad memory access or another crash in a kernel thread.

    Attributes: buffer (the parameter name, or None when the address is in no argument),
    arg_index, index (element index into the NumPy array; may be negative), size (elements),
    access ("read", "write" or None when unknown), address, signal (e.g. "SIGSEGV"),
    region ("argument", "stack", "dynamic shared memory", "static shared memory", "local or
    shared array" or "unknown"; a SharedMemoryRace's is "shared memory"); when the kernel
    called a forbidden function (`fork`, `system`, ...: README.md), syscall, its name. An
    index past a local or static __shared__ array (region "local or shared array") also sets
    array (the indexing expression as written, or None), array_type ("float [8]") and
    line; a shift by a negative amount or past the value's width
    sets shift (the amount), bits (the value's width: 32, or 64 for a long long) and line.
    A write past a static __shared__ array through a pointer, found after the block (region
    "static shared memory", thread None), sets variable (that array's name, or None) and
    offset (the first changed byte, counted from the array's start, as a SharedMemoryRace
    counts it: at or past the array's size, as the write was past its end; the message says
    how far past). A fault of region "argument" sets slack: True for an access to the bytes
    just before the array, in its first page (launch.py's slack: a write there found after a
    plain launch, or any access an instrumented launch stopped there, where a plain launch's
    read gets the fill's NaN or -1 unstopped), False for one that reached a guard page.
    An access that ran past an argument's end into another argument whose memory overlaps it
    (views of one buffer: no guard page between them) also sets into (that argument's
    name) and into_index (its element there); index is then past the end of buffer.
    """


class SharedMemoryRace(KernelFault):
    """Two threads of a block touched the same shared-memory byte between two barriers, at
    least one of them writing, without atomics (found by the race check, `racecheck=True`).

    Attributes: kind ("write after write", "read after write", "write after read"),
    variable (the shared variable's name, or None), offset (the byte, counted from the
    variable's start as KernelFault counts it, or from dynamic shared memory's; None where
    a static variable is not known), index (the same as offset), block,
    thread (the second access), other_thread (the earlier one), line, other_line (kernel
    source lines, or None when unknown), access ("read"/"write"/"atomic" of the second),
    same_warp (both are lanes of one warp: a __syncwarp() between would order them).
    """


def no_barrier_between(same_warp: bool) -> str:
    """A race report's words for what is missing: within a warp, a __syncwarp() would do."""
    return ("with no __syncwarp() or __syncthreads() between" if same_warp
            else "with no __syncthreads() between")


class KernelDeadlock(KernelError):
    """Threads of a block wait for each other forever (a barrier that some never reach).

    Attributes: block, num_waiting, waiting_threads, exited_threads (lists of (x, y, z)),
    lines (source lines the threads wait at).
    """


class WarpSyncError(KernelDeadlock):
    """A warp intrinsic (__shfl_*_sync, __ballot_sync, __syncwarp) named lanes in its mask
    that exited, do not exist, or never arrive. Attributes as KernelDeadlock, plus warp,
    mask, bad_lanes (list of lane numbers), apart_lanes (those of bad_lanes that wait at
    another warp-wide call) and op (the intrinsic, e.g. "__syncwarp")."""


class KernelTimeout(KernelError):
    """The launch ran longer than its time limit and was stopped. Attribute: timeout (s)."""


class UncountedWrite(KernelError):
    """A launch whose accesses were counted changed an array element that no counted store
    wrote (a compiler builtin the hooks miss, another library's code). Attributes: buffer
    (parameter name), arg_index, index (element)."""


class KernelAssertionError(KernelError):
    """A device-side assert() failed. Attribute: line."""


class KernelCompileError(RuntimeError):
    """The kernel source does not compile.

    Attributes: kernel, filename, lineno (first error line in the kernel source, or None),
    errors (list of (filename, line, column, message)), log (the compiler's full output),
    hints (list of strings).
    """

    def __init__(self, message: str, *, kernel=None, filename=None, lineno=None, errors=(),
                 log="", hints=()):
        super().__init__(message)
        self.kernel = kernel
        self.filename = filename
        self.lineno = lineno
        self.errors = list(errors)
        self.log = log
        self.hints = list(hints)

    @classmethod
    def refused(cls, kernel: str, filename: str, what: str, *hints: str, lineno=None):
        """The error of a source the executor refuses before building or loading it (no
        compiler messages: `what` says why, `hints` what to do)."""
        return cls(f"kernel source {filename!r} (kernel {kernel!r}) {what}", kernel=kernel,
                   filename=filename, lineno=lineno, errors=[], log="", hints=hints)


class CompilerNotFoundError(KernelCompileError):
    """No C++ compiler was found to build kernels for the CPU executor."""


class ExecutorUnavailableError(RuntimeError):
    """The CPU executor cannot run on this platform (e.g. native Windows)."""
