"""Run a learner's puzzle kernel (workbook 03): its outputs, its access counts, and what to
say when it breaks.

Every case runs once on the CPU executor through `pagedattn_lab.cpu.count_accesses` with the
shared-memory race check on: one instrumented launch gives the outputs, the per-thread
counts of global and shared reads and writes, and a `SharedMemoryRace` for a missing
barrier. With a GPU (`device="gpu"`, or "auto" when CuPy has one) the outputs come from the
GPU and the counts from the CPU run; `device="gpu"` without one is the CPU run alone, noted in
the report (kernel_runner.kernel_device). Kernel failures become a `Mismatch` that says which
element the failing thread handles (`locate`), because that is the clue a puzzle needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..words import counted, ranges
from .branch_barriers import barrier_in_branch, branch_barrier_hint
from .faults import (RACE_ADVICE, describe_kernel_exception, kernel_message,
                     left_out_of_mask_hint)
from .kernel_runner import Kernel, kernel_device, note_device, poisoned, unwritten
from .report import Mismatch

LAUNCH_TIMEOUT = 10.0   # seconds; the puzzles are tiny


@dataclass
class Run:
    outputs: list    # the NaN where the kernel stored nothing
    counts: object   # pagedattn_lab.cpu.AccessCounts
    written: list    # bool per output: the elements the kernel stored (a NaN stored included)


def _xyz(v) -> str:
    return "(" + ", ".join(str(int(x)) for x in v) + ")" if v is not None else "?"


class PuzzleKernel:
    """A learner's kernel, compiled on first use, run with counts (see the module docstring).

    `locate(block, thread)` -> (what the thread handles, in words; True when that lies outside
    the data, where the thread must not touch the arrays)."""

    def __init__(self, source: str, name: str, device: str, *,
                 past_end: str = "guard with an if: such a thread must not read or write"):
        self.source, self.name, self.asked = source, name, device
        self.device = kernel_device(device)
        self.past_end = past_end
        self.locate: Callable[[tuple, tuple], tuple[str, bool]] = lambda b, t: ("", False)
        self._kernel = self._gpu = None

    def get(self) -> Kernel:
        """The kernel compiled for the CPU executor (lint and compile errors raise here)."""
        if self._kernel is None:
            self._kernel = Kernel(self.source, self.name, "cpu")
            note_device(self.asked, self.device)
        return self._kernel

    def run(self, grid, block, args, outputs, shared_mem: int = 0, *, locate=None) -> Run:
        """Launch with the float32 outputs filled with the poison (what they held is
        replaced), so that a NaN the kernel stores is told from an element it never wrote;
        the poison left comes back as a plain NaN (the hints do arithmetic on the outputs).
        `locate` describes a thread's element for this case's messages."""
        if locate is not None:
            self.locate = locate
        kern = self.get()
        args = [poisoned(a.shape) if i in outputs and a.dtype == np.float32 else a
                for i, a in enumerate(args)]

        def count(host):
            try:
                return kern.count(grid, block, host, shared_mem, racecheck=True,
                                  timeout=LAUNCH_TIMEOUT)
            except Exception as exc:
                raise self.explain(exc) from exc

        def on_gpu():
            if self._gpu is None:
                self._gpu = Kernel(self.source, self.name, "gpu")
            return self._gpu.launch(grid, block, args, shared_mem=shared_mem, outputs=outputs)
        got, counts = count_then_check(count, args, outputs,
                                       on_gpu if self.device == "gpu" else None)
        written = [~unwritten(out) for out in got]
        return Run([np.where(w, out, np.float32(np.nan)) for out, w in zip(got, written)],
                   counts, written)

    def _thread(self, exc) -> str:
        block, thread = getattr(exc, "block", None), getattr(exc, "thread", None)
        if block is None or thread is None:
            return "a thread"
        what, _ = self.locate(tuple(block), tuple(thread))
        return f"thread {_xyz(thread)} of block {_xyz(block)} ({what})"

    def explain(self, exc: BaseException) -> BaseException:
        """A Mismatch for the executor's exceptions; anything else is returned as it came."""
        kind = type(exc).__name__
        if kind == "SharedMemoryRace":
            hint = _RACE_HINTS.get(getattr(exc, "kind", ""), RACE_ADVICE)
            if getattr(exc, "same_warp", False) and exc.kind != "write after write":
                hint += (" Both threads are lanes of one warp: if only that warp shares the "
                         "data, a __syncwarp() between them is enough; a shuffle or a vote "
                         "does not order shared memory.")
            branch = barrier_in_branch(self.source, getattr(exc, "line", None),
                                       getattr(exc, "other_line", None))
            if branch is not None:
                hint = branch_barrier_hint(branch)
            return Mismatch(f"a race on shared memory: {exc}", hint)
        if kind == "KernelFault" and getattr(exc, "buffer", None):
            block, thread = getattr(exc, "block", None), getattr(exc, "thread", None)
            outside = block is not None and thread is not None and \
                self.locate(tuple(block), tuple(thread))[1]
            access = getattr(exc, "access", None) or "access"
            if thread is None:   # a write before the array's start, found after the launch
                return Mismatch(kernel_message(exc),
                                f"index {exc.index} is before the array's start: some thread's "
                                f"index into {exc.buffer} went below 0; work out thread 0's by "
                                "hand.")
            message = (f"out-of-bounds {access} of {exc.buffer}[{exc.index}] (it has "
                       f"{counted(exc.size, 'element')}) by {self._thread(exc)}.")
            hint = (f"that thread lies past the end of the data: {self.past_end}." if outside
                    else f"that thread has an element, but its index into {exc.buffer} is "
                         "wrong: work it out for this thread by hand.")
            return Mismatch(message, hint)
        if kind == "WarpSyncError":
            lanes = ranges(getattr(exc, "bad_lanes", None) or [])
            exited = bool(getattr(exc, "exited_threads", None))
            return Mismatch(f"a warp shuffle can never complete: {exc}",
                            left_out_of_mask_hint(exc) or
                            f"lanes {lanes} {'had returned' if exited else 'wait elsewhere'} "
                            "when the others reached a shuffle whose mask names them: every "
                            "lane in the mask must reach every __shfl_*_sync. A lane with no "
                            "element takes part with 0 instead of returning.")
        if kind == "KernelDeadlock":
            exited = getattr(exc, "exited_threads", None) or []
            return Mismatch(f"deadlock: {str(exc).split(' Every thread')[0]}",
                            f"{len(exited)} threads returned before a __syncthreads() the others "
                            "wait at: every thread of a block must reach every barrier. Guard "
                            "the work with an if, not the barrier." if exited else
                            "the threads wait at different barriers: every thread must pass "
                            "the same __syncthreads() calls in the same order.")
        described = describe_kernel_exception(exc)
        return Mismatch(*described) if described else exc


_RACE_HINTS = {
    "read after write": "a thread read shared memory that another thread wrote, with no "
                        "__syncthreads() between the write and the read: the value it got "
                        "depends on which thread ran first. Put a barrier between them.",
    "write after write": "two threads wrote the same shared-memory element between two "
                         "barriers: each element should have one writer (split the work by "
                         "thread index).",
    "write after read": "a thread read shared memory that another thread wrote only later, "
                        "with no __syncthreads() between: the reader got what was there "
                        "before. If the reads should see the writes, put a barrier between "
                        "the stores and the loads; if the buffer is being reused, put one "
                        "before the overwrite.",
}


def count_then_check(count, args, outputs, launch=None, where: str = "the GPU's"):
    """(outputs, counts): `count(host)` runs the kernel on the CPU executor with its accesses
    counted, on copies of `args`; `launch()` gives the outputs checked (None: the counted
    run's), which must be the counted run's values (same_work), else its counts say nothing
    of the kernel checked."""
    host = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    counts = count(host)
    counted_outputs = [host[i] for i in outputs]
    if launch is None:
        return counted_outputs, counts
    got = launch()
    same_work(got, counted_outputs, where)
    return got, counts


def same_work(checked: list, counted: list, where: str = "the GPU's") -> None:
    """The counts describe the checked launch's outputs (`where`: whose, in words) only if
    the CPU run that counted computed them too (within rounding): a kernel that tells the
    two apart (`#ifdef __PAGEDATTN_LAB_CPU__`, the clock) could show the counts one kernel
    and the values another."""
    for i, (g, c) in enumerate(zip(checked, counted)):
        g, c = np.asarray(g), np.asarray(c)
        if g.shape == c.shape and np.allclose(g, c, rtol=1e-4, atol=1e-5, equal_nan=True):
            continue
        bad = np.flatnonzero(~np.isclose(g, c, rtol=1e-4, atol=1e-5, equal_nan=True)) \
            if g.shape == c.shape else np.array([0])
        raise Mismatch(f"output {i}: {where} values differ from those of the CPU executor's "
                       f"run, where the memory accesses were counted ({bad.size} elements, the "
                       f"first at flat index {int(bad[0])})",
                       "the kernel must do the same work on either device and every time it "
                       "runs: do not make what it computes depend on __PAGEDATTN_LAB_CPU__, "
                       "__CUDA_ARCH__ or the clock.",
                       expected="the CPU run's values", got=f"other values in {where} outputs")


def per_thread_max(counts, name: str) -> tuple[int, str]:
    """(the most `name` accesses any thread made, 'thread (x,y,z) of block (x,y,z)')."""
    a = getattr(counts, name)
    flat = int(np.argmax(a))
    row, col = divmod(flat, a.shape[1])
    gx, gy, _ = counts.grid
    bx, by, _ = counts.block
    block = (row % gx, (row // gx) % gy, row // (gx * gy))
    thread = (col % bx, (col // bx) % by, col // (bx * by))
    return int(a.max()), f"thread {_xyz(thread)} of block {_xyz(block)}"


def count_line(counts, budget: dict) -> str:
    """The per-thread maxima, GPU-Puzzles style, with the budget beside each."""
    parts = []
    for name in ("global_reads", "global_writes", "shared_reads", "shared_writes"):
        most, _ = per_thread_max(counts, name)
        limit = f" (budget {budget[name]})" if name in budget else ""
        parts.append(f"{name.replace('_', ' ')} {most}{limit}")
    line = "Most accesses by one thread: " + ", ".join(parts) + "."
    per_array = [f"{b.name} {b.sectors / b.requests:.1f}" for b in counts.by_buffer.values()
                 if b.requests]
    if per_array:
        line += ("\nSectors (32 bytes) per warp request, by array (4 = 32 threads reading 32 "
                 "consecutive floats, 1 = all reading one): " + ", ".join(per_array) + ".")
    return line
