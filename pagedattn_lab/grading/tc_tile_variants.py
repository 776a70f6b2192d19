"""Lesson 09 task 2's known-wrong answers: the scores each classic mistake of the
group-as-rows tile step gives on a TileProblem (operand layouts and A's base, the group's
rows, the K tile's cache slot and head, the k0 loop, the accumulator, the leading dimensions,
the store's kv head), each with the hint that names it; checks_tc_decode.py names every one a
learner's scores reproduce.
"""
from __future__ import annotations

import numpy as np

from .checks_tc_rows import TILE
from .compare import ATOL, RTOL
from .kernel_hints import UNSET_FLOAT
from .offset_hints import UNSCALED_PAGES_HINT
from .tc_nan_hints import STEP_PAST_HINT


def tile_variants(prob):
    """(hint, scores or a callable giving them) of each known mistake on `prob`."""
    num_heads, num_kv_heads, head_dim, page_size, seq_len = prob.sizes
    group = num_heads // num_kv_heads
    q64 = np.zeros((num_heads + TILE, head_dim))
    q64[:num_heads] = prob.q
    keys = np.zeros((prob.n_tiles * TILE, num_kv_heads, head_dim))
    keys[:seq_len] = prob.keys

    def rows(heads):
        out = np.zeros((TILE, head_dim))
        out[:group] = q64[heads]
        return out

    def reread(**how):
        return lambda: np.stack([np.stack([
            prob.product(rows(np.arange(group) + j * group), keys[t * TILE:(t + 1) * TILE, j],
                         **how) for t in range(prob.n_tiles)]) for j in range(num_kv_heads)])

    variants = [
        ("K^T is the B operand: a shared K tile of token rows [16][ldm] read as B (head_dim x "
         "tokens) is column-major: fragment<matrix_b, 16, 16, 16, __half, wmma::col_major> "
         "(row_major reads it as K, not K^T).", reread(b_row_major=True)),
        ("Q's tile (row r = query head, column = dimension) is the A operand read "
         "row-major: fragment<matrix_a, 16, 16, 16, __half, wmma::row_major> (col_major reads "
         "its transpose).", reread(a_col_major=True)),
        ("the scores are stored transposed: store_matrix_sync(..., wmma::mem_row_major) puts "
         "row r (query head) at r * 16 and column c (token) at c.",
         lambda: np.swapaxes(prob.expected(), -1, -2)),
        ("query heads j * group .. j * group + group - 1 are the rows of kv head j's tile (a "
         "GQA group is consecutive heads), not j, j + num_kv_heads, ...",
         lambda: prob.expected(q_rows=lambda j: rows(j + num_kv_heads * np.arange(group)))),
        ("the group's query heads are the tile's rows in reverse order: row r is query head "
         "kv_head * group + r (row 0 the group's first head), not kv_head * group + group - 1 "
         "- r.", lambda: prob.expected(q_rows=lambda j: rows(j * group + group - 1 -
                                                             np.arange(group)))),
        ("the Q rows of kv head j are query heads j * group + r: every block used the first "
         "group's heads.", lambda: prob.expected(q_rows=lambda j: rows(np.arange(group)))),
        ("the Q rows of kv head j are query heads j * group + r, not j * num_kv_heads + r "
         "(group = num_heads / num_kv_heads is the step between kv heads' rows).",
         lambda: prob.expected(q_rows=lambda j: rows(j * num_kv_heads + np.arange(group)))),
        ("the Q rows of kv head j are query heads j * group + r, not j + r.",
         lambda: prob.expected(q_rows=lambda j: rows(j + np.arange(group)))),
        ("the K tile of kv head j is read from kv head 0 (every block): offset the cache by "
         "kv_head * head_dim within a token's row.",
         lambda: prob.expected(k_tile=lambda j, t: keys[t * TILE:(t + 1) * TILE, 0])),
        ("row c of tile `tile`'s K tile is token 16 * tile + c: every tile read tokens 0..15 "
         "(add 16 * tile to the token index).",
         lambda: prob.expected(k_tile=lambda j, t: keys[:TILE, j])),
        ("row c of tile `tile`'s K tile is token 16 * tile + c, not tile + c: the tiles "
         "overlapped, each starting one token after the last (multiply the tile by 16).",
         lambda: prob.expected(k_tile=lambda j, t: keys[t:t + TILE, j])),
        ("the tile of kv head j and tokens 16 * tile .. goes to scores + (kv_head * gridDim.x"
         " + tile) * 256 (gridDim.x is the number of tiles), not (tile * gridDim.y + kv_head)"
         " * 256.", lambda: np.swapaxes(prob.expected(), 0, 1).reshape(
             num_kv_heads, prob.n_tiles, TILE, TILE)),
        ("tile = blockIdx.x and kv_head = blockIdx.y (the grid is (tiles, kv heads)): with "
         "the two block axes swapped, each block computes another kv head's tile and stores it "
         "at another tile's place.", lambda: _swapped_axes(prob, rows, keys)),
    ]

    def dims(keep):   # the scores over the dimensions `keep` (bools over head_dim) only
        return lambda: prob.expected(q_rows=lambda j: rows(np.arange(group) + j * group) * keep)

    last = np.arange(head_dim) >= head_dim - TILE
    variants += _paging_variants(prob) + _copy_split_variants(prob) + [
        (STEP_PAST_HINT, lambda: prob.expected(step_past=True)),
        # a loop 16 short and a store inside the loop before its mma_sync store the same sums
        # (two variants, not one several_fit: at head_dim 16 the zero tiles' fit too)
        *[(hint, dims(~last)) for hint in (
            "the k0 loop must step over all of head_dim (k0 = 0, 16, .., head_dim - 16): a "
            "loop that stops 16 short leaves the last 16 dimensions out of every score.",
            "store the accumulator after the k0 loop, once: a store before the last mma_sync "
            "leaves the last 16 dimensions out of every score.")],
        ("the k0 loop must step over all of head_dim (k0 = 0, 16, .., head_dim - 16): yours "
         "made one step, k0 = 0, so every score holds the first 16 dimensions only.",
         dims(np.arange(head_dim) < TILE)),
        # (where the rows it reads past the group are the tile's zeroed rows, this gives
        # the one-step sums above: both are named)
        ("A's tile at step k0 starts at q_tile + k0 (column k0 of row 0), not q_tile + k0 * "
         "16: that reads rows k0 * 16 / head_dim onwards, not the group's rows' dimensions "
         "k0 .. k0 + 15.", reread(a_step=TILE)),
        ("zero the accumulator once, before the k0 loop (fill_fragment(s, 0.0f)): zeroed "
         "inside the loop, each step drops the sum so far and only the last 16 dimensions "
         "are left in every score.", dims(last)),
        # (the CPU executor runs the blocks one after another, tile fastest, and a fragment
        # never filled holds what the last block's accumulator left: its sum so far)
        ("zero the accumulator before the k0 loop (wmma::fill_fragment(s, 0.0f)): a fragment "
         "starts with whatever its registers held, here the previous block's scores, so each "
         "tile's scores carry the sum of the tiles before it.",
         lambda: np.cumsum(prob.expected().reshape(-1, TILE, TILE), axis=0).reshape(
             num_kv_heads, prob.n_tiles, TILE, TILE)),
        # (where the executor's compiler fills a variable never set with a pattern: no score
        # moves a sum that starts at -1.7e38)
        ("zero the accumulator before the k0 loop (wmma::fill_fragment(s, 0.0f)): a fragment "
         "starts with whatever its registers held, here -1.7e38, the CPU executor's fill for "
         "a variable never set, which every score comes out as.",
         lambda: np.full_like(prob.expected(), UNSET_FLOAT))]
    variants.append(("the scores are Q times Q^T: B must be the K tile (load matrix_b from "
                     "k_tile + k0, not from q_tile).",
                     lambda: prob.expected(k_tile=lambda j, t: rows(np.arange(group) +
                                                                    j * group))))
    # every score 0: a tile of zeros (Q's or K's), or no product in the fragment stored (the
    # evidence cannot tell which)
    variants += [(hint, lambda: np.zeros_like(prob.expected())) for hint in (
        "the Q tile was all zeros: rows r < group hold query heads kv_head * group + r, with "
        "group = num_heads / num_kv_heads.",
        "the K tile was all zeros: row c holds token 16 * tile + c's K wherever that token is "
        "below seq_len.",
        "no product reached the scores stored: every k0 step adds A * B into the fragment "
        "that is stored (mma_sync(s, a, b, s)); a k0 loop that never runs, or no mma_sync, "
        "stores fill_fragment's zeros.")]
    for wrong in _wrong_ldms(head_dim):
        variants += [(_ldm_hint(head_dim, wrong), reread(lda=wrong, ldb=wrong)),
                     (_ldm_hint(head_dim, wrong, " (Q's load)"), reread(lda=wrong)),
                     (_ldm_hint(head_dim, wrong, " (K's load)"), reread(ldb=wrong))]
    return variants


def tiles_overlap_hint(got, expected, never) -> str | None:
    """The hint for tiles each stored `stride` floats after the one before, not 256 (16, a
    tile's width, or any other stride below a tile's size: the tiles overlap), where `got` is
    what that leaves: every element holds the score of one of the tiles whose 256 floats
    cover it (which one depends on the order the blocks ran in), and an element no tile
    covers still holds the poison (`never`)."""
    flat, poison = np.asarray(got, np.float64).reshape(-1), never.reshape(-1)
    tiles = expected.reshape(-1, TILE * TILE)
    if len(tiles) < 2:   # one tile overlaps nothing
        return None
    stride = next((s for s in range(1, TILE * TILE) if _overlapped(flat, poison, tiles, s)),
                  None)
    if stride is None:
        return None
    return (f"each tile of scores is 16 x 16 = 256 floats: tile (kv_head, tile) starts at "
            f"scores + (kv_head * gridDim.x + tile) * 256, not * {stride} (there the tiles "
            "overlap, and each overwrites part of the others).")


def _overlapped(flat, poison, tiles, stride: int) -> bool:
    """Whether each element of `flat` is one covering tile's score or, uncovered, poison."""
    covered, fits = np.zeros(flat.size, bool), np.zeros(flat.size, bool)
    for i, tile in enumerate(tiles):   # (a stride under 256 keeps every tile inside flat)
        span = slice(i * stride, i * stride + tile.size)
        covered[span] = True
        fits[span] |= np.isclose(flat[span], tile, rtol=RTOL, atol=ATOL)
    return bool((fits | (~covered & poison)).all())


HEADS_SHARE_TILES_HINT = (
    "the kv head is left out of where the tile goes: tile (kv_head, tile) starts at scores "
    "+ (kv_head * gridDim.x + tile) * 256, not tile * 256 (there every kv head's blocks write "
    "the first kv head's tiles, and the others' are never written).")


def heads_share_tiles(got, expected, never) -> bool:
    """Whether `got` is what the blocks leave when each stores its tile at tile * 256, with
    no kv head in the offset: the tiles of kv heads past 0 are never written, and each of kv
    head 0's holds that tile of one of the kv heads (which one depends on the order the
    blocks ran in)."""
    got = np.asarray(got, np.float64)
    if got.shape[0] < 2 or not never[1:].all():
        return False
    return all(any(np.allclose(got[0, t], expected[j, t], rtol=RTOL, atol=ATOL)
                   for j in range(got.shape[0])) for t in range(got.shape[1]))


ONE_KV_HEAD_HINT = (
    "every block took kv head 0 (its Q rows, its K tile, its place in scores): kv_head is "
    "blockIdx.y, the grid's second dimension, which runs over the kv heads.")


def shared_tile_hints(got, expected, never) -> list[str]:
    """The hints for scores whose kv heads past 0 were never written (heads_share_tiles):
    where kv head 0's tiles hold its own scores, blocks that all took kv head 0 leave them
    too (and the offset without the kv head does where kv head 0's blocks stored last), so
    both are named."""
    if not heads_share_tiles(got, expected, never):
        return []
    own = np.allclose(np.asarray(got, np.float64)[0], expected[0], rtol=RTOL, atol=ATOL)
    return [HEADS_SHARE_TILES_HINT] + [ONE_KV_HEAD_HINT] * own


def _wrong_ldms(head_dim: int):
    """The ldm values a learner gives a shared tile instead of head_dim (rows overlap)."""
    return (n for n in (TILE, 2 * TILE, 4 * TILE) if n < head_dim)


def _ldm_hint(head_dim: int, wrong: int, where: str = "") -> str:
    """The hint of ldm `wrong` in both loads (where "") or in the load(s) `where` names."""
    return (f"ldm is the distance between rows in elements: the shared tiles have rows of "
            f"head_dim = {head_dim} elements here, so ldm = head_dim, not {wrong}" +
            (" (16 is the tile width, not the row length)" if wrong == TILE else "") +
            where + ".")


def one_ldm_hint(fits: list[str], head_dim: int) -> list[str]:
    """`fits` with the hints of a wrong ldm in both loads and in Q's alone made one where
    both fit (one token: K's load gives the same scores whichever its ldm): two sentences
    alike but for "(Q's load)" read as one said twice."""
    for wrong in _wrong_ldms(head_dim):
        both, q_only = _ldm_hint(head_dim, wrong), _ldm_hint(head_dim, wrong, " (Q's load)")
        if both in fits and q_only in fits:
            one = _ldm_hint(head_dim, wrong, ", in Q's load, and in K's if it has the same "
                                             "ldm (K's load gives these scores either way)")
            fits = [one if h == both else h for h in fits if h != q_only]
    return fits


def _copy_split_variants(prob):
    """The tiles' copy loop splitting its index i into (row, dimension) by 16, the tile's
    width, where a row holds head_dim elements: i / 16 and i % 16, or i % 16 and i / 16."""
    num_heads, num_kv_heads, head_dim, _, seq_len = prob.sizes
    group = num_heads // num_kv_heads
    q, keys = prob.q.astype(np.float64), prob.keys.astype(np.float64)
    i = np.arange(TILE * head_dim)

    def copied(r, d):   # what q_tile and k_tile hold when element i is row r, dimension d
        def q_rows(j):
            head = np.minimum(j * group + r, num_heads - 1)
            return np.where(r < group, q[head, d], 0.0).reshape(TILE, head_dim)

        def k_tile(j, t):
            token = t * TILE + r
            return np.where(token < seq_len, keys[np.minimum(token, seq_len - 1), j, d],
                            0.0).reshape(TILE, head_dim)
        return lambda: prob.expected(q_rows=q_rows, k_tile=k_tile)

    rule = ("element i of the tiles' copy is row r = i / head_dim, dimension d = i % head_dim "
            "(a row holds head_dim elements)")
    return [(f"{rule}: yours splits i by 16, the tile's width (r = i / 16, d = i % 16), so "
             "the values land in the wrong rows and columns.", copied(i // TILE, i % TILE)),
            (f"{rule}: yours takes r = i % 16, d = i / 16, which stores the tiles "
             "transposed while load_matrix_sync reads them row by row.",
             copied(i % TILE, i // TILE))]


def _paging_variants(prob):
    """Token t's K read from a wrong slot or KV head (tokens past seq_len still zero): each
    formula with the hint that names it."""
    num_heads, num_kv_heads, head_dim, page_size, seq_len = prob.sizes
    rows = prob.k_cache.reshape(-1, head_dim).astype(np.float64)   # row slot * num_kv + head
    table = prob.block_table.astype(np.int64)

    def read(slot=lambda t: table[t // page_size] * page_size + t % page_size,
             head=lambda j: j, row=lambda slot, head: slot * num_kv_heads + head):
        def k_tile(j, t):
            tokens = np.arange(t * TILE, (t + 1) * TILE)
            live = tokens < seq_len
            out = np.zeros((TILE, head_dim))   # (an IndexError: this row cannot be)
            out[live] = rows[row(slot(tokens[live]), head(j))]
            return out
        return lambda: prob.expected(k_tile=k_tile)

    element = "((slot * num_kv_heads + kv_head) * head_dim + d)"

    spec = "slot = block_table[t / page_size] * page_size + t % page_size"
    return [
        ("the K tile's cache head is kv_head itself (blockIdx.y), not kv_head * group (the "
         "group's first query head): a token's row holds num_kv_heads heads.",
         read(head=lambda j: j * (num_heads // num_kv_heads))),
        (f"token t's K is at {spec}: yours reads slot t, as if the cache were not paged "
         "(look the page up in block_table).", read(lambda t: t)),
        (UNSCALED_PAGES_HINT, read(lambda t: table[t // page_size] + t % page_size)),
        (f"a slot of the cache holds num_kv_heads heads of head_dim each: token t's K for "
         f"kv_head is element {element}; yours reads (slot * head_dim + d), kv head 0's row "
         "of a cache with one head (num_kv_heads and kv_head are left out).",
         read(row=lambda slot, head: slot)),
        (f"a slot of the cache holds num_kv_heads heads of head_dim each: token t's K for "
         f"kv_head is element {element}; yours reads ((slot + kv_head) * head_dim + d), "
         "leaving num_kv_heads out of the slot's stride.",
         read(row=lambda slot, head: slot + head)),
        (f"{spec}: yours swaps / and % (the page is t / page_size, the offset in it "
         "t % page_size).", read(lambda t: table[t % page_size] * page_size + t // page_size)),
        (f"{spec}: yours looks token t's page up as (t - 1) / page_size, so the first "
         "token of every page after the first reads the page before it.",
         # (C's -1 / page_size is 0: every case's pages hold more than one token)
         read(lambda t: table[np.maximum(t - 1, 0) // page_size] * page_size + t % page_size)),
        (f"{spec}: yours looks the page up by the token tile, block_table[tile], as if a page "
         f"held 16 tokens: a tile of 16 tokens spans pages of page_size ({page_size} here), "
         "so token t's page is block_table[t / page_size].",
         read(lambda t: table[t // TILE] * page_size + t % page_size)),
        (f"{spec}: yours looks every token of a tile up in the page of the tile's first "
         "token, block_table[16 * tile / page_size]: a tile of 16 tokens spans pages of "
         f"page_size ({page_size} here), so token t's page is block_table[t / page_size].",
         read(lambda t: table[t // TILE * TILE // page_size] * page_size + t % page_size)),
    ]


def _swapped_axes(prob, rows, keys):
    """The scores of a kernel that reads tile from blockIdx.y and kv_head from blockIdx.x:
    block (x, y) multiplies kv head x's rows by tile y's K and stores it at tile x * gridDim.x
    + y (NaN where no block stores); None where a block's kv head x reads past q or the cache
    (the kernel then faults, or reads what no reference holds)."""
    num_heads, num_kv_heads, head_dim, _, _ = prob.sizes
    group, n_tiles = num_heads // num_kv_heads, prob.n_tiles
    if n_tiles > num_kv_heads:
        return None
    out = np.full((num_kv_heads * n_tiles, TILE, TILE), np.nan)
    padded = np.zeros((num_kv_heads * TILE, num_kv_heads, head_dim))
    padded[:len(keys)] = keys
    for x in range(n_tiles):
        for y in range(num_kv_heads):
            out[x * n_tiles + y] = prob.product(rows(np.arange(group) + x * group),
                                                padded[y * TILE:(y + 1) * TILE, x])
    return out.reshape(num_kv_heads, n_tiles, TILE, TILE)
