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
    counting, per-thread and per-buffer counters (see runtime.h, PAL_C_* and PAL_B_*)."""

    def __init__(self, lib, ranges, grid, block, count: bool):
        self.count = count
        self.params = [p for p, _a, _addr in ranges]
        self.arrays = [a for _p, a, _addr in ranges]
        flat = [v for _p, a, addr in ranges for v in (addr, addr + a.nbytes)]
        self._ranges = (C.c_uint64 * max(1, len(flat)))(*flat)
        self.nblocks = grid[0] * grid[1] * grid[2]
        self.nthreads = block[0] * block[1] * block[2]
        self._maps = []
        if count:
            self.counts = _Mapping(lib, self.nblocks * self.nthreads * abi.NCOUNT * 4, np.uint32)
            self._maps.append(self.counts)
            self.bufstats = _Mapping(lib, (len(ranges) + 1) * abi.NBUFSTAT * 8, np.uint64)
            self._maps.append(self.bufstats)

    def configure(self, cfg, instrument: int) -> None:
        cfg.instrument = instrument
        cfg.nranges = len(self.params)
        cfg.ranges = C.addressof(self._ranges)
        if self.count:
            cfg.counts = self.counts.ptr
            cfg.bufstats = self.bufstats.ptr

    def read(self):
        """(per-thread counts [blocks, threads, NCOUNT] int64, per-buffer counts
        [buffers + 1, NBUFSTAT] int64 (the last row: shared memory), params, arrays)."""
        per_thread = self.counts.array[:self.nblocks * self.nthreads * abi.NCOUNT]
        per_thread = per_thread.astype(np.int64).reshape(self.nblocks, self.nthreads, abi.NCOUNT)
        per_buffer = self.bufstats.array[:(len(self.params) + 1) * abi.NBUFSTAT]
        per_buffer = per_buffer.astype(np.int64).reshape(len(self.params) + 1, abi.NBUFSTAT)
        return per_thread, per_buffer, self.params, self.arrays

    def free(self):
        for m in self._maps:
            m.free()
        self._maps = []
