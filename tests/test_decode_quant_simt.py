"""The SIMT decode's blocks of 4+ query heads over compressed pages (kernels/decode.cu with
decode_half2*.cuh): how the plan cuts and orders their partitions. The kernel's results, its
variants and its planted mistakes are checked in tests/test_decode_quant.py."""
import numpy as np
import pytest

from pagedattn_lab import decode_plan
from pagedattn_lab.kernels import expanded_source
from pagedattn_lab.wrappers import BatchDecodeWrapper
from tests.test_decode_quant import (check_against_references, compressed_problem,
                                     run_compressed, with_options)


def test_four_head_blocks_over_codes_take_longer_partitions():
    """decode_plan.COMPRESSED_SIMT_PART_LEN for 4+ heads per block over codes (their per-block
    work weighs more), PART_LEN otherwise."""
    lens = np.full(64, 3000, np.int32)
    tables = np.arange(64 * 188, dtype=np.int32).reshape(64, 188)
    plan = lambda heads, **kw: BatchDecodeWrapper().plan(  # noqa: E731
        tables, lens, heads, 8, 128, 16, "float16", kernel="simt", **kw)
    assert plan(32, kv_dtype="fp8_e4m3").part_len == decode_plan.COMPRESSED_SIMT_PART_LEN
    assert plan(32).part_len == decode_plan.PART_LEN
    assert plan(8, kv_dtype="int8").part_len == decode_plan.PART_LEN
    assert decode_plan.COMPRESSED_SIMT_PART_LEN != decode_plan.PART_LEN


@pytest.mark.parametrize("old, new", [
    ("const int part = seq_lens[2 * blockIdx.x + 1];", "const int part = 0;"),
    ("seq_lens += 2 * gridDim.x;", "seq_lens += 2;"),
])
def test_the_work_list_of_four_head_blocks(rng, monkeypatch, old, new):
    """Compressed 4-head blocks run their partitions from a list, longest first (-DWORK_LIST):
    right with split sequences, and wrong when the kernel misreads the list (planted)."""
    p = compressed_problem(rng, [300, 129, 1, 77], "fp8_e4m3", "static", num_heads=8,
                           num_kv_heads=2)
    w = BatchDecodeWrapper().plan(p["tables"], p["lens"], 8, 2, 64, 16, "float16",
                                  kv_dtype="fp8_e4m3", num_splits=3)
    assert w.grid == (1 + 3 + 2 + 1, 2, 1)   # 300 and 129 in parts of 100 and 43
    check_against_references(p, run_compressed(np, p, num_splits=3))
    assert expanded_source("decode").count(old) == 1
    with_options(monkeypatch, (), old, new)
    # new data: the partial results of the run above, left in memory a new plan may reuse,
    # must not stand in for the partitions the mistake never computes
    p = compressed_problem(rng, [300, 129, 1, 77], "fp8_e4m3", "static", num_heads=8,
                           num_kv_heads=2)
    with pytest.raises(AssertionError, match="vs dequantized|not written|beyond"):
        check_against_references(p, run_compressed(np, p, num_splits=3))
