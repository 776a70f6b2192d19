"""Is the kernel reading block_tables transposed ([p * batch + b] for [b * max_pages + p])?

The cases' tables have a -1 padding column, so a transposed read soon reaches a -1 and
faults or reads garbage, evidence that looks like a softmax or bounds bug. When a kernel
fails, it is launched once more on a problem whose table is square and full (3 sequences of
3 pages, no padding): there a transposed read stays in bounds and reads the transposed
table (block_tables[p * 3 + b] is block_tables.T[b, p]), which a reference run on the
transposed table reproduces exactly.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .cases import paged_problem
from .compare import describe_difference
from .report import probe

PAGE_SIZE = 4
TRANSPOSED_HINT = ("block_tables is read transposed: it is [batch, max_pages], row after row, "
                   "so page p of sequence b is block_tables[b * max_pages + p], not "
                   "block_tables[p * batch + b] or [p * max_pages + b] (a launch on a full "
                   "table, 3 sequences of 3 pages, gives exactly the answer of the transposed "
                   "table).")


def full_table(mode: str, **sizes):
    """Three sequences of three pages each, no padding column: a square, full table (finite
    numbers in every slot: the transposed read reaches the tails of other sequences' last
    pages)."""
    p = PAGE_SIZE
    return paged_problem(90, mode=mode, seq_lens=[3 * p, 3 * p - 1, 2 * p + 1], page_size=p,
                         extra_width=0, **sizes)


def transposed(prob):
    """`prob` with its table transposed (its own answer is then the transposed read's)."""
    return replace(prob, block_tables=np.ascontiguousarray(prob.block_tables.T),
                   _expected=None)


def transposed_hint(run, prob, expected_of, axes) -> str | None:
    """TRANSPOSED_HINT when `run(prob)` (the learner's kernel: (output, never written)) is
    wrong on the full table `prob` and right for its transposed table; `expected_of(p)`:
    the right output of problem p. None when the launch fails or shows anything else."""
    def check():
        got, never = run(prob)
        right = describe_difference(got, expected_of(prob), axes, unwritten=never) is None
        return not right and describe_difference(got, expected_of(transposed(prob)), axes,
                                                 unwritten=never) is None
    return TRANSPOSED_HINT if probe(check) else None
