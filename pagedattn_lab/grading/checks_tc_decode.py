"""Checks for lesson 09, task 2: the group-as-rows tile step (CUDA C, WMMA).

The kernel computes one 16 x 16 tile of scores S = Q K^T for one group and one 16-token
tile of a paged K cache. Its cases use fp16 caches with NaN in every slot no token uses (the
tail of the last page, the pages the table does not point at) and a q buffer followed by NaN
rows, so a read past the group or past seq_len shows; the output is poisoned before launch.
A wrong result is compared with known-wrong variants to name the mistake
(tc_tile_variants.py; a store with the wrong ldm is read off a launch with room past the
scores, tc_store_ldm.py). One case ends exactly on a tile's end, where ceil(seq_len / 16) and
seq_len / 16 + 1 tiles differ. Task 1 (group_rows) is in checks_tc_rows.py, task 3
(mask_tile) in checks_tc_mask.py.
"""
from __future__ import annotations

import numpy as np

from ..words import ranges
from .checks_kernels import _Compiled
from .checks_tc_rows import TILE
from .compare import describe_difference, fitting_hints, fmt, positive_factor
from .faults import RACE_ADVICE, describe_kernel_exception, kernel_message
from .kernel_hints import shift_hint
from .kernel_runner import KERNEL_TIMEOUT, poisoned, unwritten
from .report import (Case, CheckResult, Mismatch, NotAttempted, probe, run_cases,
                     several_fit)
from .source_barriers import missing_barrier_in_source
from .stub_params import stub_buffer
from .tc_nan_hints import NAN_READ_HINT, nan_tail_hint
from .tc_store_ldm import store_ldm_hint
from .tc_tile_problem import TileProblem
from .tc_tile_variants import (one_ldm_hint, shared_tile_hints, tile_variants,
                               tiles_overlap_hint)

WARP = 32


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
        raise Mismatch(*_lanes_missed(exc)) from exc


def _lanes_missed(exc) -> tuple[str, str]:
    """(message, hint) for lanes that left before a warp-wide call, named by the call the
    executor stopped at: a barrier before the WMMA calls (__syncwarp) or a WMMA call."""
    lanes = ranges(getattr(exc, "bad_lanes", None) or [])
    op = getattr(exc, "op", None)
    if getattr(exc, "apart_lanes", None):   # (either side of the split may be the WMMA call)
        what, at, this = (f"a WMMA call ({op})", "another WMMA call", "this one") \
            if op.startswith("wmma::") else (f"a {op}()", "a WMMA call", f"this {op}()")
        return (f"{what} has only part of the warp: {exc}",
                f"lanes {ranges(exc.apart_lanes)} were at {at} (the message names it) when the "
                f"others reached {this}: load_matrix_sync, mma_sync and store_matrix_sync are "
                "warp-wide, every lane of the warp makes each call, together (the lanes share "
                "the tile's elements): call them outside any if that only some lanes take.")
    if op is None or op.startswith("wmma::"):
        what, why = "a WMMA call" + (f" ({op})" if op else ""), "did not reach it"
    else:
        what, why = f"a {op}()", (f"returned before the {op}(), which waits for them (its "
                                  "mask names them), and the WMMA calls after it need them too")
    return (f"{what} can never complete: {exc}",
            f"lanes {lanes} {why}: load_matrix_sync, mma_sync and store_matrix_sync are "
            "warp-wide, every lane of the warp must call them (the lanes share the tile's "
            "elements). A lane with no row to load still takes part: guard its loads with an "
            "if, not a return.")


def _tile_diff(prob, got, never):
    """(describe_difference's verdict, the scores that count) of `got` against `prob`'s."""
    group = prob.sizes[0] // prob.sizes[1]
    row_ok = np.arange(TILE) < group
    tok_ok = (np.arange(prob.n_tiles)[:, None] * TILE + np.arange(TILE)) < prob.sizes[4]
    valid = row_ok[None, None, :, None] & tok_ok[None, :, None, :]
    return describe_difference(got, prob.expected(), ("kv_head", "token_tile", "row", "token"),
                               mask=valid, unwritten=never), valid


def _pow2_shift_hint(comp, seed, sizes) -> str | None:
    """shift_hint's hint, when the kernel shifts or masks and gets this very case right once
    every size in it is raised to a power of two: the sizes, not the shift's mere presence
    in the source, are then the evidence."""
    num_heads, num_kv_heads, head_dim, page_size, seq_len = sizes
    group = num_heads // num_kv_heads
    hint = shift_hint(comp.source, {"num_kv_heads": num_kv_heads, "page_size": page_size,
                                    "head_dim": head_dim, "num_heads / num_kv_heads": group})
    if hint is None:
        return None
    kv, group, head_dim, page_size = (1 << (n - 1).bit_length()
                                      for n in (num_kv_heads, group, head_dim, page_size))
    prob = TileProblem(seed, kv * group, kv, head_dim, page_size, seq_len)
    got = probe(_launch_tile, comp, prob, poisoned(_tile_scores_shape(prob)))
    return hint if got is not None and _tile_diff(prob, got, unwritten(got))[0] is None \
        else None


def _scaled_hint(got, expected, valid) -> str | None:
    """A hint when every score that counts is the right one times one factor (a softmax
    scale applied in this step)."""
    valid = np.broadcast_to(valid, expected.shape)
    factor = positive_factor(np.asarray(got, np.float64)[valid], expected[valid], rtol=1e-2,
                             atol=1e-2)
    if factor is None or np.isclose(factor, 1.0, rtol=2e-2):   # (within 2%: fp16 rounding)
        return None
    return (f"every score is Q . K times {fmt(factor)}: this step stores the raw dot "
            "products, with no scale (the softmax scale, 1 / sqrt(head_dim), multiplies the "
            "scores in the next step, Task 3's mask_tile).")


def _tile_name(j, t) -> str:
    """Tile (kv head j, token tile t) spelled with its tokens and its block, (t, j): a bare
    "(j, t)" reads as the block, whose axes are the other way round."""
    return f"tile (kv head {j}, tokens {t * TILE}..{t * TILE + 15}), block ({t}, {j})"


def _tile_case(comp, seed, *sizes) -> None:
    prob = TileProblem(seed, *sizes)
    num_heads, num_kv_heads, _, _, seq_len = sizes
    group = num_heads // num_kv_heads
    shape = _tile_scores_shape(prob)
    try:
        got = _launch_tile(comp, prob, poisoned(shape))
    except Exception as exc:   # a write past the scores: rows stored too far apart?
        hint = stub_buffer(exc) == "scores" and store_ldm_hint(
            lambda out: _launch_tile(comp, prob, out), prob)
        if not hint:
            raise
        raise Mismatch(kernel_message(exc), hint) from exc
    never = unwritten(got)
    if never.all() and "TODO" in comp.source:
        raise NotAttempted("the kernel wrote nothing (scores still hold the NaN the check "
                           "filled them with): write the kernel body where the // TODO is")
    diff, valid = _tile_diff(prob, got, never)
    if diff is not None:
        j, t, _, _ = diff.first()
        # every variant that fits: on case 3 (one token past the first tile, pages of 16)
        # a page of (t - 1) / page_size reads token 0's K for token 16 as a tile start left
        # out does, and naming one would blame a mistake the learner may not have made
        expected = prob.expected()
        fits = one_ldm_hint(list(fitting_hints(got, expected, tile_variants(prob),
                                                mask=valid, nan_is_evidence=False)),
                             prob.sizes[2])
        overlap = tiles_overlap_hint(got, expected, never)
        if overlap:
            fits.append(overlap)
        fits += shared_tile_hints(got, expected, never)
        hint = (several_fit(fits, "scores") if fits else None) \
            or _scaled_hint(got, expected, valid) \
            or _pow2_shift_hint(comp, seed, sizes) \
            or store_ldm_hint(lambda out: _launch_tile(comp, prob, out), prob)
        if hint is None and (np.isnan(np.asarray(got, np.float64)) & ~never).any():
            hint = NAN_READ_HINT   # q and the used cache slots are finite: no product makes a NaN
        raise Mismatch(diff.message() + f"\nThe {_tile_name(j, t)}: its rows are query heads "
                       f"{j * group}..{j * group + group - 1}.",
                       hint or "S[r][c] = q[kv_head * group + r] . k(token 16 * tile + c, "
                               "kv_head), summed over all head_dim dimensions.")
    row_ok = np.arange(TILE) < group
    tok_ok = (np.arange(prob.n_tiles)[:, None] * TILE + np.arange(TILE)) < seq_len
    got64 = np.asarray(got, np.float64)
    nan_tail = nan_tail_hint(got64, prob)   # NaN only from the tiles' unwritten tail
    if never.any():   # (only outside `valid` here: describe_difference saw the rest)
        _, t, r, c = bad = np.argwhere(never)[0]
        raise Mismatch(f"{int(never.sum())} scores were never written, the first at row {r}, "
                       f"token {t * TILE + c} of {_tile_name(bad[0], t)} (seq_len {seq_len}, "
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
        raise Mismatch(f"row {bad[2]} (past the group's {group} heads) of "
                       f"{_tile_name(bad[0], bad[1])}, token {bad[1] * TILE + bad[3]}: "
                       f"expected 0, got {fmt(got64[tuple(bad)])}",
                       nan_tail or
                       f"zero the Q rows past the group ({group}..15) in shared memory: "
                       "they are multiplied with the rest, and what is there (the next "
                       "group's heads, q's NaN tail, whatever shared memory held) becomes "
                       "their scores.")
    past = ~tok_ok[None, :, None, :] & np.ones(shape, bool)
    if (got64[past] != 0).any():
        bad = np.argwhere(past & (got64 != 0))[0]
        token = bad[1] * TILE + bad[3]
        raise Mismatch(f"the score of token {token} (seq_len is {seq_len}), row {bad[2]} of "
                       f"{_tile_name(bad[0], bad[1])}: expected 0, got {fmt(got64[tuple(bad)])}",
                       nan_tail or
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
    prob = TileProblem(_TILE_SEED, *_TILE_SPECS[0][1])   # case 1's problem
    grid, args = _tile_launch(prob, poisoned(_tile_scores_shape(prob)))
    try:
        kernel.count(grid, (WARP,), args, racecheck=True, timeout=KERNEL_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure but a race: the source decides
        if type(exc).__name__ == "SharedMemoryRace":
            message, hint = describe_kernel_exception(exc) or (kernel_message(exc), RACE_ADVICE)
            raise Mismatch(f"case 1 run on the CPU executor with its race check (a GPU run "
                           f"cannot show it): {message}", hint) from None
        return False
    return True


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
