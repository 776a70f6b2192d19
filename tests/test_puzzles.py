"""Lesson 03's puzzle specs and pictures: the specs say what the prompts say, and the pictures
show exactly the threads a launch has (read off the figures' patches)."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pagedattn_lab import puzzles
from pagedattn_lab.viz import cuda_maps


def test_specs_against_loops():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(70), rng.standard_normal(70)
    assert np.allclose(puzzles.map_spec(a), [x + 10 for x in a])
    assert np.allclose(puzzles.guard_spec(a, b), [x + y for x, y in zip(a, b)])
    x, bias = rng.standard_normal((3, 5)), rng.standard_normal(5)
    assert np.allclose(puzzles.grid_2d_spec(x, bias),
                       [[x[r, c] + bias[c] for c in range(5)] for r in range(3)])
    q, k = rng.standard_normal(4), rng.standard_normal((6, 4))
    assert np.allclose(puzzles.shared_spec(q, k), [sum(q * row) for row in k])
    assert np.allclose(puzzles.warp_sum_spec(a), [a[w:w + 32].sum() for w in range(0, 70, 32)])
    assert np.allclose(puzzles.block_sum_spec(a, threads=16),
                       [a[s:s + 16].sum() for s in range(0, 70, 16)])


def test_show_prints_spec_launch_and_budget(capsys):
    puzzles.show("shared")
    out = capsys.readouterr().out
    assert "def shared_spec(q, k):" in out and "return k @ q" in out
    assert 'extern "C" __global__ void dot_scores(' in out
    assert "shared_mem = head_dim * 4" in out and "global reads <= head_dim" in out
    with pytest.raises(KeyError, match="puzzles: map, guard"):
        puzzles.show("scan")


def test_every_puzzle_kernel_name_is_checked():
    from pagedattn_lab.lessons import lesson
    assert len(puzzles.PUZZLES) == len(lesson("03").tasks) == 6


def _gids(fig, prefix):
    gids = [p.get_gid() for ax in fig.axes for p in ax.patches
            if p.get_gid() and p.get_gid().startswith(prefix)]
    plt.close(fig)
    return gids


@pytest.mark.parametrize("n, threads", [(20, 8), (32, 32), (1, 4)])
def test_launch_1d_has_one_cell_per_thread(n, threads):
    gids = _gids(cuda_maps.plot_launch_1d(n, threads), "thread:")
    blocks = math.ceil(n / threads)
    assert len(gids) == blocks * threads
    assert sum(g.endswith(":idle") for g in gids) == blocks * threads - n
    assert "thread:0:0:work" in gids and f"thread:{blocks - 1}:{threads - 1}:" in gids[-1]


def test_launch_2d_hatches_the_threads_outside_the_matrix():
    gids = _gids(cuda_maps.plot_launch_2d(5, 19, block=(8, 4)), "cell:")
    assert len(gids) == (3 * 8) * (2 * 4)
    assert sum(g.endswith(":idle") for g in gids) == 24 * 8 - 5 * 19
    assert "cell:4:18:2:1" in gids      # row 4, column 18: block (2, 1)


def test_butterfly_sends_every_lane_its_partner():
    gids = _gids(cuda_maps.plot_xor_butterfly(8), "xor:")
    assert len(gids) == 8 * 3
    assert "xor:4:5->1" in gids and "xor:1:6->7" in gids
