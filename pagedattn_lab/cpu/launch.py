"""One launch on the CPU executor: arguments in, blocks run, results (or an exception) out.

Checked mode: every array argument is copied into its own shared mapping whose END touches
a PROT_NONE guard region (max(1 MiB, its size)), with a guard before it too; worker
processes run the blocks; a fault is decoded back to (argument, element index, thread,
block). The bytes between the mapping's first page and the array's start (less than a page:
no guard can sit there) hold _slack_fill's elements, so a read just before the array gets NaN
(floats) or -1 (integers), not a plausible 0, and a write there that changes those bytes is
reported after the launch (one that writes them unchanged, such as -1, is not); an
instrumented launch stops a read or write there with its thread (instrument.cpp). Arrays whose
memory overlaps (the same array passed twice, or views of one array) share one mapping, so
writes through one are seen through the other as on a GPU; no guard sits between them, so an
instrumented launch stops an access that runs past one's end into another
(report_overrun.py). On success the mappings are copied back into the NumPy arrays of
non-const parameters.

Unchecked mode: the NumPy memory is used directly and the blocks run on the calling thread.
"""
from __future__ import annotations

import ctypes as C
import mmap
import os
import sys
import threading
import time

import numpy as np

from . import abi
from .counters import Counters
from .device_data import shim_state_ranges, variable_ranges, variables_known
from .errors import ExecutorUnavailableError, KernelError
from .report import LaunchInfo, result_error, slack_write_error, timeout_error, worker_died
from .report_overrun import unseen_change_error

# Guard on each side of an array: max(1 MiB, its size), so that an index from -size to
# 2 * size faults in the array's own guard (before: 64 KiB in front, and `k[-1 * stride]`
# of a stride over 64 KiB, a block table's -1, read or changed the mapping below, such as the
# launch's results, unseen).
MIN_GUARD = 1 << 20
# Guard after an array, address space only: `x[threadIdx.x - 1]` at thread 0 is element
# 2^32 - 1, 2^32 elements of up to 16 bytes (a float4) past the array; with the 1 MiB guard
# alone it faulted only where nothing else was mapped there. Reserved only where the address
# space has no limit (RLIMIT_AS): under one, each array's 64 GiB would be taken while it fit,
# leaving the rest of the launch (the workers' stacks, the results' guard) too little.
WRAP_GUARD = (1 << 36) + MIN_GUARD
SLACK_FILL = 0xFF   # NaN in every float type, -1 in every signed integer
# A float array's slack holds signalling NaNs (all bits one but the quiet bit), which any
# arithmetic quiets: `x[i - 1] += v` or atomicAdd(x - 1, v) at i = 0 then changes the bytes
# and is reported, where the all-ones NaN came back unchanged. (dtype kind or name, itemsize)
_SIGNALLING_NAN = {("f", 2): 0xFDFF, ("f", 4): 0xFFBFFFFF, ("f", 8): 0xFFF7FFFFFFFFFFFF,
                   ("bfloat16", 2): 0xFFBF}


def _slack_fill(dtype: np.dtype, n: int) -> bytes:
    """The n bytes before an array of dtype: whole elements, aligned to its start."""
    nan = _SIGNALLING_NAN.get((dtype.kind, dtype.itemsize),
                              _SIGNALLING_NAN.get((dtype.name, dtype.itemsize)))
    if nan is None:
        return bytes([SLACK_FILL]) * n
    element = nan.to_bytes(dtype.itemsize, sys.byteorder)
    return (element * (n // dtype.itemsize + 1))[-n:] if n else b""
_UNCHECKED_LOCK = threading.Lock()   # a library's globals (static __shared__) are per process


def _wrap_guard() -> int:
    """WRAP_GUARD where the address space is unlimited, else 0."""
    import resource  # noqa: PLC0415 - POSIX only, and this module is imported on Windows too
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return WRAP_GUARD if soft == resource.RLIM_INFINITY else 0


class _Buffer:
    """One guarded mapping holding the host range [lo, hi) of one or more arrays."""

    def __init__(self, lib, lo: int, hi: int, dtype: np.dtype = np.dtype(np.uint8)):
        self.lib, self.lo, self.hi = lib, lo, hi
        nbytes = hi - lo
        base, length = C.c_uint64(0), C.c_uint64(0)
        guard = max(MIN_GUARD, nbytes)
        wrap = _wrap_guard()
        ptr = lib.pal_buffer_alloc(nbytes, guard, guard + wrap, C.byref(base), C.byref(length))
        if not ptr and nbytes and wrap:   # (address space used up: the array's own guard only)
            ptr = lib.pal_buffer_alloc(nbytes, guard, guard, C.byref(base), C.byref(length))
        if not ptr and nbytes:
            raise MemoryError(f"cannot map a guarded buffer of {nbytes} bytes for a kernel "
                              f"argument")
        self.base, self.length = base.value, length.value
        self.data = ptr or (self.base + guard)
        self.members: list = []   # (param, array, device address)
        # the data mapping's first byte: its page (the slack before the array is under a page)
        self.slack = self.data - self.data % mmap.PAGESIZE if ptr else 0
        self.fill = _slack_fill(dtype, self.data - self.slack if self.slack else 0)
        if nbytes:
            C.memmove(self.data, lo, nbytes)
            C.memmove(self.slack, self.fill, len(self.fill))

    def slack_write(self):
        """(param, array, element index) of the write nearest before the array, or None."""
        n = self.data - self.slack if self.slack and self.hi > self.lo else 0
        if n <= 0:
            return None
        changed = np.flatnonzero(np.ctypeslib.as_array((C.c_uint8 * n).from_address(self.slack))
                                 != np.frombuffer(self.fill, np.uint8))
        if not changed.size:
            return None
        # the array at the start (a writable one where an array is passed twice: it wrote)
        param, arr, _ = min(self.members, key=lambda m: (m[2], m[0].is_const))
        return param, arr, (int(changed[-1]) - n) // arr.itemsize

    def _writes(self):
        writes = [(p, a) for p, a, _ in self.members if not p.is_const]
        return writes if writes and self.hi > self.lo else []

    def check_read_only(self):
        """Raise if the kernel changed the bytes of a read-only array (checked for every
        buffer before any is copied back: the launch then changes nothing)."""
        writes = self._writes()
        if all(a.flags.writeable for _, a in writes):
            return
        n = self.hi - self.lo
        new = np.ctypeslib.as_array((C.c_uint8 * n).from_address(self.data))
        old = np.ctypeslib.as_array((C.c_uint8 * n).from_address(self.lo))
        if not np.array_equal(new, old):
            names = ", ".join(repr(p.name) for p, a in writes if not a.flags.writeable)
            raise ValueError(f"the kernel wrote to read-only array argument(s) {names}; all "
                             f"of the launch's writes were discarded (pass a writeable copy)")

    def copy_back(self):
        writes = self._writes()
        if writes and all(a.flags.writeable for _, a in writes):
            C.memmove(self.lo, self.data, self.hi - self.lo)

    def free(self):
        if self.base:
            self.lib.pal_buffer_free(self.base, self.length)
            self.base = 0


def _group_arrays(sig, args):
    """[(lo, hi, [(param, array)])] of pointer arguments, overlapping memory merged."""
    items = []
    for p, a in zip(sig, args):
        if p.is_pointer and a is not None:
            lo = a.__array_interface__["data"][0]
            items.append((lo, lo + a.nbytes, p, a))
    items.sort(key=lambda t: (t[0], t[1]))
    groups = []
    for lo, hi, p, a in items:
        if groups and a.nbytes and groups[-1][2] and lo < groups[-1][1]:
            g = groups[-1]
            groups[-1] = (g[0], max(g[1], hi), g[2] + [(p, a)])
        else:
            groups.append((lo, hi, [(p, a)]))
    return groups


def _scalar_storage(value: np.generic):
    raw = value.tobytes()
    buf = (C.c_uint64 * max(1, (len(raw) + 7) // 8))()
    C.memmove(buf, raw, len(raw))
    return buf


def default_workers(nblocks: int, threads_per_block: int = 1) -> int:
    """Worker processes for a checked launch: one per core (at most 8), but no more than
    one per 2048 CUDA threads, since each costs a fork (more in a large process)."""
    env = os.environ.get("PAGEDATTN_LAB_CPU_WORKERS")
    if env:
        try:
            return max(1, min(int(env), abi.MAX_WORKERS))
        except ValueError:   # (a typo silently ignored would leave the user guessing)
            raise ValueError(f"workers: $PAGEDATTN_LAB_CPU_WORKERS must be a whole number of "
                             f"worker processes, got {env!r}") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8, nblocks, nblocks * threads_per_block // 2048))


def run(lib, entry: int, *, kernel: str, sig, args, grid, block, shared_mem: int, checked: bool,
        timeout: float | None, workers: int, stack_bytes: int, poison: bool = True,
        instrument: int = 0, source=None, trusted: bool = False, last_first: bool = False):
    """Launch and wait; print the kernel's printf output; raise on any failure. With
    instrument & INSTR_COUNT, returns the raw counts (see counters.Counters.read). `trusted`:
    the package's own kernel (a timeout then blames the problem's size). `last_first`: run
    block 0, then the others from the last down (exposes blocks that wait for each other)."""
    buffers: list[_Buffer] = []
    storage = []
    handle = None
    counters = None
    try:
        device = {}
        if checked:
            for lo, hi, members in _group_arrays(sig, args):
                buf = _Buffer(lib, lo, hi, members[0][1].dtype)   # the array at lo
                buffers.append(buf)
                for p, a in members:
                    start = a.__array_interface__["data"][0] - lo if a.nbytes else hi - lo
                    addr = buf.data + start
                    buf.members.append((p, a, addr))
                    device[p.index] = addr
        for p, a in zip(sig, args):
            if p.is_pointer:
                if a is None:
                    storage.append(C.c_void_p(None))
                else:
                    storage.append(C.c_void_p(device[p.index] if checked
                                              else a.__array_interface__["data"][0]))
            else:
                storage.append(_scalar_storage(a))
        argv = (C.c_void_p * max(1, len(storage)))(*[C.addressof(s) for s in storage])
        cfg = abi.Config()
        cfg.entry = entry
        cfg.args = C.addressof(argv)
        cfg.grid[:] = list(grid)
        cfg.block[:] = list(block)
        cfg.shared_mem = shared_mem
        cfg.stack_bytes = stack_bytes
        cfg.nworkers = workers if checked else 1
        cfg.checked = 1 if checked else 0
        cfg.poison = 1 if poison else 0
        cfg.last_first = 1 if last_first else 0
        cfg.timeout_s = int(timeout + 10) if (checked and timeout) else 0
        ranges = [(p, a, device[p.index] if checked else a.__array_interface__["data"][0])
                  for p, a in zip(sig, args) if p.is_pointer and a is not None]
        variables = variable_ranges(lib, source[0], source[2]) if instrument and source else ()
        if instrument:
            count = bool(instrument & abi.INSTR_COUNT)
            counters = Counters(lib, ranges, grid, block, count=count, variables=variables,
                                shim_state=shim_state_ranges(lib, source[0]) if source else (),
                                variables_known=bool(source) and variables_known(source[0]))
            counters.configure(cfg, instrument)
        info = LaunchInfo(kernel, sig, tuple(grid), tuple(block), shared_mem, stack_bytes,
                          buffers, args, source, trusted, variables)
        if checked:
            handle = lib.pal_launch_begin(C.byref(cfg))
            if not handle:
                raise _fork_failed(kernel, C.get_errno() or 0)
        else:
            with _UNCHECKED_LOCK:
                handle = lib.pal_launch_begin(C.byref(cfg))
        if not handle:
            raise KernelError(f"kernel {kernel!r}: the CPU executor could not start (out of "
                              f"memory?)", kernel=kernel)
        deadline = time.monotonic() + timeout if (checked and timeout) else None
        while not lib.pal_launch_wait(handle, 100):
            if deadline is not None and time.monotonic() > deadline:
                lib.pal_launch_interrupt(handle)   # workers note who runs, then exit
                if not lib.pal_launch_wait(handle, 1000):
                    lib.pal_launch_kill(handle)
                ctl = lib.pal_launch_ctl(handle).contents
                _print_output(ctl)
                results = [ctl.res[w] for w in range(lib.pal_launch_nworkers(handle))]
                # host.cpp's on_stop: a read past an array, which came first
                read = next((r for r in results if r.status == abi.OBJSIZE), None)
                if read is not None:
                    raise result_error(read, info)
                running = [r for r in results if r.status == abi.STOPPED and r.has_thread]
                raise timeout_error(info, timeout, running)
        ctl = lib.pal_launch_ctl(handle).contents
        _print_output(ctl)
        _raise_failure(lib, handle, ctl, info, timeout, checked)
        for buf in buffers:
            hit = buf.slack_write()
            if hit is not None:
                raise slack_write_error(info, *hit)
        for buf in buffers:
            buf.check_read_only()
        hit = counters.uncounted_write(buffers) if counters is not None else None
        if hit is not None:
            raise unseen_change_error(info, *hit)
        for buf in buffers:
            buf.copy_back()
        return counters.read() if counters is not None and counters.count else None
    finally:
        if handle:
            lib.pal_launch_end(handle)
        for buf in buffers:
            buf.free()
        if counters is not None:
            counters.free()


def _fork_failed(kernel: str, err: int) -> ExecutorUnavailableError:
    why = os.strerror(err) if err else "fork failed"
    return ExecutorUnavailableError(
        f"kernel {kernel!r}: the CPU executor could not start its worker processes ({why}). A "
        f"checked launch never falls back to running in this process (a bad access would then "
        f"kill Python). Too many processes or too little memory? Close other notebooks or "
        f"raise the limit (ulimit -u); or pass checked=False to run in-process, unprotected.")


def _print_output(ctl) -> None:
    n = min(ctl.out_len, abi.OUT_CAP)
    if n <= 0:
        return
    text = C.string_at(C.addressof(ctl) + abi.Ctl.out.offset, n).decode("utf-8", errors="replace")
    if ctl.out_truncated or ctl.out_len > abi.OUT_CAP:
        text += (f"\n[pagedattn_lab: kernel printf output truncated after {abi.OUT_CAP // 1024} "
                 f"KiB ({ctl.out_len} bytes were printed)]\n")
    sys.stdout.write(text)
    sys.stdout.flush()


def _raise_failure(lib, handle, ctl, info: LaunchInfo, timeout, checked: bool) -> None:
    n = lib.pal_launch_nworkers(handle)
    failures = [ctl.res[w] for w in range(n) if ctl.res[w].status not in (abi.OK, abi.STOPPED)]
    if failures:
        first = min(failures, key=lambda r: (not r.has_thread, r.block_linear))
        raise result_error(first, info)
    for w in range(n if checked else 0):
        value = C.c_int(0)
        signaled = lib.pal_decode_status(lib.pal_launch_worker_status(handle, w), C.byref(value))
        if signaled:
            raise worker_died(info, value.value, timeout, ctl.res[w])
        if value.value != 0:
            raise KernelError(f"kernel {info.kernel!r}: a worker process exited with status "
                              f"{value.value} without reporting why", kernel=info.kernel)
    # Every worker ended cleanly: each took blocks until its last take came past the grid, so
    # counters that say otherwise were written by kernel code (runtime.cpp's block loop).
    nblocks = info.grid[0] * info.grid[1] * info.grid[2]
    if ctl.blocks_done != nblocks or ctl.next_block != nblocks + n:
        raise KernelError(f"kernel {info.kernel!r}: the launch's block counters were "
                          f"overwritten ({ctl.blocks_done} of {nblocks} blocks reported done): "
                          f"kernel code wrote far outside its arrays, past their guards (an "
                          f"index of many MiB, such as x[-k] with a huge k, or a wild "
                          f"pointer); the results were discarded", kernel=info.kernel)
