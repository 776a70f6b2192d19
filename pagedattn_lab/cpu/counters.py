"""Shared mappings that the workers of an instrumented launch write their counts into."""
from __future__ import annotations

import ctypes as C

import numpy as np

from . import abi


class _Mapping:
    """A zeroed shared (fork-inherited) mapping of nbytes, seen as a NumPy array."""

    def __init__(self, lib, nbytes: int, dtype):
        base, length = C.c_uint64(0), C.c_uint64(0)
        nbytes = max(int(nbytes), 8)
        ptr = lib.pal_buffer_alloc(nbytes, 0, 0, C.byref(base), C.byref(length))
        if not ptr:
            raise MemoryError(f"cannot map {nbytes} bytes for the access counters of a launch")
        self.lib, self.ptr, self.base, self.length = lib, ptr, base.value, length.value
        raw = (C.c_uint8 * nbytes).from_address(ptr)
        self.array = np.frombuffer(raw, dtype=dtype)

    def free(self):
        if self.base:
            self.array = None
            self.lib.pal_buffer_free(self.base, self.length)
            self.base = 0


class Counters:
    """The instrumentation of one launch: the array arguments' address ranges and, when
    counting, per-thread and per-buffer counters (see runtime.h, PAL_C_* and PAL_B_*), and
    the kernel's own variables' (name, lo, hi), counted as global memory (device_data.py)."""

    def __init__(self, lib, ranges, grid, block, count: bool, variables=(), shim_state=(),
                 variables_known: bool = False):
        self.count = count
        # (whether `variables` and `shim_state` are all of the build's writable state: only
        # then does the launch refuse a store outside them, instrument.cpp)
        self.variables_known = variables_known
        self.variables = [(name, shared) for name, _lo, _hi, shared in variables]
        # (the shim's state after the counted variables, whose bufstats rows keep their
        # order: kernel code may write it, uncounted; instrument.cpp's PAL_VAR_SHIM)
        triples = [(lo, hi, int(shared)) for _name, lo, hi, shared in variables]
        triples += [(lo, hi, abi.VAR_SHIM) for lo, hi in shim_state]
        self._nvars = len(triples)
        self._vars = (C.c_uint64 * max(1, 3 * len(triples)))(*[v for t in triples for v in t])
        self.params = [p for p, _a, _addr in ranges]
        self.arrays = [a for _p, a, _addr in ranges]
        self.sizes = [a.nbytes for a in self.arrays]
        flat = [v for _p, a, addr in ranges for v in (addr, addr + a.nbytes)]
        self._ranges = (C.c_uint64 * max(1, len(flat)))(*flat)
        self.nblocks = grid[0] * grid[1] * grid[2]
        self.nthreads = block[0] * block[1] * block[2]
        self._maps = []
        if count:
            self.counts = _Mapping(lib, self.nblocks * self.nthreads * abi.NCOUNT * 4, np.uint32)
            self._maps.append(self.counts)
            self.bufstats = _Mapping(lib, self._rows() * abi.NBUFSTAT * 8, np.uint64)
            self._maps.append(self.bufstats)
            self.written = _Mapping(lib, sum(self.sizes), np.uint8)
            self._maps.append(self.written)

    def configure(self, cfg, instrument: int) -> None:
        cfg.instrument = instrument
        cfg.nranges = len(self.params)
        cfg.ranges = C.addressof(self._ranges)
        cfg.nvars = self._nvars
        cfg.vars = C.addressof(self._vars)
        cfg.vars_known = int(self.variables_known)
        if self.count:
            cfg.counts = self.counts.ptr
            cfg.bufstats = self.bufstats.ptr
            cfg.written = self.written.ptr

    def _rows(self) -> int:
        return len(self.params) + 1 + len(self.variables)

    def read(self):
        """(per-thread counts [blocks, threads, NCOUNT] int64, per-buffer counts
        [buffers + 1 + variables, NBUFSTAT] int64 (a row per array argument, shared
        memory's, a row per variable), params, arrays, variables' (name, shared?))."""
        per_thread = self.counts.array[:self.nblocks * self.nthreads * abi.NCOUNT]
        per_thread = per_thread.astype(np.int64).reshape(self.nblocks, self.nthreads, abi.NCOUNT)
        per_buffer = self.bufstats.array[:self._rows() * abi.NBUFSTAT]
        per_buffer = per_buffer.astype(np.int64).reshape(self._rows(), abi.NBUFSTAT)
        return per_thread, per_buffer, self.params, self.arrays, self.variables

    def uncounted_write(self, buffers):
        """(buffer, offsets from its data of its bytes) that the launch changed in the first
        of `buffers` (launch._Buffer) where it changed bytes though no counted store wrote
        them, or None. Something the instrumented build does not see wrote them (a C library
        function, a compiler builtin, a system call; a function out of the build): its counts
        would miss those stores, and a one-thread copy made that way passed a check of who
        stores what (report_overrun.py names the bytes)."""
        if not self.count:
            return None
        starts = np.cumsum([0] + self.sizes)
        written = {p.index: self.written.array[s:s + n].astype(bool)
                   for p, s, n in zip(self.params, starts, self.sizes)}
        for buf in buffers:
            n = buf.hi - buf.lo
            if n <= 0:
                continue
            new = np.ctypeslib.as_array((C.c_uint8 * n).from_address(buf.data))
            changed = new != np.ctypeslib.as_array((C.c_uint8 * n).from_address(buf.lo))
            for p, a, addr in buf.members:   # (arrays passed twice share the buffer)
                changed[addr - buf.data:addr - buf.data + a.nbytes] &= ~written[p.index]
            hits = np.flatnonzero(changed)
            if hits.size:
                return buf, hits
        return None

    def free(self):
        for m in self._maps:
            m.free()
        self._maps = []
