"""Lesson 13 Task 3's known wrong byte counts (checks_tp.wire_bytes compares a learner's
(tables, output_share, kv_read) with them to name the mistake): each is a hint and the three
numbers that mistake gives."""
from __future__ import annotations

import numpy as np

from .compare import POW2_HINT, pow2_ceil_forms

_ONE_HEAD_OUT = ("output_share counts one head's output: the rank sends all its query heads, "
                 "num_heads / world_size of them (batch * H/R * head_dim * itemsize).")
_ONE_HEAD_KV = ("kv_read counts one KV head: the rank reads all its KV heads, num_kv_heads / "
                "world_size of them (tokens * 2 * Hkv/R * head_dim * itemsize).")


def bytes_variants(lens, heads, kv, dim, ps, world, size):
    """(hint, (tables, output_share, kv_read)) for each known mistake, on wire_bytes' arguments
    (some may give the expected numbers on these arguments: the caller skips those)."""
    batch, n = len(lens), int(np.sum(lens))
    pages = -(-max(lens) // ps)
    tables = 4 * (2 + batch + batch * pages)
    share = batch * heads // world * dim * size
    kv_read = n * 2 * kv // world * dim * size
    twice_out = ("output_share was divided by world_size twice: num_heads / world_size already "
                 "is the rank's own heads (batch * H/R * head_dim * itemsize).")
    twice_kv = ("kv_read was divided by world_size twice: num_kv_heads / world_size already is "
                "the rank's own KV heads (tokens * 2 * Hkv/R * head_dim * itemsize).")
    return [
        ("round up: a sequence's partial last page is still a page of its table (pages per "
         "row = ceil(max(seq_lens) / page_size)).",
         (4 * (2 + batch + batch * (max(lens) // ps)), share, kv_read)),
        ("pages per row = ceil(max(seq_lens) / page_size): a longest sequence that fills its "
         "last page exactly needs no extra page (max // page_size + 1 is one too many).",
         (4 * (2 + batch + batch * (max(lens) // ps + 1)), share, kv_read)),
        *[(POW2_HINT.format(name="page_size", n=ps),
           (4 * (2 + batch + batch * int(ceil(max(lens)))), share, kv_read))
          for ceil, _ in pow2_ceil_forms(ps)],
        ("the buffer carries the batch's seq_lens too (batch int32 values), between the "
         "2-value header and the table.", (4 * (2 + batch * pages), share, kv_read)),
        ("the buffer starts with a 2-value header (batch, pages per row), before the seq_lens "
         "and the table: 2 + batch + batch * pages int32 values.",
         (4 * (batch + batch * pages), share, kv_read)),
        ("the header is 2 values (batch, pages per row), not 1: 2 + batch + batch * pages "
         "int32 values.", (4 * (1 + batch + batch * pages), share, kv_read)),
        ("pages per row are the LONGEST sequence's, ceil(max(seq_lens) / page_size): not "
         "the pages of the whole batch's tokens, ceil(sum(seq_lens) / page_size).",
         (4 * (2 + batch + batch * -(-n // ps)), share, kv_read)),
        ("pages per row are the LONGEST sequence's, ceil(max(seq_lens) / page_size): every "
         "row is padded to it, not cut to the shortest sequence's pages.",
         (4 * (2 + batch + batch * -(-min(lens) // ps)), share, kv_read)),
        *[("pages per row are the LONGEST sequence's, ceil(max(seq_lens) / page_size): "
           "every row is padded to it, not to the pages of the mean sequence length.",
           (4 * (2 + batch + batch * mean_pages), share, kv_read))
          for mean_pages in _pages_of_the_mean(lens, ps)],
        ("the table has a row per sequence: batch * pages entries, not one row of pages "
         "(2 + batch + batch * pages int32 values).",
         (4 * (2 + batch + pages), share, kv_read)),
        ("the table is padded: every row has as many entries as the LONGEST sequence has "
         "pages (batch * pages), not each sequence its own count.",
         (4 * (2 + batch + sum(-(-int(x) // ps) for x in lens)), share, kv_read)),
        ("a table entry is an int32: 4 bytes, whatever itemsize is.",
         (tables // 4 * size, share, kv_read)),
        ("a table entry is an int32: 4 bytes, not 8 (int64).", (tables * 2, share, kv_read)),
        ("tables is a byte count: 4 bytes per int32 value, not the number of values.",
         (tables // 4, share, kv_read)),
        ("the buffer also carries its header (batch, pages per row) and the seq_lens: "
         "2 + batch + batch * pages int32 values.", (4 * batch * pages, share, kv_read)),
        ("tables counts the buffer once, as rank 0 broadcasts it: not once per receiving "
         "rank ((world_size - 1) * buffer).", (tables * (world - 1), share, kv_read)),
        ("tables counts the buffer once, as rank 0 broadcasts it: not once per rank "
         "(world_size * buffer).", (tables * world, share, kv_read)),
        ("a rank sends only its own heads' output, num_heads / world_size of them.",
         (tables, share * world, kv_read)),
        ("the output has a row per query head (num_heads / world_size of them on a rank), "
         "not per KV head.", (tables, batch * (kv // world) * dim * size, kv_read)),
        ("output_share counts the rank's output once, as it enters the all_gather: not once "
         "per other rank ((world_size - 1) * share).", (tables, share * (world - 1), kv_read)),
        # (at world_size > 1 this one is the expected numbers, so it is never named there)
        ("at world_size = 1 no other rank receives it, but output_share is still the rank's "
         "whole output, as the task asks: not 0.", (tables, 0 if world == 1 else share, kv_read)),
        ("the heads are gathered, not summed: output_share is the rank's own heads' output, "
         "once (batch * H/R * head_dim * itemsize), not the 2 (R - 1) / R of the whole output "
         "a ring all-reduce moves.", (tables, 2 * (world - 1) * share, kv_read)),
        ("output_share is what the rank sends, once: not sent plus received (2 * share).",
         (tables, share * 2, kv_read)),
        # twice: the product divided again, or the head count (which rounds apart from it)
        (twice_out, (tables, share // world, kv_read)),
        (twice_out, (tables, batch * (heads // world // world) * dim * size, kv_read)),
        ("every value is itemsize bytes, the itemsize given: not 2 (fp16) always.",
         (tables, share * 2 // size, kv_read * 2 // size)),
        ("every value is itemsize bytes, the itemsize given: not 4 (fp32) always.",
         (tables, share * 4 // size, kv_read * 4 // size)),
        # one field with a fixed itemsize, the other right (each written on its own line)
        *[(f"output_share's values are itemsize bytes, the itemsize given: not {fixed} "
           "always.", (tables, share * fixed // size, kv_read)) for fixed in (2, 4)],
        *[(f"kv_read's values are itemsize bytes, the itemsize given: not {fixed} always.",
           (tables, share, kv_read * fixed // size)) for fixed in (2, 4)],
        ("K and V: a token's cache is two arrays of num_kv_heads * head_dim values.",
         (tables, share, kv_read // 2)),
        (_ONE_HEAD_OUT, (tables, batch * dim * size, kv_read)),
        (_ONE_HEAD_KV, (tables, share, n * 2 * dim * size)),
        (f"{_ONE_HEAD_OUT} And {_ONE_HEAD_KV[0].lower()}{_ONE_HEAD_KV[1:]}",
         (tables, batch * dim * size, n * 2 * dim * size)),
        ("seq_lens already counts the step's new token (it is appended before the "
         "attention): the kernel reads sum(seq_lens) tokens, not one more per sequence.",
         (tables, share, (n + batch) * 2 * kv // world * dim * size)),
        ("seq_lens already counts the step's new token: the kernel reads sum(seq_lens) "
         "tokens, not one more in all.", (tables, share, (n + 1) * 2 * kv // world * dim * size)),
        ("a rank reads only its own KV heads, num_kv_heads / world_size of them.",
         (tables, share, kv_read * world)),
        ("the cache holds KV heads, not query heads: with GQA, num_kv_heads per token.",
         (tables, share, n * 2 * heads // world * dim * size)),
        ("the kernel reads only a sequence's seq_len cached tokens, not the unused tail "
         "slots of its last page.",
         (tables, share, sum(-(-int(x) // ps) * ps for x in lens) * 2 * kv // world * dim
          * size)),
        ("the kernel reads each sequence's own seq_len tokens, sum(seq_lens) in all: not "
         "the padded table's batch * pages * page_size slots (a short sequence's padding "
         "entries point at no page).",
         (tables, share, batch * pages * ps * 2 * kv // world * dim * size)),
        ("the kernel reads each sequence's own seq_len tokens, sum(seq_lens) in all: not "
         "batch * max(seq_lens), as if every sequence were as long as the longest.",
         (tables, share, batch * max(lens) * 2 * kv // world * dim * size)),
        (twice_kv, (tables, share, kv_read // world)),
        (twice_kv, (tables, share, n * 2 * (kv // world // world) * dim * size)),
        ("every value is itemsize bytes (and a table entry 4: int32).",
         (tables // 4, share // size, kv_read // size)),
        ("the output is itemsize bytes per value too: batch * H/R * head_dim * itemsize.",
         (tables, share // size, kv_read)),
    ]


def _pages_of_the_mean(lens, ps) -> set[int]:
    """Pages per row taken from the mean sequence length, its ceiling or its floor before
    the pages are rounded up (both ways of writing it give one of these)."""
    mean = float(np.mean(lens))
    return {-(-int(np.ceil(mean)) // ps), -(-int(mean) // ps)}
