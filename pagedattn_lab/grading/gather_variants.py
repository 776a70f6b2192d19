"""Lesson 13 Task 2's known-wrong outputs: what an answer that misreads the all_gather buffer
returns, each with the hint that names the mistake (checks_tp.py compares a wrong answer with
them). The buffer holds the ranks' outputs rank after rank, each [batch, H/R, head_dim] whole.
"""
from __future__ import annotations

import numpy as np


def _blocks(gathered, world, batch, heads, dim):
    return gathered.reshape(world, batch, heads // world, dim)


def wrong_orders(gathered, world, batch, heads, dim) -> list[tuple[str, np.ndarray]]:
    """(hint, the [batch, H, D] output the mistake gives) for each value-order mistake."""
    blocks = _blocks(gathered, world, batch, heads, dim)
    return [
        ("the buffer is rank after rank (rank 0's whole [batch, H/R, D] block first), so a "
         "plain reshape to [batch, H, D] mixes the ranks' sequences: reshape to [R, batch, "
         "H/R, D] and move the rank axis next to the heads.", gathered.reshape(batch, heads, dim)),
        ("rank r's block holds heads r*H/R ... (r+1)*H/R - 1: rank 0's heads come first.",
         blocks[::-1].transpose(1, 0, 2, 3).reshape(batch, heads, dim)),
        ("rank r's local head j is global head r*H/R + j (consecutive ranges), not j*R + r: "
         "the rank axis goes before the local-head axis.",
         blocks.transpose(1, 2, 0, 3).reshape(batch, heads, dim)),
        ("each rank's block is its output [batch, H/R, head_dim]: sequences first, then its "
         "heads.", gathered.reshape(world, heads // world, batch, dim).transpose(2, 0, 1, 3)
         .reshape(batch, heads, dim)),
        ("a rank's block was read as [batch, head_dim, H/R]: it is [batch, H/R, head_dim], one "
         "head's head_dim values side by side, so reshape to [R, batch, H/R, head_dim] with no "
         "swap of the last two axes.",
         gathered.reshape(world, batch, dim, heads // world).transpose(1, 0, 3, 2)
         .reshape(batch, heads, dim)),
        ("rank r's block starts at r * batch * H/R * head_dim: each block holds every "
         "sequence's heads of that rank, not one sequence's (an offset r * H/R * head_dim "
         "reads the blocks overlapped).", _one_sequence_strides(gathered, world, batch, heads,
                                                                 dim)),
    ]


def _one_sequence_strides(gathered, world, batch, heads, dim):
    """The output read with rank r's block taken from offset r * H/R * head_dim, the stride
    of one sequence's share, not of a rank's whole block (right only for batch 1)."""
    share = heads // world * dim
    reads = [gathered[r * share:r * share + batch * share] for r in range(world)]
    return np.stack(reads).reshape(world, batch, heads // world, dim) \
        .transpose(1, 0, 2, 3).reshape(batch, heads, dim)


def wrong_shape_hint(got, gathered, world, batch, heads, dim) -> str | None:
    """The hint for an answer of the wrong shape that holds the ranks' blocks whole, laid out
    in a known wrong way; None if it is none of them."""
    blocks = _blocks(gathered, world, batch, heads, dim)
    layouts = [
        (np.concatenate(list(blocks), axis=0), "the ranks' blocks were stacked along the "
         "sequences ([R * batch, H/R, head_dim]): they hold other heads of the same sequences, "
         "so they go side by side on the head axis (axis 1), giving [batch, num_heads, "
         "head_dim]."),
        (blocks, "that is the buffer as [R, batch, H/R, head_dim]: move the rank axis next to "
         "the heads ([batch, R, H/R, head_dim]) and merge the two: [batch, num_heads, "
         "head_dim]."),
        (blocks.transpose(1, 0, 2, 3), "the rank axis and the local-head axis are still apart "
         "([batch, R, H/R, head_dim]): merge them, reshape(batch, num_heads, head_dim)."),
    ]
    return next((hint for layout, hint in layouts
                 if got.shape == layout.shape and np.array_equal(got, layout)), None)
