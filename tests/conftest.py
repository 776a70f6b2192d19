"""Shared test set-up: headless plotting, the `gpu` marker, seeded randomness."""
import sys

import matplotlib
import numpy as np
import pytest
from hypothesis import settings

from pagedattn_lab.backend import gpu_available, gpu_status

# Headless plots in this process only: an MPLBACKEND variable would leak into the notebook
# kernels nbval starts, and their figures would then never reach the cell outputs.
matplotlib.use("Agg")

# Property tests run on a 2-core CI machine: no wall-clock deadline, a modest example count.
settings.register_profile("ci", deadline=None, max_examples=60)
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
