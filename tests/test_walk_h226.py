"""Workbook 00 walked as a learner, wrong answers first: mistakes whose check used to print
no hint, or a hint naming another mistake, now get a hint that names them.

reserved_waste and paged_waste with the wasted slots floor-divided by the slots (//), which
gives 0: reserved_waste printed no hint, paged_waste named rounding to 1 decimal place. Both
with the division upside down (1 - slots / used, a negative number): no hint.

Workbook 03: a warp sum whose shuffle mask leaves out lanes that call it (0x0000ffff) was told
that "lanes none wait elsewhere"; a block sum whose last, partly filled block stores no total
was told that a thread read a shared-memory slot no thread wrote; a warp sum by
__shfl_up_sync written by lane 0, or by __shfl_down_sync written by lane 31, got only the
generic hint (that lane's total is its own element doubled at every step).
"""
import pytest
from tests.check_helpers import assert_caught
from tests.test_check_mistakes import mutate, solution_source

ONRAMP = "03_cuda_onramp.ipynb"


def _pages(seq_lens, page_size):
    return -(-seq_lens // page_size)


def reserved_wasted_floor_divided(seq_lens, max_len):
    reserved = len(seq_lens) * max_len
    return (reserved - int(seq_lens.sum())) // reserved if reserved else 0.0


def reserved_upside_down(seq_lens, max_len):
    used = int(seq_lens.sum())
    return 1 - len(seq_lens) * max_len / used if used else 0.0


def paged_wasted_floor_divided(seq_lens, page_size):
    allocated = int(_pages(seq_lens, page_size).sum()) * page_size
    return (allocated - int(seq_lens.sum())) // allocated if allocated else 0.0


def paged_upside_down(seq_lens, page_size):
    used = int(seq_lens.sum())
    return 1 - int(_pages(seq_lens, page_size).sum()) * page_size / used if used else 0.0


def test_reserved_waste_floor_divided_is_named():
    assert_caught("reserved_waste", reserved_wasted_floor_divided, "use true division")


def test_paged_waste_floor_divided_is_named_not_rounding():
    assert_caught("paged_waste", paged_wasted_floor_divided, "use true division",
                  not_phrases=["decimal place"])


def test_reserved_waste_upside_down_is_named():
    assert_caught("reserved_waste", reserved_upside_down, "upside down")


def test_paged_waste_upside_down_is_named():
    assert_caught("paged_waste", paged_upside_down, "upside down")


def test_warp_sum_mask_missing_calling_lanes_is_named():
    source = mutate(solution_source(ONRAMP, "SOURCE_WARP_SUM"),
                    [("0xffffffffu", "0x0000ffffu")])
    assert_caught("puzzle_warp_sum", source, "leaves out lanes 16-31", device="cpu",
                  not_phrases=["wait elsewhere", "lanes none"])


def test_block_sum_last_partial_block_unstored_is_named():
    source = mutate(solution_source(ONRAMP, "SOURCE_BLOCK_SUM"),
                    [("if (warp == 0) {", "if (warp == 0 && (blockIdx.x + 1) * 256 <= n) {")])
    assert_caught("puzzle_block_sum", source, "never stored", device="cpu",
                  not_phrases=["shared-memory slot that no thread wrote"])


@pytest.mark.parametrize("edits", [
    [("__shfl_xor_sync", "__shfl_up_sync")],
    [("__shfl_xor_sync", "__shfl_down_sync"), ("i % 32 == 0", "i % 32 == 31")],
], ids=["up, lane 0 writes", "down, lane 31 writes"])
def test_warp_sum_written_by_a_lane_without_the_total_is_named(edits):
    source = mutate(solution_source(ONRAMP, "SOURCE_WARP_SUM"), edits)
    assert_caught("puzzle_warp_sum", source, "32 times", device="cpu",
                  not_phrases=["compare your kernel with the spec"])
