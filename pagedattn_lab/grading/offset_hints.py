"""Hints for lesson 02's kv_offset (checks_addressing.kv_offset): the usual mistakes'
offsets at one element, and the one that gives a learner's offset at every point asked; and
the hints for a kernel's token slot worked out wrong, which the kernels' checks share."""
from __future__ import annotations

from ..addressing import element_offset
from ..validate_kinds import is_int
from .compare import POW2_HINT, pow2_mixes
from .report import probe


OFFSET_HINT = "offset = (slot * num_kv_heads + kv_head) * head_dim + dim."
# A kernel's token slot worked out wrong (variants.attention_variant and the gather's)
UNSCALED_PAGES_HINT = ("token t is at slot block_table[t / page_size] * page_size + t % "
                       "page_size: yours adds the offset to the page number itself; a page "
                       "starts at its number times page_size, so multiply it by page_size "
                       "before adding the offset.")
PAGE_ONLY_HINT = ("every key of a page read the same row: block_table[t / page_size] is a page "
                  "id, not a slot. Token t is at slot block_table[t / page_size] * page_size + "
                  "t % page_size.")
SWAPPED_SLOT_HINT = ("token t is at slot block_table[t / page_size] * page_size + t % "
                     "page_size: yours swaps / and % (the page is t / page_size, the offset in "
                     "it t % page_size).")
NEXT_PAGE_HINT = ("token t's page is entry t / page_size of its block-table row (entry 0 holds "
                  "the first page): yours reads entry t / page_size + 1, the next page's id, "
                  "and past the last page the row's -1 padding.")
OFFSET_DIV_HINT = ("the offset inside the page is t % page_size, not t / page_size: yours "
                   "reads every key of a page at the offset of the page's index in the row. "
                   "Token t is at slot block_table[t / page_size] * page_size + t % page_size.")


def offset_variants(slot: int, h: int, d: int, num_kv_heads: int, head_dim: int):
    """(hint, offset) of the usual mistakes at one element."""
    expected = element_offset(slot, h, d, num_kv_heads, head_dim)
    return [
        ("the head stride is missing num_kv_heads (the guide's bug): a slot holds "
         "num_kv_heads * head_dim values, so offset = (slot * num_kv_heads + kv_head) * "
         "head_dim + dim. Only slot 0 comes out right (every head of it): from slot 1 on, "
         "the offset falls short, in an earlier slot's values (slot 1's last head: in its "
         "own head 0).",
         slot * head_dim + h * head_dim + d),
        ("that is the HND order (heads outer); the cache is NHD [pages, page_size, "
         "num_kv_heads, head_dim]: (slot * num_kv_heads + kv_head) * head_dim + dim.",
         (slot * head_dim + d) * num_kv_heads + h),
        ("add the dim.", (slot * num_kv_heads + h) * head_dim),
        ("kv_head and dim are swapped: kv_head picks a block of head_dim values, dim the "
         "value inside it: (slot * num_kv_heads + kv_head) * head_dim + dim.",
         (slot * num_kv_heads + d) * head_dim + h),
        *[("one off: offsets count from 0, so element (slot 0, kv_head 0, dim 0) is at 0.", v)
          for v in (expected + 1, expected - 1)],
        ("consecutive kv heads of a slot are head_dim values apart, not num_kv_heads.",
         slot * num_kv_heads * head_dim + h * num_kv_heads + d),
        ("consecutive kv heads of a slot are head_dim values apart, not 1: multiply kv_head "
         "by head_dim, (slot * num_kv_heads + kv_head) * head_dim + dim.",
         slot * num_kv_heads * head_dim + h + d),
        ("a slot holds num_kv_heads * head_dim values: the slot stride needs both.",
         slot * num_kv_heads + h * head_dim + d),
        ("that is a byte offset (4 bytes a float32): kv_offset counts elements, the index "
         "into the flat cache array, so drop the * 4.", 4 * expected),
        ("that is a byte offset (2 bytes a float16): kv_offset counts elements, the index "
         "into the flat cache array, so drop the * 2.", 2 * expected),
        ("that is the offset for num_kv_heads 4 and head_dim 8, numbers written into the "
         f"code: use the arguments ({num_kv_heads} and {head_dim} here).",
         (slot * 4 + h) * 8 + d if (num_kv_heads, head_dim) != (4, 8) else None),
        *[(POW2_HINT.format(name="head_dim", n=head_dim), join(mul(slot * num_kv_heads + h),
                                                                mod(d)))
          for _, mul, mod, join in pow2_mixes(head_dim)],
    ]


def offset_hint(fn, points, num_kv_heads: int, head_dim: int, first_wrong) -> str:
    """The hint of the first mistake that gives the learner's offset at every point the case
    asked (one point alone can fit several: 4 * 7 is also the HND offset of dim 7), or the
    formula where none does."""
    answers = {first_wrong[0]: first_wrong[1]}
    for point in points:
        if point not in answers:
            got = probe(fn, *point, num_kv_heads, head_dim)
            answers[point] = int(got) if is_int(got) else None
    fits = None
    for point, got in answers.items():
        here = {text for text, value in offset_variants(*point, num_kv_heads, head_dim)
                if got is not None and got == value}
        fits = here if fits is None else fits & here
    wrong_here = offset_variants(*first_wrong[0], num_kv_heads, head_dim)
    expected = element_offset(*first_wrong[0], num_kv_heads, head_dim)
    return next((text for text, value in wrong_here
                 if text in fits and value != expected), OFFSET_HINT)
