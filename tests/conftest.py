"""Shared test set-up: headless plotting, the `gpu` marker, seeded randomness, kernel caches
of a test's own, a rarer garbage collector."""
import gc
import shutil
import sys

import matplotlib
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from pagedattn_lab.backend import gpu_available, gpu_status

# A test process holds many long-lived objects (every collected test, Hypothesis's data, the
# modules of 370 test files), and CPython's default thresholds (700, 10, 10) walk them so often
# that its collector took 10-15% of a test file's time on the 2-core CI machine (perf, session
# 44). Young collections every 50,000 allocations instead of 700 free the same cycles later.
gc.set_threshold(50_000, 20, 20)

# Headless plots in this process only: an MPLBACKEND variable would leak into the notebook
# kernels nbval starts, and their figures would then never reach the cell outputs.
matplotlib.use("Agg")

# Property tests run on a 2-core CI machine: no wall-clock deadline and no too_slow health
# check (both time the host, not the code), a modest example count, and the same examples on
# every run (derandomize: drawn from each test's own source), so a run passes or fails for the
# code alone. Named "ci", this profile replaces Hypothesis's own, which derandomizes only where
# a CI variable is set; both profiles start from Hypothesis's defaults, not from whichever
# profile a CI variable loaded. `pytest --hypothesis-profile explore` draws fresh examples each
# run, to search further.
_TIMING_FREE = dict(parent=settings.get_profile("default"), deadline=None, max_examples=60,
                    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, print_blob=True, **_TIMING_FREE)
settings.register_profile("explore", derandomize=False, **_TIMING_FREE)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason=f"needs a GPU: {gpu_status()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: failures reproduce exactly."""
    return np.random.default_rng(20261126)


@pytest.fixture(autouse=True)
def _close_figures():
    """Every figure a test made closed after it (pyplot keeps them open, and memory grows)."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")   # (imported only where a test plots)
    if pyplot is not None:
        pyplot.close("all")


@pytest.fixture
def no_new_figures():
    """For calls that must be refused before drawing: none may leave a figure open."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - only the plotting tests need pyplot
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a refused call left a figure open"
    plt.close("all")


SEED_KERNEL = 'extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }\n'


@pytest.fixture(scope="session")
def _seed_cache(tmp_path_factory):
    """A CPU-executor cache holding what the first compile into an empty cache builds before
    its kernel: the runtime's objects and the precompiled shim, plain and instrumented (~5-10 s
    per empty cache on a 2-core CI machine), built once per test process."""
    from pagedattn_lab.cpu import RawKernel, count_accesses  # noqa: PLC0415
    from pagedattn_lab.cpu.errors import ExecutorUnavailableError  # noqa: PLC0415
    root = tmp_path_factory.mktemp("seed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGEDATTN_LAB_CACHE_DIR", str(root))
        mp.delenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", raising=False)
        kernel, x = RawKernel(SEED_KERNEL, "k"), np.zeros(1, np.float32)
        try:
            kernel((1,), (1,), (x,))
            count_accesses(kernel, (1,), (1,), (x,))
        except ExecutorUnavailableError:   # no compiler: each test's cache starts empty and
            pass                           # its own compiles say so, as before
    return root / "cpu"


@pytest.fixture
def own_kernel_cache(tmp_path, monkeypatch, _seed_cache):
    """A kernel cache of this test's own, as an empty one but for copies of the seed's runtime
    and precompiled shim: no other test's kernel is served from it, and nothing a kernel of
    this test writes there reaches another test (the seed is copied, never linked)."""
    root = tmp_path / "cache"
    if _seed_cache.is_dir():
        shutil.copytree(_seed_cache, root / "cpu", ignore=shutil.ignore_patterns("k-*"))
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(root))
    return root
