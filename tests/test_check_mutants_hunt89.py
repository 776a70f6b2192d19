"""Hunt 89: one-token mutants of the solution kernels that the checks accepted.

Each kernel here is a solution notebook's source with one token changed (an operator, a
literal, a variable), and is wrong on inputs the check did not try. The test asserts that the
check now fails it on the CPU executor. Equivalent mutants (the same function on every valid
input) are listed in the hunt's report, not here.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.cpu.compiler import compiler
from pagedattn_lab.cpu.errors import KernelFault
from tests.check_helpers import assert_caught, mutate, solution_source

ONRAMP = "03_cuda_onramp.ipynb"

# warp_sum: right while every warp index stays below 31 (n <= 300 was the largest case)
WARP_SUM = [
    # i / 31 is i / 32 for i < 992: warp 31's total lands on out[32]
    ("warp index i / 31", [("int warp = i / 32;", "int warp = i / 31;")], "warp"),
    # a multiple of 33 falls in each of warps 0-31, none in warp 32 (1024-1055)
    ("lane 0 found as i % 33", [("i % 32 == 0", "i % 33 == 0")], "warp"),
    # warp * 33 < n drops a last warp that holds w or fewer elements (w its index)
    ("warp guard warp * 33", [("warp * 32 < n", "warp * 33 < n")], "warp"),
]


@pytest.mark.parametrize("mistake", WARP_SUM, ids=[m[0] for m in WARP_SUM])
def test_warp_sum_mutant_is_caught(mistake):
    _, edits, phrase = mistake
    assert_caught("puzzle_warp_sum", mutate(solution_source(ONRAMP, "SOURCE_WARP_SUM"), edits),
                  phrase, device="cpu")


# block_sum: warp 0 reading warp_totals[lane] for lanes 8-31 reads past the 8-float array; the
# memory after the static shared variables held zeros, so the sum came out right
BLOCK_SUM = [
    ("no lane guard on the totals", [("lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f",
                                      "warp_totals[lane]")]),
    ("lane guard <=", [("lane < blockDim.x / 32", "lane <= blockDim.x / 32")]),
    ("lane guard on the warp index", [("lane < blockDim.x / 32", "warp < blockDim.x / 32")]),
]


_PAST_STATIC = r"""
extern "C" __global__ void past_static(float* out)
{
    __shared__ float totals[8];
    totals[threadIdx.x % 8] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = totals[threadIdx.x];   // threads 8-31 read past the array
}
"""


def test_a_read_past_the_last_static_shared_array_is_named():
    """Indexed on the array itself, the compiler's bounds check stops the thread (hunt 102)."""
    out = np.zeros(32, np.float32)
    with pytest.raises(KernelFault,
                       match=r"index \d+ of __shared__ array `totals\[threadIdx\.x\]`"):
        RawKernel(_PAST_STATIC, "past_static")((1,), (32,), (out,))


def test_a_read_through_a_pointer_past_the_last_static_shared_array_is_caught():
    """Through a pointer the index check cannot see the array's size. GCC's object-size check
    (hunt 140) can: the read is reported with the array's name. Under Clang, which goes
    without it, the poisoned guard after the static section makes the read NaN."""
    source = _PAST_STATIC.replace("out[threadIdx.x] = totals[threadIdx.x];",
                                  "const float *p = totals; out[threadIdx.x] = p[threadIdx.x];")
    out = np.zeros(32, np.float32)
    if compiler()[2]:   # Clang
        RawKernel(source, "past_static")((1,), (32,), (out,))
        assert (out[:8] == 1).all() and np.isnan(out[8:]).all(), out
        return
    with pytest.raises(KernelFault, match=r"out-of-bounds read .* past the end of static "
                                          r"__shared__ array `totals`"):
        RawKernel(source, "past_static")((1,), (32,), (out,))


@pytest.mark.parametrize("mistake", BLOCK_SUM, ids=[m[0] for m in BLOCK_SUM])
def test_block_sum_read_past_the_totals_is_caught(mistake):
    _, edits = mistake
    assert_caught("puzzle_block_sum", mutate(solution_source(ONRAMP, "SOURCE_BLOCK_SUM"), edits),
                  "past the last element (7)", device="cpu")


def test_quantize_write_amax_that_skips_a_dimension_is_caught():
    """d += 33 in the max |x| loop skips d = 32 (and 65): right while no row's largest
    magnitude sits there."""
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_WRITE"),
                    [("for (int d = lane; d < head_dim; d += 32) amax",
                      "for (int d = lane; d < head_dim; d += 33) amax")])
    assert_caught("quantize_write", source, "max |x| over the row", device="cpu")


def test_tc_tile_scores_copy_loop_one_row_short_is_named():
    """i < 15 * head_dim leaves row 15 of both tiles unwritten: with one head per group and
    head_dim 16 the scores are those of a k0 step past the tiles, and the hint named only
    that mistake."""
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("i < 16 * head_dim", "i < 15 * head_dim")])
    assert_caught("tc_tile_scores", source, "i < 16 * head_dim", device="cpu")


# prefill_tiled: a page count one too high (ceil by (n + p) / p, or p <= pages) runs an empty
# extra page step, harmless where the table row has a padding entry after the sequence's pages
# (every case had one) and a read past block_tables where the last sequence fills its row
TILED_PAGES = [
    ("ceil as (n + p) / p", [("(keys_needed + page_size - 1) / page_size",
                              "(keys_needed + page_size) / page_size")]),
    ("pages loop p <= pages", [("for (int p = 0; p < pages; ++p)",
                                "for (int p = 0; p <= pages; ++p)")]),
]


@pytest.mark.parametrize("mistake", TILED_PAGES, ids=[m[0] for m in TILED_PAGES])
def test_tiled_page_count_one_too_high_is_caught(mistake):
    _, edits = mistake
    assert_caught("tiled_kernel", mutate(solution_source("05_tiled_kernel.ipynb",
                                                         "SOURCE_TILED"), edits),
                  "block_tables", device="cpu")


# decode_partition: a write past part_out or part_ml got the hint for a read of partitions
# that do not exist ("count the partitions you read")
PARTITION_WRITES = [
    ("dims past head_dim stored", [("if (d < head_dim) part_out[", "part_out[")],
     "one per dim d < head_dim"),
    ("l stored at slot * 3 + 1", [("part_ml[slot_out * 2 + 1]", "part_ml[slot_out * 3 + 1]")],
     "l at slot * 2 + 1"),
]


@pytest.mark.parametrize("mistake", PARTITION_WRITES, ids=[m[0] for m in PARTITION_WRITES])
def test_partition_write_past_its_states_gets_a_write_hint(mistake):
    _, edits, phrase = mistake
    assert_caught("decode_partition", mutate(solution_source("06_decode_kernel.ipynb",
                                                             "SOURCE_PARTITION"), edits),
                  phrase, not_phrases=["count the partitions you read"], device="cpu")
