"""Hints that named a mistake the evidence does not show (found walking workbooks 01 and 02 in
a browser): a hint must fit the wrong answer it explains, and no other claim."""
import re

from pagedattn_lab.addressing import element_offset
from tests.check_helpers import assert_several_fit, run_check


def append_ignoring_tail(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(-(-n_new // page_size)))


def test_one_new_token_that_fits_names_both_mistakes_that_take_a_page():
    # seq_len 3, page_size 4, one new token: one page per token and "ignore the room on the
    # last page" both take 1 page; the hint must not blame the first alone
    case = assert_several_fit("append_tokens", append_ignoring_tail,
                              {"page_size": 4, "seq_len": 3, "n_new": 1}, "pages",
                              ["one page per token", "still has room for 1 token:"])
    assert "you took one page per token" not in case.hint


def test_append_messages_count_one_token_and_one_page_in_the_singular():
    _, printed = run_check("append_tokens", append_ignoring_tail)
    flat = " ".join(printed.split())
    assert "after 1 new token on a sequence of 3" in flat, printed
    assert "expected: 1 page (0 new)" in flat, printed
    assert not re.search(r"\b1 (new )?tokens|\b1 pages", flat), printed


def guide_offset(slot, kv_head, dim, num_kv_heads, head_dim):
    return slot * head_dim + kv_head * head_dim + dim


def test_guide_offset_hint_says_where_it_is_right():
    # where the guide's formula is right, computed: slot 0 (every head), and nothing else
    right = {(s, h) for s in range(50) for h in range(4)
             if guide_offset(s, h, 3, 4, 8) == element_offset(s, h, 3, 4, 8)}
    assert right == {(0, h) for h in range(4)}
    result, printed = run_check("kv_offset", guide_offset)
    hint = " ".join(next(c for c in result.cases if not c.passed).hint.split())
    assert "only slot 0" in hint.lower(), printed
    assert "kv_head 0 of the first slots" not in hint, printed


UNGUARDED = r"""
extern "C" __global__ void zip_add(const float* a, const float* b, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = a[i] + b[i];
}
"""


def test_out_of_bounds_message_counts_one_element_in_the_singular():
    # puzzle 2's case n = 1: the array a has a single element
    result, printed = run_check("puzzle_guard", UNGUARDED)
    case = next(c for c in result.cases if c.params.get("n") == 1)
    assert "(it has 1 element)" in " ".join(case.message.split()), printed
    assert not re.search(r"\b1 elements", printed), printed
