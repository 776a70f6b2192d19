"""bench.timing on the CPU, with stand-ins for CuPy: host_time's wall time per call, and with
batches the median over them (one busy moment of the host moves one batch, not the figure);
Timer's two L2 flushes (a write, or a read of twice the L2 that leaves no dirty lines);
warm_timer's order (the copy rate timed on warm clocks); call_ms, the lessons' timer, on the
CPU (the wall clock, the median: a warm-up call and one slow call do not count).

The timed calls advance a fake clock rather than sleep: a sleep of 1-5 ms on a loaded 2-core
machine wakes late by as much (10 ms a call beside four busy processes), and the bounds here
are about the arithmetic (per call, median, warm-up left out), not the host's scheduler."""
from types import SimpleNamespace

import pytest

from pagedattn_lab.bench import timing
from pagedattn_lab.bench.timing import Timer, call_ms, host_time

FAKE_CP = SimpleNamespace(cuda=SimpleNamespace(
    Device=lambda: SimpleNamespace(synchronize=lambda: None)))


class FakeClock:
    """bench.timing's perf_counter, moved on only by the calls it times."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def test_per_call_time_of_a_steady_call(clock):
    spent = iter([0.5] + [0.002] * 5)   # a slow warm-up call (a build), then steady ones
    per_call = host_time(FAKE_CP, lambda: clock.spend(next(spent)), calls=5, warmup=1)
    assert per_call == pytest.approx(0.002)


def test_one_slow_batch_does_not_move_the_median(clock):
    calls = {"n": 0}

    def fn():   # the 3rd of 5 batches (after 1 warm-up call) is 50x slower
        calls["n"] += 1
        clock.spend(0.05 if 1 + 2 * 4 < calls["n"] <= 1 + 3 * 4 else 0.001)

    per_call = host_time(FAKE_CP, fn, calls=4, warmup=1, batches=5)
    assert calls["n"] == 1 + 5 * 4
    assert per_call == pytest.approx(0.001), \
        f"median {per_call * 1e3:.1f} ms per call: the slow batch counted"


class _FakeArray:
    def __init__(self, n, dtype):
        self.nbytes, self.filled = n * 4, []   # (float32 / uint32: 4 bytes an element)

    def fill(self, value):
        self.filled.append(value)


def _fake_cupy(launches, l2_bytes=60 << 20, sms=132):
    def raw_kernel(source, name):
        return lambda grid, block, args: launches.append((name, grid, block, args))
    device = SimpleNamespace(attributes={"L2CacheSize": l2_bytes, "MultiProcessorCount": sms},
                             synchronize=lambda: None)
    return SimpleNamespace(empty=_FakeArray, zeros=_FakeArray, float32="float32",
                           uint32="uint32", RawKernel=raw_kernel,
                           cuda=SimpleNamespace(Device=lambda: device))


def test_l2_flush_by_a_write_fills_the_buffer():
    launches = []
    timer = Timer(_fake_cupy(launches))
    timer.flush_l2()
    assert timer._flush_buf.filled == [0] and launches == []


def test_l2_flush_by_a_read_reads_twice_the_l2_and_writes_nothing():
    launches = []
    timer = Timer(_fake_cupy(launches, l2_bytes=60 << 20), l2_flush="read")
    timer.flush_l2()
    assert timer._flush_buf.filled == []
    (name, grid, block, (buf, n16, sink)), = launches
    assert name == "read_all" and buf is timer._flush_buf
    assert int(n16) * 16 == buf.nbytes >= 2 * (60 << 20), "a read flush must evict the whole L2"


def test_unknown_l2_flush_is_refused_by_name():
    with pytest.raises(ValueError, match="l2_flush.*'clean'"):
        Timer(_fake_cupy([]), l2_flush="clean")


def test_warm_timer_times_the_copy_after_the_warm_up(monkeypatch):
    """A copy timed on idle clocks reads slow and inflates every "% of copy" after it."""
    steps = []
    monkeypatch.setattr(Timer, "warm_up", lambda self: steps.append("warm_up"))
    monkeypatch.setattr(timing, "copy_bandwidth",
                        lambda cp, timer: steps.append(("copy", timer.l2_flush)) or 4.2e12)
    timer, rate = timing.warm_timer(_fake_cupy([]), "read")
    assert steps == ["warm_up", ("copy", "read")]
    assert isinstance(timer, Timer) and timer.l2_flush == "read" and rate == 4.2e12


def test_call_ms_on_the_cpu_is_the_median_of_the_wall_clock(monkeypatch, clock):
    monkeypatch.setattr(timing, "gpu_available", lambda: False)
    spent = iter([0.2, 0.005, 0.2, 0.005])   # a slow first call (a build), then one slow call

    ms = call_ms(lambda: clock.spend(next(spent)), reps=3, warmup=1)
    assert ms == pytest.approx(5), f"{ms:.1f} ms: the warm-up or the slow call counted (a mean: 70)"


def test_call_ms_on_a_gpu_is_the_timers_median(monkeypatch):
    """With a GPU, CUDA events and the L2 flushed (Timer), with call_ms' reps and warm-up."""
    asked = []
    monkeypatch.setattr(timing, "gpu_available", lambda: True)
    monkeypatch.setattr(timing, "cupy_module", lambda: _fake_cupy([]))
    monkeypatch.setattr(Timer, "time", lambda self, fn, reps, warmup: asked.append(
        (fn, reps, warmup)) or timing.Timing(1.5, 1.0, 2.0, reps))

    def fn():
        pass
    assert call_ms(fn, reps=7, warmup=2) == 1.5
    assert asked == [(fn, 7, 2)]
