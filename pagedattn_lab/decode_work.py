"""The tensor-core decode's work: which tokens each block takes (host-side, vectorised NumPy;
`BatchDecodeWrapper.plan` calls `tc_work` once per decode step).

kernels/decode_mma.cu streams a list of segments per block (blockIdx.x; the same for every
KV head x row chunk, blockIdx.y): pieces of sequences whose tiles it computes back to back,
its copies running on across the boundaries. Two ways to make the list (TC_SCHEME):
"items": one partition per block, as decode_tc.cu (choose_tc_part_len, tc_work_list);
"balanced": the (sequence, tile) space cut into equal contiguous ranges, one per resident
block slot x TC_RANGES_PER_SLOT, so that every block streams the same number of tiles and
all of them finish together (stream-K). Measured: benchmarks/NOTES.md, "Tensor-core decode
v5".
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .decode_plan import choose_tc_part_len, tc_work_list

TC_SCHEMES = ("balanced", "items")
TC_SCHEME = "balanced"    # what plans on decode_mma.cu take (measured: NOTES.md)
TC_RANGES_PER_SLOT = 1    # balanced ranges per resident block slot


class Segments(NamedTuple):
    """segs [n, 4] int32 (sequence, first token, end token, part | parts << 16), seg_ptr
    [blocks + 1] int32 (block x's segments), slot_start [batch] int32 (a split sequence's
    first partial-state slot), parts [batch] (segments per sequence), slots, the most parts
    of one sequence, tokens per block (the longest range)."""
    segs: np.ndarray
    seg_ptr: np.ndarray
    slot_start: np.ndarray
    parts: np.ndarray
    slots: int
    max_parts: int
    range_tokens: int


def balanced_segments(lens: np.ndarray, tile_t: int, ranges: int, max_parts: int) -> Segments:
    """The tiles of all sequences (tile_t tokens from each sequence's start), in order, cut
    into `ranges` contiguous ranges of equal tile counts (+-1), one per block; a range is cut
    again where a sequence ends. Fewer ranges while a sequence would be cut into more than
    `max_parts` parts (what the merge has room for)."""
    lens = lens.astype(np.int64)
    tiles = -(-lens // tile_t)
    cum = np.cumsum(tiles)
    total, seq_first = int(cum[-1]), cum - tiles
    ranges = max(1, min(ranges, total))
    while True:
        cuts = np.arange(ranges, dtype=np.int64) * total // ranges   # range starts (tiles)
        bounds = np.union1d(seq_first, cuts)                          # segment starts
        seq = np.searchsorted(cum, bounds, side="right")
        parts = np.bincount(seq, minlength=lens.size)
        if parts.max() <= max_parts or ranges == 1:
            break
        ranges = max(1, ranges * max_parts // int(parts.max()))
    nxt = np.append(bounds[1:], total)
    start = (bounds - seq_first[seq]) * tile_t
    end = np.minimum(lens[seq], (nxt - seq_first[seq]) * tile_t)
    block = np.searchsorted(cuts, bounds, side="right") - 1
    seg_ptr = np.searchsorted(block, np.arange(ranges + 1))
    return _segments(seq, start, end, seg_ptr, lens.size, -(-total // ranges) * tile_t)


def item_segments(lens: np.ndarray, part_len: int) -> Segments:
    """One segment per block: tc_work_list's partitions (longest first)."""
    work, _, _ = tc_work_list(lens, part_len)
    seq, part = work[:, 0].astype(np.int64), work[:, 1].astype(np.int64)
    start = part * part_len
    end = np.minimum(lens.astype(np.int64)[seq], start + part_len)
    return _segments(seq, start, end, np.arange(seq.size + 1), lens.size, part_len)


def _segments(seq, start, end, seg_ptr, batch, range_tokens) -> Segments:
    """Segments numbered within their sequence (in list order) and the partial-state slots."""
    order = np.argsort(seq, kind="stable")
    counts = np.bincount(seq, minlength=batch)
    part = np.empty(seq.size, np.int64)
    part[order] = np.arange(seq.size) - np.repeat(np.cumsum(counts) - counts, counts)
    split = np.where(counts > 1, counts, 0)
    segs = np.stack([seq, start, end, part | (counts[seq] << 16)], axis=1).astype(np.int32)
    return Segments(segs, seg_ptr.astype(np.int32), (np.cumsum(split) - split).astype(np.int32),
                    counts, int(split.sum()), int(counts.max()), int(range_tokens))


def tc_work(lens: np.ndarray, cfg, grid_y: int, sms: int, resident: int, max_parts: int,
            num_splits: int | None, scheme: str | None = None, ranges: int | None = None):
    """(scheme, Segments) of a plan on `cfg` (a decode_plan.TCConfig): decode_mma.cu takes
    (and decode_mma_rows.cu) take `scheme`, else TC_SCHEME, but "items" when num_splits is given or when the sequences
    unsplit need no more blocks than one wave holds (then choose_tc_part_len cuts them into
    one wave of equal partitions: already even; measured, H200: MQA 16/1 0.0398 against
    0.0438 balanced, 8 x 32k 0.263 / 0.266, 1 x 32k 0.0516 / 0.0524); decode_tc.cu always
    "items". Balanced: `ranges` per KV head x row chunk (None: one per resident
    block slot x TC_RANGES_PER_SLOT); items: partitions by decode_plan.choose_tc_part_len."""
    if cfg.impl == "wmma":
        scheme = "items"
    elif not scheme:
        one_wave = lens.size * grid_y <= resident * sms   # unsplit sequences fit in one wave
        scheme = "items" if num_splits is not None or one_wave else TC_SCHEME
    if scheme == "balanced":
        ranges = ranges or max(1, round(TC_RANGES_PER_SLOT * resident * sms / grid_y))
        return scheme, balanced_segments(lens, cfg.tile_t, ranges, max_parts)
    part_len = choose_tc_part_len(lens, grid_y, sms, max_parts, num_splits, resident,
                                  cfg.blocks_per_sm)
    return scheme, item_segments(lens, part_len)
