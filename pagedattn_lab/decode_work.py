"""The tensor-core decode's work: which tokens each block takes (host-side, vectorised NumPy;
`BatchDecodeWrapper.plan` calls `tc_work` once per decode step).

kernels/decode_mma.cu and decode_mma_rows.cu stream a list of segments per block
(blockIdx.x; the same for every KV head x row chunk, blockIdx.y): pieces of sequences whose
tiles they compute back to back, the copies running on across the boundaries. Two ways to
make the list (TC_SCHEME): "items": one partition per block, as decode_tc.cu
(choose_tc_part_len, tc_work_list); "balanced": the (sequence, tile) space cut into equal
contiguous ranges, one per resident block slot x TC_RANGES_PER_SLOT, so that every block
streams the same work (its tiles, and TC_SEGMENT_COST per segment) and all of them finish
together (stream-K). Measured:
benchmarks/NOTES.md, "Tensor-core decode v5" and "v6".
"""
from __future__ import annotations

import bisect
from typing import NamedTuple

import numpy as np

from . import decode_plan as dp   # its TC_* split constants (benchmarks set them)
from .decode_simt_plan import SIMT_MAX_TOKENS
from .decode_tc_sizes import tc_max_parts
from .validate import INT32_MAX

TC_SCHEMES = ("balanced", "items")
TC_SCHEME = "balanced"    # what plans on the PTX kernels take (measured: NOTES.md)
TC_RANGES_PER_SLOT = 1    # balanced ranges per resident block slot
# What a segment's end costs a block, in tiles: balanced ranges are cut at equal tiles plus this
# per sequence that starts inside them (the state merged through shared memory, the output or
# partial state written, a fence and the counter's atomic, while the block's copies wait).
# Measured (H200, session 10; NOTES.md, "Fixed costs (session 10)"), against equal tile counts
# in one process: 1 tile 0.5-1.5% faster on every 16-bit D64 row on balanced ranges (GQA 64/8
# 0.164 -> 0.162 ms, head_dim 96 0.131 -> 0.130, 256 0.307 -> 0.305), level over codes (fp8
# 0.091 -> 0.090, int8 0.092 both, per-token fp8 0.098 -> 0.099); 0.5 and 2 between; 3 level or
# slower. Meant for costs well under a range's tiles (the plans' ranges hold 20-50).
TC_SEGMENT_COST = 1.0
# One wave of items (the unsplit sequences fit the resident slots) only while its longest item
# is at most this many times a balanced range: equal lengths make both the same (MQA 16/1, 8 x
# 32k, 1 x 32k: items measured faster), uneven ones leave the longest sequence whole (D64 with
# two fused KV heads per block: items of 4028 tokens 0.162 ms, ranges of 2304 0.134-0.137).
ONE_WAVE_ITEMS_MAX = 1.5
# Automatic items: each sequence cut into its parts' count of equal pieces (whole tiles; the
# count is choose_tc_part_len's, so no more blocks), instead of full partitions and a
# remainder; and the blocks ordered so that an SM's blocks pair a long item with a short one
# (snake order over rounds of one block per SM). Measured (D64 MQA 16/1, H200, rounds s4b,
# s4c; NOTES.md, "MQA 16/1 (session 4)"): 38.8 us against 39.1-39.6 on session 3's kernel,
# 37.5 against 37.7 with the merge after the loop: small, never slower. Equal-length items
# (the 32k rows) are cut the same either way. Not with num_splits (its exact part count).
TC_ITEMS_EVEN = True
TC_ITEMS_SNAKE = True


def choose_tc_part_len(lens: np.ndarray, blocks_per_item: int, num_sms: int, max_parts: int,
                       num_splits: int | None = None, resident: int | None = None,
                       blocks_per_sm: int | None = None) -> int:
    """Tensor cores: tokens per partition. num_splits=n cuts the longest sequence into n;
    automatic: the longest of TC_PART_LENS (decode_plan's constants, as below) that still
    gives `blocks_per_sm` (None: TC_BLOCKS_PER_SM) blocks per SM, else the shortest, and no
    more than TC_AUTO_MAX_PARTS partitions per sequence; never more than `max_parts` (what
    the merge has room for). With TC_WAVES set and `resident` (the
    blocks an SM holds at once), when the unsplit sequences need no more blocks than that
    many waves hold: the shortest multiple of 64 tokens whose blocks fit in TC_WAVES waves
    (measured: D64 MQA 16/1 0.066 -> 0.047 ms, 1 x 32k 0.058 -> 0.053; D64 GQA 32/8, 512
    blocks unsplit, keeps the blocks-per-SM rule)."""
    max_len = int(lens.max())
    waves = (dp.TC_WAVES and resident
             and lens.size * blocks_per_item <= dp.TC_WAVES * resident * num_sms)
    if num_splits is not None:
        part_len = dp.cut_longest(max_len, num_splits)
    elif waves:
        budget = dp.TC_WAVES * resident * num_sms
        # the fewest units of 64 tokens that fit the budget (ceil(max_len / 64): one item each)
        units = _least(lambda n: int((-(-lens // (64 * n))).sum()) * blocks_per_item <= budget,
                       1, -(-max_len // 64))
        part_len = max(min(64 * units, max_len), -(-max_len // dp.TC_AUTO_MAX_PARTS))
    else:
        target = (blocks_per_sm or dp.TC_BLOCKS_PER_SM) * num_sms
        part_len = next((p for p in dp.TC_PART_LENS
                         if int((-(-lens // p)).sum()) * blocks_per_item >= target),
                        dp.TC_PART_LENS[-1])
        part_len = max(min(part_len, max_len), -(-max_len // dp.TC_AUTO_MAX_PARTS))
    if -(-max_len // part_len) > max_parts:
        if num_splits is not None:
            raise ValueError(f"num_splits: {num_splits} partitions exceed the {max_parts} the "
                             f"tensor-core kernel merges for this group and head_dim")
        part_len = -(-max_len // max_parts)
    return part_len


def tc_work_list(lens: np.ndarray, part_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(work [items, 2] int32 of (sequence, partition), slot_start [batch] int32, slots).

    Items are ordered longest first, so that the short ones fill the gaps at the end.
    A sequence of several partitions gets that many consecutive partial-state slots from
    slot_start; a sequence of one writes its output directly and takes none.
    """
    lens = lens.astype(np.int64)
    nparts = -(-lens // part_len)
    seq = np.repeat(np.arange(lens.size), nparts)
    first = np.cumsum(nparts) - nparts
    part = np.arange(seq.size) - np.repeat(first, nparts)
    length = np.minimum(part_len, lens[seq] - part * part_len)
    order = np.argsort(-length, kind="stable")
    work = np.stack([seq[order], part[order]], axis=1).astype(np.int32)
    split = np.where(nparts > 1, nparts, 0)
    slot_start = (np.cumsum(split) - split).astype(np.int32)
    return work, slot_start, int(split.sum())



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


def balanced_range_tokens(lens: np.ndarray, tile_t: int, ranges: int) -> int:
    """The longest of `ranges` ranges of equal tile counts, in tokens (balanced_segments' cut
    at segment cost 0, before any limit on parts per sequence): tc_work's measure of a range
    when it weighs one wave of items against balanced ranges."""
    tiles = int((-(-lens.astype(np.int64) // tile_t)).sum())
    return -(-tiles // max(1, min(ranges, tiles))) * tile_t


def balanced_segments(lens: np.ndarray, tile_t: int, ranges: int, max_parts: int,
                      segment_cost: float | None = None) -> Segments:
    """The tiles of all sequences (tile_t tokens from each sequence's start), in order, cut
    into `ranges` contiguous ranges of equal cost, one per block: a tile costs 1 and the start
    of a sequence `segment_cost` (None: TC_SEGMENT_COST; 0: equal tile counts, +-1); a range
    is cut again where a sequence ends. Fewer ranges while a sequence would be cut into more
    than `max_parts` parts (what the merge has room for)."""
    lens = lens.astype(np.int64)
    tiles = -(-lens // tile_t)
    cum = np.cumsum(tiles)
    total, seq_first = int(cum[-1]), cum - tiles
    ranges = max(1, min(ranges, total))
    cost = TC_SEGMENT_COST if segment_cost is None else segment_cost
    if not 0 <= cost < float("inf"):
        raise ValueError(f"segment_cost: expected a finite cost >= 0 (tiles), got {cost!r}")
    # tile j's place on the cost axis: j plus the cost of the sequence starts up to its own (the
    # first sequence's too: a constant that moves the first cuts by at most `cost` tiles)
    place = np.arange(total) + cost * np.repeat(np.arange(1, lens.size + 1), tiles)
    while True:
        if cost:   # range k starts at the first tile placed at or past k / ranges of the cost
            cuts = np.searchsorted(place, np.arange(ranges) * (total + cost * lens.size) / ranges)
            k = np.arange(ranges)   # strictly increasing, each range at least a tile
            cuts = np.minimum(np.maximum.accumulate(cuts - k) + k, total - ranges + k)
        else:
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
    longest = int(np.diff(np.append(cuts, total)).max())   # (balanced_range_tokens' at cost 0)
    return _segments(seq, start, end, seg_ptr, lens.size, longest * tile_t)


def item_segments(lens: np.ndarray, part_len: int, *, tile_t: int | None = None,
                  sms: int | None = None) -> Segments:
    """One segment per block: tc_work_list's partitions (longest first). tile_t: each
    sequence's ceil(len / part_len) parts of equal whole-tile counts instead (the last part
    of a sequence ends at its length; no more parts than tiles); sms: the blocks in snake
    order, the longest `sms` first, then the next `sms` shortest first, and so on (a block
    per SM per round: an SM's second block is short where its first is long)."""
    lens = lens.astype(np.int64)
    if tile_t is None:
        work, _, _ = tc_work_list(lens, part_len)
        seq, part = work[:, 0].astype(np.int64), work[:, 1].astype(np.int64)
        start = part * part_len
        end = np.minimum(lens[seq], start + part_len)
    else:
        tiles = -(-lens // tile_t)
        nparts = np.minimum(-(-lens // part_len), tiles)   # (no empty part)
        seq = np.repeat(np.arange(lens.size), nparts)
        part = np.arange(seq.size) - np.repeat(np.cumsum(nparts) - nparts, nparts)
        base, extra = tiles[seq] // nparts[seq], tiles[seq] % nparts[seq]
        first_tile = part * base + np.minimum(part, extra)   # the first `extra` parts: +1 tile
        start = first_tile * tile_t
        end = np.minimum(lens[seq], (first_tile + base + (part < extra)) * tile_t)
        order = np.argsort(-(end - start), kind="stable")
        seq, start, end = seq[order], start[order], end[order]
    if sms:
        order = np.arange(seq.size)
        for r0 in range(sms, seq.size, 2 * sms):   # every other round, shortest first
            order[r0:r0 + sms] = order[r0:r0 + sms][::-1]
        seq, start, end = seq[order], start[order], end[order]
    return _segments(seq, start, end, np.arange(seq.size + 1), lens.size,
                     part_len if tile_t is None else int((end - start).max()))


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
    """(scheme, Segments) of a plan on `cfg` (a decode_plan.TCConfig): the PTX kernels
    (decode_mma.cu, decode_mma_rows.cu) take `scheme`, else TC_SCHEME, but "items" when
    num_splits is given or when the sequences unsplit need no more blocks than one wave
    holds and that wave is even: its longest partition at most ONE_WAVE_ITEMS_MAX balanced
    ranges (then choose_tc_part_len cuts them into one wave of equal partitions; measured,
    H200: MQA 16/1 0.0398 against 0.0438 balanced, 8 x 32k 0.263 / 0.266, 1 x 32k 0.0516 /
    0.0524), or where cfg.scheme says (decode_plan.ROWS_STATIC_CODES_SCHEME);
    decode_tc.cu always "items". Balanced: `ranges` per KV head x
    row chunk (None: one per resident block slot x TC_RANGES_PER_SLOT); items: partitions by
    choose_tc_part_len."""
    # rounded down: one range more than the slots hold is a second wave of one range (D64 GQA
    # 32/8, 3 blocks per SM: 50 x 8 ranges for 396 slots ran 0.214 ms, the 4 blocks of the
    # second wave starting at 132 us; NOTES.md, session 4)
    ranges = ranges or max(1, int(TC_RANGES_PER_SLOT * resident * sms // grid_y))
    part_len = None   # (items' partitions: computed once, where needed)
    if cfg.impl == "wmma":
        scheme = "items"
    elif not scheme:
        even_wave = False
        if num_splits is None and lens.size * grid_y <= resident * sms:   # unsplit: one wave
            part_len = choose_tc_part_len(lens, grid_y, sms, max_parts, None, resident,
                                          cfg.blocks_per_sm)
            even_wave = min(part_len, int(lens.max())) <= (
                ONE_WAVE_ITEMS_MAX * balanced_range_tokens(lens, cfg.tile_t, ranges))
        scheme = ("items" if num_splits is not None or even_wave
                  else cfg.scheme or TC_SCHEME)
    if scheme == "balanced":
        return scheme, balanced_segments(lens, cfg.tile_t, ranges, max_parts)
    part_len = part_len or choose_tc_part_len(lens, grid_y, sms, max_parts, num_splits, resident,
                                              cfg.blocks_per_sm)
    auto = num_splits is None   # (num_splits=n: the longest sequence in exactly n parts)
    return scheme, item_segments(lens, part_len,
                                 tile_t=cfg.tile_t if TC_ITEMS_EVEN and auto else None,
                                 sms=sms if TC_ITEMS_SNAKE and auto else None)


def tc_token_reach(lens: np.ndarray, tile_t: int, segs: np.ndarray | None = None,
                   part_len: int | None = None) -> np.ndarray:
    """Per sequence, the largest token count (int64) a tensor-core kernel computes in int32.
    segs (the PTX kernels' segments): a segment's tile cursor steps to the tile past its last
    (kernels/decode_tc_tiles.cuh, advance_tile's t0 + TILE_T; last_of_segment's the same).
    part_len (decode_tc.cu's items, tc_work_list): the last partition's last tile ends at
    start + ntiles x TILE_T - 1, and every block counts its sequence's partitions as
    seq_len + part_len - 1."""
    lens = lens.astype(np.int64)
    if segs is not None:
        start, end = segs[:, 1].astype(np.int64), segs[:, 2].astype(np.int64)
        reach = np.zeros(lens.size, np.int64)
        np.maximum.at(reach, segs[:, 0], start + -(-(end - start) // tile_t) * tile_t)
        return reach
    last = (-(-lens // part_len) - 1) * part_len   # the last partition's first token
    return np.maximum(last + -(-(lens - last) // tile_t) * tile_t - 1, lens + part_len - 1)


def check_tc_int32(cfg, lens: np.ndarray, segments: Segments, max_page: int,
                   page_size: int, compressed: bool) -> None:
    """Refuse a plan on `cfg` (a decode_plan.TCConfig) whose int32 token counts wrap
    (tc_token_reach: past 2^31 - 1 a cursor goes negative and keeps streaming tiles, reading
    the block table before its row) or, over compressed pages, whose 32-bit unsigned cache
    slots do (copy_tile's COPY_SLOTS: page id x page_size + place, up to 2^32 - 1)."""
    wmma = cfg.impl == "wmma"
    reach = tc_token_reach(lens, cfg.tile_t, None if wmma else segments.segs,
                           segments.range_tokens if wmma else None)
    b = int(reach.argmax())
    if reach[b] > INT32_MAX:
        parts = f" in partitions of {segments.range_tokens}" if wmma else ""
        fits = 2**31 - max(cfg.tile_t - 1, segments.range_tokens) if wmma else 2**31 - cfg.tile_t
        what = ("its last tile or its partitions' count reaches" if wmma
                else "the tile past its last would start at")
        raise ValueError(f"seq_lens[{b}]: {int(lens[b])} tokens{parts}: the tensor-core kernel "
                         f"({cfg.source}.cu, tiles of {cfg.tile_t}) counts a sequence's tokens "
                         f"in int32, and {what} {int(reach[b])}, past 2^31 - 1 (up to {fits} "
                         f"tokens{' with these partitions' if wmma else ''} always fit)"
                         f"{_wmma_way_out(lens, cfg) if wmma else ''}")
    if compressed and (max_page + 1) * page_size > 2**32:
        raise ValueError(f"block_tables: page {max_page} x page_size {page_size} is past the "
                         f"tensor-core kernel's 32-bit cache slots over compressed pages "
                         f"(page x page_size + place, at most 2^32 - 1)")


def _wmma_way_out(lens: np.ndarray, cfg) -> str:
    """What a plan on decode_tc.cu refused by check_tc_int32 can do instead: the fewest
    partitions of the longest sequence whose counts fit (num_splits: the automatic count is
    set by the GPU's SMs, not by the int32 counts), or, where even the most its merge holds
    (tc_max_parts) do not fit, the simt kernel."""
    max_parts = tc_max_parts(cfg.rows, cfg.kv_bytes)

    def fits(lens: np.ndarray, parts: int) -> bool:   # the longest cut in `parts` (num_splits)
        part_len = dp.cut_longest(int(lens.max()), parts)
        return int(tc_token_reach(lens, cfg.tile_t, part_len=part_len).max()) <= INT32_MAX
    if fits(lens, max_parts):
        least = _least(lambda k: fits(lens, k), 1, max_parts)
        return f"; num_splits={least} cuts them short enough"
    most = _least(lambda n: not fits(np.array([n]), max_parts), 1, INT32_MAX) - 1
    way = ("plan with kernel='simt' for longer sequences" if int(lens.max()) <= SIMT_MAX_TOKENS
           else f"no kernel counts that many tokens (the simt kernel at most {SIMT_MAX_TOKENS})")
    return (f"; the kernel merges at most {max_parts} partitions of a sequence, so it counts at "
            f"most {most} tokens: {way}")


def _least(ok, lo: int, hi: int) -> int:
    """The least k in [lo, hi] with ok(k), ok false below it and true from it on; hi + 1
    where ok holds nowhere in [lo, hi]."""
    return lo + bisect.bisect_left(range(lo, hi + 1), True, key=ok)
