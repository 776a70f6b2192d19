"""bench.timing.host_time on the CPU, with a stand-in for CuPy's device synchronisation: the
wall time per call, and with batches the median over them (one busy moment of the host moves
one batch, not the figure)."""
import time
from types import SimpleNamespace

from pagedattn_lab.bench.timing import host_time

FAKE_CP = SimpleNamespace(cuda=SimpleNamespace(
    Device=lambda: SimpleNamespace(synchronize=lambda: None)))


def test_per_call_time_of_a_steady_call():
    per_call = host_time(FAKE_CP, lambda: time.sleep(0.002), calls=5, warmup=1)
    assert 0.002 <= per_call < 0.02


def test_one_slow_batch_does_not_move_the_median():
    calls = {"n": 0}

    def fn():   # the 3rd of 5 batches (after 1 warm-up call) is 50x slower
        calls["n"] += 1
        time.sleep(0.05 if 1 + 2 * 4 < calls["n"] <= 1 + 3 * 4 else 0.001)

    per_call = host_time(FAKE_CP, fn, calls=4, warmup=1, batches=5)
    assert calls["n"] == 1 + 5 * 4
    assert per_call < 0.01, f"median {per_call * 1e3:.1f} ms per call: the slow batch counted"
