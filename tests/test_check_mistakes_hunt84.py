"""Hunt 84: wrong answers the workbook checks accepted (each section says how).

tiled_launch (workbook 05) asks for the launch "as cupy.RawKernel takes them", and CuPy's
launch is `Function.__call__(self, tuple grid, tuple block, ...)`: an int or a list raises
TypeError there. The check read any dim3 spelling, so `block = (tile_q)` (the comma of a
one-element tuple forgotten: an int) and list grids passed.
"""
import numpy as np
import pytest

from tests.check_helpers import GoodAllocator, assert_caught


def _ceil(n, d):
    return -(-n // d)


@pytest.mark.parametrize("launch, phrase", [
    # the classic: (tile_q) is tile_q, an int
    (lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq), 8 * p * d), "needs its comma"),
    (lambda b, h, n, tq, p, d: ([_ceil(n, tq), h, b], (tq,), 8 * p * d),
     "the grid is a list"),
    (lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), [tq], 8 * p * d), "the block is a list"),
])
def test_a_launch_cupy_refuses_fails(launch, phrase):
    assert_caught("tiled_launch", launch, phrase)


# -- kv_scales (workbook 11): the spec's float32 scales ----------------------------------------
# The check compared the values in float64 and never looked at the dtype: float64 scales (the
# row widened for precision, or a list of Python floats) passed, though the spec asks for
# float32 and the kernels read k_scale through a float*.

def _scales(x, qmax, dtype):
    amax = np.abs(x.astype(np.float64)).max(axis=-1)
    return np.where(amax > 0, amax / qmax, 1.0).astype(dtype)


@pytest.mark.parametrize("scales", [
    lambda x, q: _scales(x, q, np.float64),
    lambda x, q: _scales(x, q, np.float64).tolist(),
])
def test_kv_scales_of_another_dtype_fail(scales):
    assert_caught("kv_scales", scales, "return float32 scales")


# -- allocator (workbook 01): a new pool's pages are free, count 0 ----------------------------
# Counts started at 1 passed the allocator check: allocate sets 1 anyway, and no case asked
# ref_count of a page never allocated, or freed one. The spec: ref_count is 0 for a free page,
# and freeing a free page is a double free (ValueError); with counts at 1, free([p]) of a page
# never handed out drops it to 0 and puts p in the free list a second time.

class CountsStartAtOne(GoodAllocator):
    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.refs = [1] * num_pages


class CountsStartAtOneButAsked(CountsStartAtOne):   # ref_count right, free still lets it in
    def ref_count(self, page):
        return 0 if page in self.free_list else self.refs[page]


def test_counts_that_start_at_one_fail_with_the_fresh_pool_hint():
    assert_caught("allocator", CountsStartAtOne, "start every count at 0",
                  not_phrases=["fork adds 1"])


def test_a_never_allocated_page_freed_without_error_fails():
    assert_caught("allocator", CountsStartAtOneButAsked, "never allocated")


# -- serve (workbook 07): no token asked for a request that is whole ----------------------------
# kv_for answered a call for tokens past a request's end with an empty block, which the cache
# appends as nothing: a decode that asks every running sequence for a token, a request with
# no new tokens included, passed, though a model would have made that token (and the sequence,
# one token long, would never finish).

def test_a_decode_that_asks_a_whole_request_for_a_token_fails():
    from tests.test_check_mistakes_system import serve_factory
    assert_caught("serve", serve_factory(unguarded=True), "already held all its 4 tokens")
