"""A warp-wide call (WMMA) made by part of a warp while the rest of the warp waits at a call that
is not warp-wide (a __syncwarp or a shuffle after the if): the CPU executor stopped such a warp
only when the last lane to arrive was at the WMMA call, so with the WMMA call first and a
__syncwarp after it, the warp went on and the lanes read fragments never published ("read
through a null pointer"). Now either order stops the launch and names the other call; right
kernels that reach one WMMA call from an inlined helper, a loop or a macro still run.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.cpu.errors import WarpSyncError
from tests.check_helpers import assert_caught, kernel_mutant

SOURCE = r'''
#include <mma.h>
#include <cuda_fp16.h>
using namespace nvcuda;
#define STEP(fa, fb, acc, pa, pb) \
    wmma::load_matrix_sync(fa, pa, 16); \
    wmma::load_matrix_sync(fb, pb, 16); \
    wmma::mma_sync(acc, fa, fb, acc)
extern "C" __global__ void k(const __half* a, const __half* b, float* d, int mode)
{
    int lane = threadIdx.x & 31;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    STEP(fa, fb, acc, a, b);
    if (mode == 0) {   // right: a macro in a loop, warp-uniform branches
        for (int i = 0; i < 2; ++i) { STEP(fa, fb, acc, a, b); }
        if ((threadIdx.x >> 5) == 0) { STEP(fa, fb, acc, a, b); } else { STEP(fa, fb, acc, a, b); }
    } else if (mode == 1) {
        if (lane < 16) wmma::mma_sync(acc, fa, fb, acc);
        __syncwarp();
    } else if (mode == 2) {
        if (lane < 16) wmma::mma_sync(acc, fa, fb, acc);
        acc.x[0] += __shfl_sync(0xffffffffu, acc.x[0], 0);
    }
    wmma::store_matrix_sync(d + 256 * (threadIdx.x >> 5), acc, 16, wmma::mem_row_major);
}
'''


def _launch(mode):
    rng = np.random.default_rng(294)
    a, b = (rng.standard_normal((16, 16)).astype(np.float16) for _ in range(2))
    d = np.zeros((2, 16, 16), np.float32)
    RawKernel(SOURCE, "k", filename="review_h294.cu")(1, 64, (a, b, d, np.int32(mode)))
    return a.astype(np.float64) @ b.astype(np.float64), d


def test_a_right_kernel_reaching_wmma_through_macros_loops_and_branches_runs():
    product, d = _launch(0)
    np.testing.assert_allclose(d, np.broadcast_to(4 * product, d.shape), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode, call", [(1, "__syncwarp"), (2, "__shfl_sync")])
def test_wmma_skipped_by_half_the_warp_before_another_call_is_stopped(mode, call):
    with pytest.raises(WarpSyncError) as info:
        _launch(mode)
    assert info.value.apart_lanes == list(range(16))
    assert f"{call} at line" in str(info.value), info.value
    assert "lanes 0..15 wait at wmma::mma_sync" in str(info.value), info.value


def test_the_tile_checks_hint_names_the_wmma_call_half_the_warp_skipped():
    source = kernel_mutant("tc_tile_scores", [(
        "        wmma::mma_sync(s, a, b, s);\n    }",
        "        if (lane < 16) wmma::mma_sync(s, a, b, s);\n        __syncwarp();\n    }")])
    assert_caught("tc_tile_scores", source,
                  "lanes 0-15 were at a WMMA call (the message names it) when the others "
                  "reached this __syncwarp()", not_phrases=["null pointer"])
