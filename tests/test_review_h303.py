"""A review of helpers 300 and 301's hints (helper 303): what the messages say must hold for
the task and case they are given on.

1. merge_partitions (NumPy, workbook 06) shares decode_merge's merge hints: the weight
   m_p * exp(m_p - m) is named there without the kernel's part_ml layout (ml[2 * p]), which
   that task has none of; decode_merge's kernel keeps it.
2. quantize_write's constant-factor hint on a static-scale case (per_token = 0, one scale
   per head) does not claim each row has its own scale.
3. block_sum's every-total-in-out[0] hint lists the indexes that are 0 in the storing thread
   as indexes (out[threadIdx.x] or out[warp]), not spliced into one bracket.
"""
from tests.check_helpers import assert_caught, kernel_mutant, run_check, solution_of

_M_FOR_L = "the partition's max m_p where its sum l_p belongs"


def test_merge_partitions_m_for_l_names_no_kernel_layout():
    impl = solution_of("06", "merge_partitions", [("w = l * np.exp(", "w = m * np.exp(")])
    assert_caught("merge_partitions", impl, _M_FOR_L, not_phrases=["ml[", "in the kernel"])


def test_decode_merge_m_for_l_names_the_kernel_layout():
    impl = kernel_mutant("decode_merge", [("float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);",
                                           "float w = ml[2 * p] * expf(ml[2 * p] - m_all);")])
    assert_caught("decode_merge", impl, _M_FOR_L + ": w_p = l_p * exp(m_p - m) (in the kernel "
                  "l_p is ml[2 * p + 1], m_p ml[2 * p])")


def test_constant_factor_on_static_scales_claims_no_per_row_scale():
    impl = kernel_mutant("quantize_write", [("rintf(row[d] / scale)", "rintf(row[d] * 32)")])
    result, printed = run_check("quantize_write", impl)
    static = next(c for c in result.cases if c.name.startswith("static scales, exact halves"))
    assert not static.passed and "every code is rintf(x * 32)" in static.hint, printed
    assert "each row has its own scale" not in static.hint, printed
    assert "each head has its own scale when per_token = 0" in static.hint, printed


def test_all_in_first_lists_the_zero_indexes_plainly():
    impl = kernel_mutant("puzzle_block_sum", [("out[blockIdx.x] = v", "out[0] = v")])
    assert_caught("puzzle_block_sum", impl, "out[blockIdx.x], not out[0], nor out[threadIdx.x] "
                  "or out[warp], whose index is 0 in every thread that stores")
