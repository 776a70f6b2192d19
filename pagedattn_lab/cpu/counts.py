"""Per-launch memory-access counts, GPU-Puzzles style: `count_accesses(kernel, grid, block, args)`.

The kernel runs once on the CPU executor in an instrumented build (every load and store of
the compiled kernel calls a counting hook; see instrument.cpp) and its arrays are written as
by a normal launch. What is counted:

- per thread: global (array-argument) and shared-memory reads and writes, as memory
  accesses (one per load or store instruction of up to 16 bytes: a `float` is 1, a `float4`
  is 1) and as bytes. An atomic counts as one read and one write.
- per array argument: the same totals, elements (bytes / the array's itemsize) and bytes.
- the kernel's own `__device__` and `static` variables: global memory on a GPU, so counted
  as global reads and writes, and each in `by_buffer` as "__device__ <name>" (its element
  type is not known: `reads`/`writes` there are accesses, `itemsize` 0).
- per warp request: the distinct 32-byte sectors that the lanes of a warp touch with one
  load or store instruction, summed over requests. On the CPU a "warp request" is the
  threads of one warp executing the same load or store (same place in the compiled code)
  for the same time since the last __syncthreads(). Sectors are what the memory system
  moves: 32 lanes reading 32 consecutive floats is 1 request of 4 sectors (128 bytes); 32
  lanes reading one float is 1 request of 1 sector (a broadcast).
- shared memory: requests and wavefronts (the most distinct 4-byte words any of the 32
  banks serves for one request: 1 without bank conflicts).

Counts reflect the compiled code, like a profiler's: a value the compiler keeps in a
register is not re-read. Nothing here says whether a sector came from L2 or DRAM.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .report import fmt3, xyz

__all__ = ["count_accesses", "AccessCounts", "BufferCounts"]


def count_accesses(kernel, grid, block, args, shared_mem: int = 0, *, timeout=None,
                   racecheck: bool | None = None, workers=None) -> "AccessCounts":
    """Run `kernel` once on the CPU executor, counting its memory accesses.

    `kernel`: a pagedattn_lab.RawKernel or pagedattn_lab.cpu.RawKernel; grid, block, args,
    shared_mem as for a launch (NumPy arrays, written in place). `racecheck`: None takes the
    kernel's, else $PAGEDATTN_LAB_CPU_RACECHECK, as a launch does. Returns AccessCounts.
    """
    from ..rawkernel import RawKernel as AnyRawKernel  # noqa: PLC0415 - avoids a cycle
    from .kernel import RawKernel  # noqa: PLC0415
    if isinstance(kernel, AnyRawKernel):
        kernel = kernel.cpu
    if not isinstance(kernel, RawKernel):
        raise TypeError(f"kernel: expected a pagedattn_lab.RawKernel or "
                        f"pagedattn_lab.cpu.RawKernel, got {type(kernel).__name__}")
    raw = kernel._launch(grid, block, args, shared_mem, timeout=timeout, checked=True,
                         workers=workers, racecheck=racecheck, count=True)
    g = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
    b = tuple(block) if isinstance(block, (tuple, list)) else (block,)
    return AccessCounts(kernel.name, tuple(int(v) for v in g) + (1,) * (3 - len(g)),
                        tuple(int(v) for v in b) + (1,) * (3 - len(b)), *raw)


@dataclass(frozen=True)
class BufferCounts:
    """One array argument's totals. reads/writes are elements (bytes / itemsize)."""
    name: str
    itemsize: int
    reads: int
    writes: int
    read_bytes: int
    write_bytes: int
    read_accesses: int
    write_accesses: int
    read_requests: int
    read_sectors: int
    write_requests: int
    write_sectors: int

    @property
    def requests(self) -> int:
        return self.read_requests + self.write_requests

    @property
    def sectors(self) -> int:
        return self.read_sectors + self.write_sectors


def _buffer_counts(name: str, itemsize: int, row, reads: int, writes: int) -> BufferCounts:
    return BufferCounts(name, itemsize, reads, writes, int(row[1]), int(row[3]), int(row[0]),
                        int(row[2]), int(row[4]), int(row[5]), int(row[6]), int(row[7]))


class AccessCounts:
    """The counts of one launch. Per-thread arrays have shape [num_blocks, threads_per_block]:
    row = linear block id (x fastest: bx + gx * (by + gy * bz)), column = linear thread id
    in the block (tx + bx_dim * (ty + by_dim * tz)); `thread_counts(block, thread)` takes
    (x, y, z) tuples. See the module docstring for what each number means."""

    def __init__(self, kernel, grid, block, per_thread, per_buffer, params, arrays,
                 variables=()):
        self.kernel, self.grid, self.block = kernel, grid, block
        c = per_thread
        self.global_reads, self.global_read_bytes = c[..., 0], c[..., 1]
        self.global_writes, self.global_write_bytes = c[..., 2], c[..., 3]
        self.shared_reads, self.shared_read_bytes = c[..., 4], c[..., 5]
        self.shared_writes, self.shared_write_bytes = c[..., 6], c[..., 7]
        self.by_buffer: dict[str, BufferCounts] = {}
        for p, a, row in zip(params, arrays, per_buffer):
            size = max(a.itemsize, 1)
            self.by_buffer[p.name] = _buffer_counts(p.name, a.itemsize, row, int(row[1]) // size,
                                                    int(row[3]) // size)
        seen: Counter = Counter()
        for (name, shared), row in zip(variables, per_buffer[len(params) + 1:]):
            if shared:   # (a template's __shared__ array: counted as shared memory)
                continue
            key = f"__device__ {name}"
            seen[key] += 1   # two functions' `static int n`: the second is "(2)"
            key += f" ({seen[key]})" if seen[key] > 1 else ""
            self.by_buffer[key] = _buffer_counts(key, 0, row, int(row[0]), int(row[2]))
        sh = per_buffer[len(params)]
        self.shared_requests = int(sh[4] + sh[6])
        self.shared_wavefronts = int(sh[5] + sh[7])
        bufs = self.by_buffer.values()
        self.read_requests = sum(b.read_requests for b in bufs)
        self.read_sectors = sum(b.read_sectors for b in bufs)
        self.write_requests = sum(b.write_requests for b in bufs)
        self.write_sectors = sum(b.write_sectors for b in bufs)
        self.requests = self.read_requests + self.write_requests
        self.sectors = self.read_sectors + self.write_sectors

    @property
    def sectors_per_request(self) -> float:
        return self.sectors / self.requests if self.requests else 0.0

    @property
    def bytes_requested(self) -> int:
        """Global bytes the threads asked for (reads + writes)."""
        return int(self.global_read_bytes.sum() + self.global_write_bytes.sum())

    @property
    def sector_bytes(self) -> int:
        """Bytes in the distinct sectors of all requests (32 per sector)."""
        return 32 * self.sectors

    def thread_counts(self, block=(0, 0, 0), thread=(0, 0, 0)) -> dict:
        """The counts of one thread, by (x, y, z) block and thread (ints mean (x, 0, 0))."""
        b = (block,) if isinstance(block, (int, np.integer)) else tuple(block)
        t = (thread,) if isinstance(thread, (int, np.integer)) else tuple(thread)
        b, t = b + (0,) * (3 - len(b)), t + (0,) * (3 - len(t))
        gx, gy, _ = self.grid
        bx, by, _ = self.block
        row, col = b[0] + gx * (b[1] + gy * b[2]), t[0] + bx * (t[1] + by * t[2])
        names = ("global_reads", "global_writes", "shared_reads", "shared_writes")
        return {n: int(getattr(self, n)[row, col]) for n in names}

    def _stat_rows(self):
        rows = []
        for name in ("global_reads", "global_writes", "shared_reads", "shared_writes"):
            a = getattr(self, name)
            flat = int(np.argmax(a)) if a.size else 0
            row, col = divmod(flat, a.shape[1]) if a.size else (0, 0)
            where = (f"block {fmt3(xyz(row, self.grid))} thread {fmt3(xyz(col, self.block))}"
                     if a.size and a.max() else "")
            rows.append((name.replace("_", " "), int(a.sum()), float(a.mean()) if a.size else 0.0,
                         int(a.max()) if a.size else 0, where))
        return rows

    def summary(self) -> str:
        """A table a lesson can print."""
        nthreads = self.global_reads.size
        lines = [f"access counts of kernel {self.kernel!r}: grid {self.grid} x block "
                 f"{self.block} = {nthreads} threads",
                 f"  {'accesses':<14}{'total':>10}{'mean/thread':>13}{'max/thread':>12}  max at"]
        for name, total, mean, most, where in self._stat_rows():
            lines.append(f"  {name:<14}{total:>10}{mean:>13.2f}{most:>12}  {where}")
        if self.by_buffer:
            lines.append(f"  {'array':<14}{'elems read':>11}{'written':>10}{'requests':>10}"
                         f"{'sectors':>9}{'sectors/req':>12}")
            for b in self.by_buffer.values():
                spr = f"{b.sectors / b.requests:.2f}" if b.requests else "-"
                lines.append(f"  {b.name:<14}{b.reads:>11}{b.writes:>10}{b.requests:>10}"
                             f"{b.sectors:>9}{spr:>12}")
        if self.requests:
            lines.append(f"  global: {self.requests} warp requests touch {self.sectors} "
                         f"32-byte sectors ({self.sectors_per_request:.2f} per request): the "
                         f"threads asked for {self.bytes_requested} bytes, the sectors hold "
                         f"{self.sector_bytes}")
        if self.shared_requests:
            lines.append(f"  shared: {self.shared_requests} warp requests, "
                         f"{self.shared_wavefronts} wavefronts "
                         f"({self.shared_wavefronts / self.shared_requests:.2f} per request; "
                         f"1 = no bank conflicts)")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return (f"<AccessCounts {self.kernel!r}: {int(self.global_reads.sum())} global reads, "
                f"{int(self.global_writes.sum())} writes, {self.requests} requests, "
                f"{self.sectors} sectors>")
