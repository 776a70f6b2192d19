"""Hints of workbook 02's Python tasks read off a wrong answer: a page looked up one entry
too far in the block-table row, and a gather of the wrong shape."""
from __future__ import annotations

from ..words import counted
from .report import probe

# The checks' rows are longer than the sequence's pages, so the next entry always exists.
NEXT_ENTRY_HINT = ("the first page is entry 0 of the row: token t's page is entry t // "
                   "page_size, not t // page_size + 1 (that is the next page's id, and past "
                   "the last page the row's -1 padding).")


def adds_page_size(fn, row, seq_len: int, page_size: int) -> bool:
    """slot_of `fn` gives row[t // page_size] + page_size + t % page_size for every token of
    the case, the page added to page_size where it is multiplied (one token alone may give
    that sum by coincidence)."""
    got = probe(lambda: [int(fn(row.copy(), t, page_size)) for t in range(seq_len)])
    return got == [int(row[t // page_size]) + page_size + t % page_size for t in range(seq_len)]


def gather_shape_hint(got: tuple, expected: tuple, page_size: int, num_kv_heads: int) -> str:
    """The hint for a gather of shape `got` where `expected`, [seq_len, num_kv_heads,
    head_dim], was due: whole pages, only the full pages, the heads first, or a token's
    block reshaped."""
    seq_len, _, head_dim = expected
    tokens, rest = (got[0], tuple(got[1:])) if got else (None, ())
    if rest == expected[1:] and tokens > seq_len and tokens % page_size == 0:
        return ("you returned whole pages: the last page is only partly filled (and entries "
                "past it are padding); keep the first seq_len tokens.")
    if rest == expected[1:] and seq_len % page_size and \
            tokens == seq_len // page_size * page_size:
        left, pages = seq_len % page_size, -(-seq_len // page_size)
        return (f"you returned the tokens of the full pages only ({tokens} of {seq_len}): the "
                f"last {counted(left, 'token')} of the sequence sit{'s' if left == 1 else ''} "
                "on its last page, partly filled, which counts too: the sequence has "
                f"ceil(seq_len / page_size) = {counted(pages, 'page')} (-(-seq_len // "
                "page_size), not seq_len // page_size); or gather np.arange(seq_len) itself.")
    if tuple(got) == (num_kv_heads, seq_len, head_dim) and num_kv_heads != seq_len:
        return ("keep the cache's axis order: tokens first, [seq_len, num_kv_heads, head_dim] "
                "(you returned the heads first).")
    if len(got) > 1 and tokens == seq_len:
        return (f"the token axis is right ({seq_len} tokens), but each token must keep its "
                "whole [num_kv_heads, head_dim] block, every kv head, as the cache holds it: "
                "return exactly seq_len tokens of [num_kv_heads, head_dim] each, not reshaped.")
    return "return exactly seq_len tokens: [seq_len, num_kv_heads, head_dim]."
