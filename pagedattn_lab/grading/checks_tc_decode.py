"""Checks for lesson 09: a GQA group as the rows of a tensor-core tile.

Task 1 (NumPy) lays the query heads of one KV head's group out as the rows of 16-row Q
tiles, zero-padded; groups of 1 to 64 heads, so groups above 16 need several tiles, and a
float32 q besides the fp16 ones (the tiles keep q's dtype, whichever it is; bf16 would be the
natural other one, but ml_dtypes arrays may not cross the grader's wire). Task 2
(CUDA C, WMMA) computes one 16 x 16 tile of scores S = Q K^T for one group and one 16-token
tile of a paged K cache. Its cases use fp16 caches with NaN in every slot no token uses (the
tail of the last page, the pages the table does not point at) and a q buffer followed by NaN
rows, so a read past the group or past seq_len shows; the output is poisoned before launch.
A wrong result is compared with known-wrong variants to name the mistake. One case ends
exactly on a tile's end, where ceil(seq_len / 16) and seq_len / 16 + 1 tiles differ. Task 3
(mask_tile) is in checks_tc_mask.py.
"""
from __future__ import annotations

import numpy as np

from .checks_kernels import _Compiled
from .compare import call_on_copies, describe_difference, diagnose, fmt, ranges
from .faults import describe_kernel_exception
from .kernel_hints import shift_hint
from .kernel_runner import KERNEL_TIMEOUT, poisoned, unwritten
from .report import Case, CheckResult, Mismatch, NotAttempted, run_cases
from .seeds import case_rng
from .source_barriers import barrier_before_loads

TILE = 16    # rows, tokens and head_dim step of one WMMA 16x16x16 tile
WARP = 32


def reference_group_rows(q, kv_head, group):
    """The Q tiles of `kv_head`'s group: [ceil(group / 16), 16, head_dim], rows past the
    group zero, q's dtype."""
    n_tiles = -(-group // TILE)
    tiles = np.zeros((n_tiles * TILE, q.shape[1]), q.dtype)
    tiles[:group] = q[kv_head * group:(kv_head + 1) * group]
    return tiles.reshape(n_tiles, TILE, q.shape[1])


# -- task 1: the group as the rows of Q tiles (NumPy) ----------------------------------------

def _shape_hint(shape, expected, group) -> str:
    n_tiles, _, head_dim = expected
    if len(shape) != 3:
        return (f"return a 3-D array [tiles, 16, head_dim] = {list(expected)}: the group's "
                f"{group} heads padded with zero rows to {n_tiles * TILE}, cut into tiles of 16.")
    if shape[1:] == (head_dim, TILE) and head_dim != TILE:   # (with 16 it looks the same)
        return "the rows of a tile are query heads: [tiles, 16, head_dim], not [tiles, head_dim, 16]."
    if shape[0] < n_tiles:
        return (f"a group of {group} heads needs ceil({group} / 16) = {n_tiles} tiles: heads "
                "16 and up of the group go in the next tiles.")
    if shape[0] > n_tiles and shape[1:] == (TILE, head_dim):
        why = (": group // 16 + 1 is one too many when the group is a multiple of 16."
               if group % TILE == 0 and shape[0] == group // TILE + 1 else ".")
        return (f"a group of {group} heads needs ceil({group} / 16) = {n_tiles} "
                f"tile{'s' * (n_tiles > 1)}, not {shape[0]}{why}")
    if shape[1] != TILE:
        return (f"every tile has 16 rows, whatever the group size: pad the {group} heads with "
                "zero rows (the tensor core multiplies whole 16 x 16 tiles).")
    return f"the tiles are [ceil(group / 16), 16, head_dim] = {list(expected)}."


def _group_variants(q, kv_head, group, num_kv_heads):
    n_tiles = -(-group // TILE)
    d = q.shape[1]

    def laid_out(rows):
        tiles = np.zeros((n_tiles * TILE, d))
        tiles[:group] = rows
        return tiles.reshape(n_tiles, TILE, d)

    mine = q[kv_head * group:(kv_head + 1) * group].astype(np.float64)
    striped = np.zeros((n_tiles * TILE, d))
    for i in range(group):
        striped[(i % n_tiles) * TILE + i // n_tiles] = mine[i]
    return [
        ("a GQA group is consecutive query heads: kv head j serves query heads j * group .. "
         "j * group + group - 1, not j, j + num_kv_heads, ...",
         lambda: laid_out(q[kv_head::num_kv_heads][:group])),
        ("the group of kv head j starts at query head j * group (here "
         f"{kv_head} * {group} = {kv_head * group}), not at head 0.",
         lambda: laid_out(q[:group])),
        ("the group starts at query head kv_head * group, not kv_head.",
         lambda: laid_out(q[kv_head:kv_head + group])),
        ("tile t holds heads 16 t .. 16 t + 15 of the group, in order (row r of tile t is "
         "head 16 t + r of the group), not every n_tiles-th head.",
         lambda: striped.reshape(n_tiles, TILE, d)),
        ("the tiles are transposed (head_dim is 16 here, so the shape cannot show it): row r "
         "of a tile is query head r, its columns the head's dims: [tiles, 16, head_dim].",
         lambda: laid_out(mine).swapaxes(1, 2) if d == TILE else None),
    ]


def _group_case(fn, seed, num_heads, num_kv_heads, head_dim, kv_head, dtype) -> None:
    rng = case_rng(seed)
    group = num_heads // num_kv_heads
    # No zero rows; fp16 values in any dtype, so tiles of another dtype differ only in dtype.
    q = (rng.standard_normal((num_heads, head_dim)) + 3.0).astype(np.float16).astype(dtype)
    expected = reference_group_rows(q, kv_head, group)
    got = call_on_copies("group_rows", fn, {"q": q}, kv_head, group)
    if got is None:
        raise Mismatch("returned None", "return the tiles: [ceil(group / 16), 16, head_dim].")
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise Mismatch(f"wrong shape for a group of {group}", _shape_hint(got.shape,
                       expected.shape, group), str(expected.shape), str(got.shape))
    n_tiles = expected.shape[0]
    rows = np.arange(n_tiles * TILE).reshape(n_tiles, TILE) < group
    diff = describe_difference(got, expected, ("tile", "row", "dim"), atol=0, rtol=0,
                               mask=rows[..., None], unwritten=False)
    if diff is not None:
        hint = diagnose(got, expected, _group_variants(q, kv_head, group, num_kv_heads),
                        atol=0, rtol=0, mask=rows[..., None])
        raise Mismatch(diff.message(), hint or f"row r of tile t is query head kv_head * "
                       f"group + 16 t + r = {kv_head * group} + 16 t + r.")
    pad = ~rows
    if pad.any() and not np.all(np.asarray(got, np.float64)[pad] == 0):
        t, r = np.argwhere(pad & np.any(np.asarray(got, np.float64) != 0, axis=-1))[0]
        raise Mismatch(f"padding row {r} of tile {t} (past the group's {group} heads) holds "
                       f"{fmt(np.asarray(got, np.float64)[t, r, 0])}, ... instead of 0",
                       "rows past the group must be zero: they go through the tensor core "
                       "with the rest, and anything there (another head, a copy, NaN) becomes "
                       "a row of scores the kernel must then ignore, or a NaN.")
    if got.dtype != q.dtype:
        raise Mismatch(f"the tiles are {got.dtype}; q is {q.dtype}",
                       "keep q's dtype (np.zeros(..., dtype=q.dtype)), whichever it is: the "
                       "tiles are q's rows, to be fed to the tensor core as they are.",
                       str(q.dtype), str(got.dtype))


def group_rows(fn) -> CheckResult:
    """Check `fn(q, kv_head, group)` -> Q tiles [ceil(group / 16), 16, head_dim]."""
    fp16, fp32 = np.dtype(np.float16), np.dtype(np.float32)
    specs = [   # name, (num_heads, num_kv_heads, head_dim, kv_head, q's dtype)
        ("MHA: group 1, one row used", (4, 4, 16, 2, fp16)),
        ("GQA 32/8: group 4, kv head 3", (32, 8, 32, 3, fp16)),
        ("group 7, kv head 1", (14, 2, 16, 1, fp16)),
        ("MQA 16/1: one full tile", (16, 1, 32, 0, fp16)),
        ("group 17: a second tile with one row", (34, 2, 16, 1, fp16)),
        ("group 48: three full tiles", (48, 1, 16, 0, fp16)),
        ("group 64, kv head 1: four tiles", (128, 2, 32, 1, fp16)),
        ("float32 q, group 5, kv head 2: the tiles keep q's dtype", (15, 3, 32, 2, fp32)),
    ]
    return run_cases("group_rows", "group_rows: a GQA group as the rows of 16-row Q tiles", [
        Case(name, {"num_heads": h, "num_kv_heads": kv, "head_dim": d, "kv_head": j,
                    "dtype": dt.name},
             lambda i=i, h=h, kv=kv, d=d, j=j, dt=dt: _group_case(fn, 90 + i, h, kv, d, j, dt))
        for i, (name, (h, kv, d, j, dt)) in enumerate(specs)])


# -- task 2: the group-as-rows tile step (CUDA C, WMMA) ----------------------------------------

class _TileProblem:
    """One sequence of a paged fp16 cache; unused slots and pages hold NaN; q is followed by
    16 NaN rows (a read past the last group shows as NaN, not a fault)."""

    def __init__(self, seed, num_heads, num_kv_heads, head_dim, page_size, seq_len):
        rng = case_rng(seed)
        n_pages = -(-seq_len // page_size)
        num_pages = n_pages + 3     # table entries past the sequence point at NaN pages
        table = self.block_table = rng.permutation(num_pages)[:n_pages + 2].astype(np.int32)
        self.k_cache = np.full((num_pages, page_size, num_kv_heads, head_dim), np.nan,
                               np.float16)
        keys = rng.standard_normal((seq_len, num_kv_heads, head_dim)).astype(np.float16)
        t = np.arange(seq_len)
        self.k_cache[table[t // page_size], t % page_size] = keys
        self.q_buffer = np.full((num_heads + TILE, head_dim), np.nan, np.float16)
        self.q_buffer[:num_heads] = rng.standard_normal((num_heads, head_dim))
        self.q, self.keys = self.q_buffer[:num_heads], keys
        self.sizes = (num_heads, num_kv_heads, head_dim, page_size, seq_len)
        self.n_tiles = -(-seq_len // TILE)

    def expected(self, q_rows=None, k_tile=None):
        """Scores [num_kv_heads, n_tiles, 16, 16] in float64; q_rows(kv) and k_tile(kv)
        give the two 16-row operands (default: the spec's)."""
        num_heads, num_kv_heads, head_dim, _, seq_len = self.sizes
        group = num_heads // num_kv_heads
        out = np.zeros((num_kv_heads, self.n_tiles, TILE, TILE))
        keys = np.zeros((self.n_tiles * TILE, num_kv_heads, head_dim))
        keys[:seq_len] = self.keys
        for j in range(num_kv_heads):
            qr = q_rows(j) if q_rows else reference_group_rows(
                self.q.astype(np.float64), j, group)[0]
            for t in range(self.n_tiles):
                kt = k_tile(j, t) if k_tile else keys[t * TILE:(t + 1) * TILE, j]
                out[j, t] = self.product(qr, kt)
        return out

    @staticmethod
    def product(q_rows, k_rows, lda=None, ldb=None, b_row_major=False):
        """S = A B over 16-column steps the way load_matrix_sync reads the shared tiles:
        A from q_rows [16, d] with leading dimension lda, B from k_rows [16, d] (token rows)
        read column-major with ldb (or row-major)."""
        d = q_rows.shape[1]
        lda, ldb = lda or d, ldb or d
        qa, ka = np.ravel(q_rows), np.ravel(k_rows)
        s = np.zeros((TILE, TILE))
        r, c = np.meshgrid(np.arange(TILE), np.arange(TILE), indexing="ij")
        for k0 in range(0, d, TILE):
            a = qa[k0 + r * lda + c]                      # a[row, k]
            b = ka[k0 + r * ldb + c] if b_row_major else ka[k0 + c * ldb + r]  # b[k, token]
            s += a @ b
        return s


def _tile_variants(prob):
    num_heads, num_kv_heads, head_dim, _, seq_len = prob.sizes
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
        ("the scores are stored transposed: store_matrix_sync(..., wmma::mem_row_major) puts "
         "row r (query head) at r * 16 and column c (token) at c.",
         lambda: np.swapaxes(prob.expected(), -1, -2)),
        ("query heads j * group .. j * group + group - 1 are the rows of kv head j's tile (a "
         "GQA group is consecutive heads), not j, j + num_kv_heads, ...",
         lambda: prob.expected(q_rows=lambda j: rows(j + num_kv_heads * np.arange(group)))),
        ("the Q rows of kv head j are query heads j * group + r: every block used the first "
         "group's heads.", lambda: prob.expected(q_rows=lambda j: rows(np.arange(group)))),
        ("the Q rows of kv head j are query heads j * group + r, not j + r.",
         lambda: prob.expected(q_rows=lambda j: rows(j + np.arange(group)))),
        ("the K tile of kv head j is read from kv head 0 (every block): offset the cache by "
         "kv_head * head_dim within a token's row.",
         lambda: prob.expected(k_tile=lambda j, t: keys[t * TILE:(t + 1) * TILE, 0])),
    ]
    if head_dim > TILE:
        ld = (f"ldm is the distance between rows in elements: the shared tiles have rows of "
              f"head_dim = {head_dim} elements here, so ldm = head_dim, not 16 (16 is the tile "
              "width, not the row length)")
        variants += [(ld + ".", reread(lda=TILE, ldb=TILE)),
                     (ld + " (Q's load).", reread(lda=TILE)),
                     (ld + " (K's load).", reread(ldb=TILE))]
    return variants


def _tile_launch(prob, out) -> tuple:
    """(grid, args) of the kernel over `prob`, writing its scores into `out`."""
    num_heads, num_kv_heads, head_dim, page_size, seq_len = prob.sizes
    args = [prob.q_buffer, prob.k_cache, prob.block_table, out, np.int32(num_heads),
            np.int32(num_kv_heads), np.int32(head_dim), np.int32(page_size), np.int32(seq_len)]
    return (prob.n_tiles, num_kv_heads), args


def _tile_scores_shape(prob) -> tuple:
    return (prob.sizes[1], prob.n_tiles, TILE, TILE)


def _launch_tile(comp, prob, out):
    grid, args = _tile_launch(prob, out)
    try:
        return comp.get().launch(grid, (WARP,), tuple(args), outputs=(3,))[0]
    except Exception as exc:
        if type(exc).__name__ != "WarpSyncError":
            raise
        lanes = ranges(getattr(exc, "bad_lanes", None) or [])
        raise Mismatch(f"a WMMA call can never complete: {exc}",
                       f"lanes {lanes} did not reach it: load_matrix_sync, mma_sync and "
                       "store_matrix_sync are warp-wide, every lane of the warp must call "
                       "them (the lanes share the tile's elements). A lane with no row to "
                       "load still takes part: guard its loads with an if, not a return.") \
            from exc


def _tile_case(comp, seed, *sizes) -> None:
    prob = _TileProblem(seed, *sizes)
    num_heads, num_kv_heads, head_dim, page_size, seq_len = sizes
    group = num_heads // num_kv_heads
    shape = _tile_scores_shape(prob)
    got = _launch_tile(comp, prob, poisoned(shape))
    never = unwritten(got)
    if never.all() and "TODO" in comp.source:
        raise NotAttempted("the kernel wrote nothing (scores still hold the NaN the check "
                           "filled them with): write the kernel body where the // TODO is")
    expected = prob.expected()
    axes = ("kv_head", "token_tile", "row", "token")
    row_ok = np.arange(TILE) < group
    tok_ok = (np.arange(prob.n_tiles)[:, None] * TILE + np.arange(TILE)) < seq_len
    valid = row_ok[None, None, :, None] & tok_ok[None, :, None, :]
    diff = describe_difference(got, expected, axes, mask=valid, unwritten=never)
    if diff is not None:
        j, t, _, _ = diff.first()
        hint = diagnose(got, expected, _tile_variants(prob), mask=valid,
                        nan_is_evidence=False) or shift_hint(comp.source, {
                            "num_kv_heads": num_kv_heads, "page_size": page_size,
                            "head_dim": head_dim, "num_heads / num_kv_heads": group})
        raise Mismatch(diff.message() + f"\nTile (kv head {j}, tokens {t * TILE}.."
                       f"{t * TILE + 15}) is block ({t}, {j}); its rows are query heads "
                       f"{j * group}..{j * group + group - 1}.",
                       hint or "S[r][c] = q[kv_head * group + r] . k(token 16 * tile + c, "
                               "kv_head), summed over all head_dim dimensions.")
    got64 = np.asarray(got, np.float64)
    if never.any():   # (only outside `valid` here: describe_difference saw the rest)
        _, t, r, c = bad = np.argwhere(never)[0]
        raise Mismatch(f"{int(never.sum())} scores were never written, the first at row {r}, "
                       f"token {t * TILE + c} of tile ({bad[0]}, {t}) (seq_len {seq_len}, "
                       f"group {group}): it still holds the NaN the check filled scores with",
                       "store the whole 16 x 16 tile (store_matrix_sync of the accumulator): "
                       "rows past the group and tokens past seq_len come out 0 from the zeroed "
                       "Q and K rows, and the caller reads them.")
    # Q's padding shows on the tokens in the cache; past seq_len a K row that was not zeroed
    # makes every row wrong, padding rows included (that is the next test's evidence).
    pad_rows = np.broadcast_to(~row_ok[None, None, :, None] & tok_ok[None, :, None, :],
                               shape)
    if (got64[pad_rows] != 0).any():
        bad = np.argwhere(pad_rows & (got64 != 0))[0]
        raise Mismatch(f"row {bad[2]} (past the group's {group} heads) of tile ({bad[0]}, "
                       f"{bad[1]}), token {bad[1] * TILE + bad[3]}: expected 0, got "
                       f"{fmt(got64[tuple(bad)])}",
                       f"zero the Q rows past the group ({group}..15) in shared memory: "
                       "they are multiplied with the rest, and what is there (the next "
                       "group's heads, q's NaN tail, whatever shared memory held) becomes "
                       "their scores.")
    past = ~tok_ok[None, :, None, :] & np.ones(shape, bool)
    if (got64[past] != 0).any():
        bad = np.argwhere(past & (got64 != 0))[0]
        token = bad[1] * TILE + bad[3]
        raise Mismatch(f"the score of token {token} (seq_len is {seq_len}), row {bad[2]} of "
                       f"tile ({bad[0]}, {bad[1]}): expected 0, got {fmt(got64[tuple(bad)])}",
                       "tokens at or past seq_len are not in the cache (their slots and "
                       "table entries hold NaN or other data here): load zeros into their K "
                       "rows (and do not read block_table for them).")


def _barrier_case(comp: _Compiled, source: str) -> None:
    """A GPU run cannot show a missing __syncwarp() (the lanes usually run in step). On the
    CPU executor every case above ran race-checked, and a load of what another lane copied
    with no __syncwarp() between failed there, naming the two lanes. On a GPU one small case
    runs race-checked on the CPU executor too; where it cannot run (no compiler, a construct
    the executor lacks), the source check decides."""
    kernel = comp.get()
    if kernel.racecheck or _race_checked_on_the_cpu(kernel):
        return
    missing_barrier_in_source(source)


def _race_checked_on_the_cpu(kernel) -> bool:
    """True when the first case ran race-free on the CPU executor; a Mismatch naming the
    lanes when it raced; False when it could not run there."""
    prob = _TileProblem(_TILE_SEED, *_TILE_SPECS[0][1])   # case 1's problem
    grid, args = _tile_launch(prob, poisoned(_tile_scores_shape(prob)))
    try:
        kernel.count(grid, (WARP,), args, racecheck=True, timeout=KERNEL_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure but a race: the source decides
        if type(exc).__name__ == "SharedMemoryRace":
            message, hint = describe_kernel_exception(exc)
            raise Mismatch(f"case 1 run on the CPU executor with its race check (a GPU run "
                           f"cannot show it): {message}", hint) from None
        return False
    return True


def missing_barrier_in_source(source: str) -> None:
    """Mismatch unless source_barriers finds a barrier between the copies and the loads."""
    if barrier_before_loads(source, "tc_tile_scores"):
        return
    raise Mismatch("no __syncwarp() between the copies into shared memory and the first "
                   "wmma::load_matrix_sync",
                   "the lanes load fragment elements that other lanes copied into q_tile and "
                   "k_tile: call __syncwarp() after the copies, before the first "
                   "load_matrix_sync. The scores can come out right without it (here, and "
                   "often on a GPU), so the check reads the source.",
                   "__syncwarp() after the copies", "none")


_TILE_SEED = 95
_TILE_SPECS = [   # name, (num_heads, num_kv_heads, head_dim, page_size, seq_len)
    ("group 1 (MHA), head_dim 16, one partial tile", (2, 2, 16, 4, 13)),
    ("GQA 8/2, head_dim 64, 37 tokens on pages of 8", (8, 2, 64, 8, 37)),
    ("MQA 16/1: all 16 rows, 17 tokens", (16, 1, 32, 16, 17)),
    ("group 3, head_dim 128, pages of 5, one token", (12, 4, 128, 5, 1)),
    ("GQA 24/4, head_dim 48, pages of 3", (24, 4, 48, 3, 40)),
    ("group 5, 32 tokens: seq_len ends on a tile's and a page's end", (10, 2, 32, 8, 32)),
    ("3 KV heads (not a power of two), group 2, pages of 6", (6, 3, 32, 6, 21)),
]


def tc_tile_scores(source: str, device: str = "auto") -> CheckResult:
    """Check `tc_tile_scores`: grid (ceil(seq_len / 16), num_kv_heads), block (32,)."""
    comp = _Compiled(source, "tc_tile_scores", device)
    cases = [Case(name, dict(zip(("num_heads", "num_kv_heads", "head_dim", "page_size",
                                  "seq_len"), sizes)),
                  lambda i=i, sizes=sizes: _tile_case(comp, _TILE_SEED + i, *sizes))
             for i, (name, sizes) in enumerate(_TILE_SPECS)]
    cases.append(Case("the copies finish before the WMMA loads", {},
                      lambda: _barrier_case(comp, source)))
    return run_cases("tc_tile_scores", "tc_tile_scores: S = Q K^T for one group and 16 "
                     "tokens on tensor cores", cases, lint=comp.get)
