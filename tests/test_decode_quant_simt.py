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


@pytest.mark.parametrize("seed, old, new", [
    # the sequence read from the partition's column: the 1-token sequence is never computed
    # (its output stays poisoned)
    (1, "const int b = seq_lens[2 * blockIdx.x];", "const int b = seq_lens[2 * blockIdx.x + 1];"),
    (2, "seq_lens += 2 * gridDim.x;", "seq_lens += 2;"),
])
def test_the_work_list_of_four_head_blocks(monkeypatch, seed, old, new):
    """Compressed 4-head blocks run their partitions from a list, longest first (-DWORK_LIST):
    right with split sequences, and wrong when the kernel misreads the list (planted). Inputs
    of their own per case (seed): a case's correct partial results, left in memory, must not
    stand in for the slots another case's mistake never writes."""
    p = compressed_problem(np.random.default_rng(seed), [300, 129, 1, 77], "fp8_e4m3", "static",
                           num_heads=8, num_kv_heads=2)
    w = BatchDecodeWrapper().plan(p["tables"], p["lens"], 8, 2, 64, 16, "float16",
                                  kv_dtype="fp8_e4m3", num_splits=3)
    assert w.grid == (1 + 3 + 2 + 1, 2, 1)   # 300 and 129 in parts of 100 and 43
    # The planted mistake first: no correct partial results of these inputs are left in
    # memory that a plan's partial-result buffer could reuse for the slots it never writes.
    assert expanded_source("decode").count(old) == 1
    with monkeypatch.context() as m:
        with_options(m, (), old, new)
        with pytest.raises(AssertionError, match="vs dequantized|not written|beyond"):
            check_against_references(p, run_compressed(np, p, num_splits=3))
    check_against_references(p, run_compressed(np, p, num_splits=3))
