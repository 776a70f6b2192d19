"""Hints for lesson 01's batch block tables (checks_block_tables.block_tables): what a
table of the wrong shape, or rows of the wrong page counts, show of the mistake behind them."""
from __future__ import annotations

import numpy as np

from .compare import POW2_HINT, pow2_ceil_forms
from .report import several_fit


EMPTY_BATCH_HINT = ("an empty batch is still a batch: block_tables of shape (0, 1) (int32) "
                    "and seq_lens of shape (0,); max() of an empty list raises, so give it a "
                    "default (at least 1).")


def count_hint(filled: list[int], seq_lens: list[int], page_size: int, taken: int) -> str:
    """The rules (all that fit) that give these page counts per row and took that many pages."""
    rules = [
        ("round up: a sequence of L tokens owns ceil(L / page_size) pages, its last page "
         "partly filled.", [n // page_size for n in seq_lens]),
        ("a sequence with no tokens yet owns no page (ceil(0 / page_size) is 0): its row is "
         "all -1.", [max(1, -(-n // page_size)) for n in seq_lens]),
        ("L // page_size + 1 pages is one too many when L is a multiple of page_size (and for "
         "0 tokens).", [n // page_size + 1 for n in seq_lens]),
        ("one page per token? A row needs ceil(seq_len / page_size) entries.", list(seq_lens)),
        *[(POW2_HINT.format(name="page_size", n=page_size), [int(ceil(n)) for n in seq_lens])
          for ceil, _ in pow2_ceil_forms(page_size)],
    ]
    need = [-(-n // page_size) for n in seq_lens]
    fits = [h for h, counts in rules if need != counts == filled and taken == sum(counts)]
    return several_fit(fits, "page counts") if fits else ""


def width_hint(tables: np.ndarray, seq_lens: list[int], need: list[int], taken: int,
                width: int, page_size: int) -> str:
    """What the wrong shape shows: a shared table, a page per token, a transposed table..."""
    hint = "one row per sequence, as wide as the longest sequence's page count (at least 1)."
    if tables.ndim != 2:
        return hint
    rows, cols = tables.shape
    filled = [int((tables[i] >= 0).sum()) for i in range(rows)] if rows == len(seq_lens) else []
    if (rows, cols) == (width, len(seq_lens)) and rows != cols:
        return ("the table is transposed: row i must be sequence i, [batch, max_pages], not "
                "[max_pages, batch].")
    if filled and len(seq_lens) > 1 and all(f == sum(need) for f in filled) and sum(need) > \
            max(need):
        return ("every row holds every page: one block table for the whole batch (the "
                "guide's bug; `[[]] * n` makes n references to one list). Give each "
                "sequence its own list.")
    if taken == sum(seq_lens) != sum(need):
        return "one page per token? A row needs ceil(seq_len / page_size) entries."
    if cols == 0 and rows == len(seq_lens):
        return EMPTY_BATCH_HINT if not seq_lens else (
            "no sequence holds a page, but the table still needs one column: max_pages is at "
            "least 1 (kernels take a table with max_pages >= 1).")
    widths = [  # (a width several mistakes give alike names each: the shape cannot tell)
        ("each row holds its own pages, but the table is as wide as the whole batch's "
         "page count: max_pages is the longest sequence's page count.",
         sum(need) if filled == need else None),
        ("max_pages is ceil(longest / page_size): longest // page_size leaves out the longest "
         "sequence's partly filled last page.", max(n // page_size for n in seq_lens)),
        ("max_pages is ceil(longest / page_size): longest // page_size + 1 is one page too "
         "many when the longest sequence fills its last page.",
         max(n // page_size + 1 for n in seq_lens)),
    ] if seq_lens and rows == len(seq_lens) else []
    fits = [text for text, wrong in widths if wrong is not None and cols == wrong != width]
    # (rows holding the wrong page counts say more than the width they make)
    return (count_hint(filled, seq_lens, page_size, taken)
            or (several_fit(fits, "width") if fits else hint))
