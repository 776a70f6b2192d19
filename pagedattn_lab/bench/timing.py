"""Timing on the GPU: CUDA events around each repetition, the L2 cache flushed in between,
warm-up first, the median reported.

Each repetition is: flush the L2 (a 64 MB write), then a one-thread "spin" kernel that keeps
the GPU busy for about half a millisecond, then start event, the work, end event. The spin
covers the host's time to issue the work (Python argument checks, PyTorch dispatch,
torch.compile guards), so the events measure the GPU's time for the work itself, the same
way for our kernels and for every baseline. `time(..., hide_launch=False)` leaves it out.

The flush by a write is what Triton's `do_bench` and NVBench do, and the benches' default (what
the figures of benchmarks/STARTING_POINT.md and every earlier result used). It leaves the L2
full of dirty lines, whose write-back the timed work pays as it evicts them: 7-10 us on every
decode row on the H200, a contiguous read included (benchmarks/NOTES.md, "The flush's
write-back (session 12)").
`Timer(cp, l2_flush="read")` flushes by reading twice the L2's size instead: the inputs are
evicted all the same, and dirty lines are written back during the flush, not the timing.

CuPy launches go to CuPy's current stream, PyTorch's to its current stream; the benchmark
leaves both on the legacy default stream, so one pair of events brackets either.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..backend import cupy_module, gpu_available
from ..validate_kinds import is_one_of

L2_FLUSH_BYTES = 64 << 20    # more than the H100's and H200's 50-60 MB of L2
L2_FLUSH_WHAT = {"write": "64 MB written", "read": "twice the L2 read"}
L2_FLUSH_MODES = tuple(L2_FLUSH_WHAT)
SPIN_CYCLES = 1_000_000      # about 0.5 ms at 2 GHz: longer than issuing any of the work

_TIMER_SOURCE = r"""
extern "C" __global__ void spin(long long cycles)
{
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
// every 16 bytes of a[0, n16) read once; the loads are kept by a fold stored only on a value
// that all-zero data cannot give
extern "C" __global__ void read_all(const uint4* a, long long n16, unsigned* sink)
{
    unsigned acc = 0;
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n16;
         j += (long long)gridDim.x * blockDim.x) {
        const uint4 v = a[j];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;
}
"""


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    reps: int

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "reps": self.reps}


class Timer:
    def __init__(self, cp, l2_flush: str = "write"):
        if not is_one_of(l2_flush, L2_FLUSH_MODES):
            raise ValueError(f"l2_flush: expected one of {L2_FLUSH_MODES}, got {l2_flush!r}")
        self.cp, self.l2_flush = cp, l2_flush
        if l2_flush == "write":
            self._flush_buf = cp.empty(L2_FLUSH_BYTES // 4, dtype=cp.float32)
        else:   # (zeros: the fold in read_all never stores)
            l2_bytes = cp.cuda.Device().attributes["L2CacheSize"]
            self._flush_buf = cp.zeros(max(2 * l2_bytes, L2_FLUSH_BYTES) // 4, dtype=cp.float32)
            self._read_all = cp.RawKernel(_TIMER_SOURCE, "read_all")
            self._sink = cp.zeros(1, dtype=cp.uint32)
            self._read_grid = 4 * cp.cuda.Device().attributes["MultiProcessorCount"]
        self._spin = cp.RawKernel(_TIMER_SOURCE, "spin")

    def warm_up(self, seconds: float = 1.0):
        """Keep the GPU busy for a while so that its clocks are up before the first timing."""
        src = self.cp.ones(256 << 20, dtype=self.cp.float32)
        dst = self.cp.empty_like(src)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(20):
                self.cp.copyto(dst, src)
            self.cp.cuda.Device().synchronize()

    def flush_l2(self):
        """Overwrite (or read) more than the L2 holds, so the next run reads its inputs from
        memory."""
        if self.l2_flush == "write":
            self._flush_buf.fill(0)
        else:
            self._read_all((self._read_grid,), (512,),
                           (self._flush_buf, np.int64(self._flush_buf.nbytes // 16), self._sink))

    def time(self, fn, reps: int = 30, warmup: int = 3, flush: bool = True,
             hide_launch: bool = True) -> Timing:
        cp = self.cp
        for _ in range(warmup):
            fn()
        cp.cuda.Device().synchronize()
        times = []
        start, end = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(reps):
            if flush:
                self.flush_l2()
            if hide_launch:
                self._spin((1,), (1,), (np.int64(SPIN_CYCLES),))
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return Timing(statistics.median(times), min(times), max(times), reps)


def add_l2_flush_argument(parser) -> None:
    """--l2-flush for a benchmark's command line (Timer's l2_flush)."""
    parser.add_argument("--l2-flush", choices=L2_FLUSH_MODES, default="write",
                        help="flush the L2 before each repetition by a 64 MB write (default: "
                             "as Triton's do_bench and earlier results) or by reading twice "
                             "the L2 (no dirty lines left for the timed work to write back)")


def copy_bandwidth(cp, timer: Timer, nbytes: int = 1 << 30, reps: int = 10,
                   trials: int = 3) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written: the
    best of `trials` medians of `reps` copies. The rate is the denominator of every "% of
    copy", so a trial slowed by something else (one measured 2.53 TB/s on a 4.1 TB/s H200)
    must not inflate the shares; the best trial only makes them smaller. The copy's launch is
    hidden behind the spin kernel like every kernel's: on a busy host the time from the start
    event to the copy's launch read as a slower copy (3.69 TB/s beside a JIT build, 4.09 in
    the next process). No L2 flush, with either `Timer` flush: 1 GiB each way dwarfs the L2's
    60 MB, and each copy starts on the dirty lines of the one before, as after a write flush
    (the rate beside --l2-flush read, 4.26 TB/s in session 22, was within 0.5% of the write
    runs')."""
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    best_ms = min(timer.time(lambda: cp.copyto(dst, src), reps=reps, warmup=2,
                             flush=False).median_ms for _ in range(trials))
    return 2 * nbytes / (best_ms * 1e-3)


def warm_timer(cp, l2_flush: str = "write") -> tuple[Timer, float]:
    """A Timer with the GPU's clocks up, and the run's copy rate (copy_bandwidth): every
    bench's first steps, in this order (a copy timed before the warm-up reads idle clocks)."""
    timer = Timer(cp, l2_flush=l2_flush)
    timer.warm_up()
    return timer, copy_bandwidth(cp, timer)


def host_time(cp, fn, calls: int = 100, warmup: int = 5, batches: int = 1) -> float:
    """Seconds of wall time per call of `fn`, `calls` calls back to back (no spin kernel):
    for a call that only launches, the host's time per call when the GPU keeps up. With
    `batches` > 1 the median over that many batches of `calls` (one busy moment of the
    host moves one batch, not the result)."""
    for _ in range(warmup):
        fn()
    per_call = []
    for _ in range(batches):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        cp.cuda.Device().synchronize()
        per_call.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_call)


def call_ms(fn, reps: int = 3, warmup: int = 1) -> float:
    """Milliseconds per call of `fn`, the median of `reps`, on whichever device runs it: with a
    GPU, CUDA events and the L2 flushed (`Timer`); without, the wall clock, as the CPU
    executor's launches return only when done. For a lesson's "how long here", not a bench."""
    if gpu_available():
        return Timer(cupy_module()).time(fn, reps=reps, warmup=warmup).median_ms
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
