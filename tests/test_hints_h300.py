"""Mistakes that got only a general hint where the evidence names them (helper 300), each
named now, while other wrong answers of the same task keep their own hints:

1. decode_merge (and merge_partitions): the weight m_p * exp(m_p - m) (m read where l
   belongs) or l_p * m_p * exp(m_p - m); the values of every partition read from slot 0
   (part_out's + p missing), which on the case where sequence 0 has one partition gives the
   rows of a count from seq_lens[0], so that case names both.
2. quantize_write: codes rintf(x * 32) (or any constant) for rintf(x / scale); where the
   constant is 1 / k_scale[0] (the static cases) it names k_scale[0] for every head too.
3. block_sum (and warp_sum): every total stored in out[0].
"""
import pytest

from tests.check_helpers import as_params, assert_caught, kernel_mutant, run_check, \
    solution_of

_WEIGHT = "float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);"
_VALUES = "part_out[(row * max_parts + p) * head_dim + d]"
_CODE = "rintf(row[d] / scale)"
_SLOT_0 = "every partition's values were read from partition 0's slot"
_CONSTANT = "one factor for every row and head"
_FIRST = "total to out[0]"


def _merge(old, new):
    return kernel_mutant("decode_merge", [(old, new)])


def _codes(new):
    return kernel_mutant("quantize_write", [(_CODE, new)])


MISTAKES = [
    ("decode_merge", _merge(_WEIGHT, "float w = ml[2 * p] * expf(ml[2 * p] - m_all);"),
     "the partition's max m_p where its sum l_p belongs", ["out[b, h] = sum_p"]),
    ("decode_merge", _merge(_WEIGHT, "float w = ml[2 * p + 1] * ml[2 * p] * "
                                     "expf(ml[2 * p] - m_all);"),
     "the partition's max m_p is multiplied into its weight", ["out[b, h] = sum_p"]),
    ("decode_merge", _merge(_VALUES, "part_out[(row * max_parts) * head_dim + d]"), _SLOT_0,
     ["out[b, h] = sum_p"]),
    ("merge_partitions", solution_of("06", "merge_partitions", [(
        "w = l * np.exp(", "w = m * np.exp(")]), "where its sum l_p belongs"),
    # other wrong merges keep their own hints
    ("decode_merge", _merge(_WEIGHT, "float w = expf(ml[2 * p] - m_all);"),
     "not exp(m_p - m) alone", [_SLOT_0, "multiplied into its weight", "where its sum l_p"]),
    ("decode_merge", _merge(_WEIGHT, "float w = ml[2 * p + 1] * expf(m_all - ml[2 * p]);"),
     "the exponent is reversed", [_SLOT_0, "multiplied into its weight", "where its sum l_p"]),
    ("quantize_write", _codes("rintf(row[d] * 32)"), "every code is rintf(x * 32)"),
    ("quantize_write", _codes("rintf(row[d] * 127.0f)"), "every code is rintf(x * 127)"),
    ("quantize_write", _codes("rintf(row[d] * scale)"), "not x * scale", [_CONSTANT]),
    ("quantize_write", _codes("rintf(row[d])"), "these codes are rintf(x) itself", [_CONSTANT]),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "out[blockIdx.x] = v", "out[0] = v")]), "every block's " + _FIRST),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "out[blockIdx.x] = v", "out[threadIdx.x] = v")]), "out[blockIdx.x], not out[0]"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [("out[warp] = v", "out[0] = v")]),
     "every warp's " + _FIRST),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "if (lane == 0) out[blockIdx.x]", "if (lane == 0 && blockIdx.x == 0) out[blockIdx.x]")]),
     "never stored a total", [_FIRST]),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "int i = blockIdx.x * blockDim.x", "int i = 0 * blockDim.x")]),
     "every block summed block 0's elements", [_FIRST]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def _hint(task, impl, case_start):
    result, printed = run_check(task, impl)
    case = next(c for c in result.cases if c.name.startswith(case_start))
    assert not case.passed, printed
    return case.hint


def test_a_count_from_sequence_0_and_slot_0_are_both_named_where_they_agree():
    """Sequence 0 has one partition in the case of many short ones: a merge of its count
    and a merge of slot 0's values give the same rows there; elsewhere each its own."""
    seq0 = _merge("(seq_lens[b] + part_len - 1)", "(seq_lens[0] + part_len - 1)")
    both = _hint("decode_merge", seq0, "many short partitions")
    assert "these mistakes give the same result here" in both and _SLOT_0 in both
    alone = _hint("decode_merge", seq0, "three sequences")
    assert "every row merged sequence 0's 3 partitions" in alone and _SLOT_0 not in alone


def test_a_constant_equal_to_one_over_the_first_static_scale_names_both():
    """The static scales are 0.03125 * (head + 1): x * 32 is x / k_scale[0] there."""
    hint = _hint("quantize_write", _codes("rintf(row[d] * 32)"), "static scales, exact halves")
    assert "k_scale[0] for every head" in hint and "every code is rintf(x * 32)" in hint


@pytest.mark.parametrize("task, impl", [
    ("decode_merge", _merge(_WEIGHT, "float w = expf(ml[2 * p] - m_all) * ml[2 * p + 1];")),
    ("quantize_write", _codes("rintf(row[d] * (1.0f / scale))")),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [])),
])
def test_right_answer_passes(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
