"""Checks for lesson 09, task 1: a GQA group as the rows of 16-row Q tiles (NumPy).

The query heads of one KV head's group are laid out as the rows of 16-row Q tiles,
zero-padded; groups of 1 to 64 heads, so groups above 16 need several tiles, and a float32 q
besides the fp16 ones (the tiles keep q's dtype, whichever it is; bf16 would be the natural
other one, but ml_dtypes arrays may not cross the grader's wire). Task 2 (tc_tile_scores) is
in checks_tc_decode.py, task 3 (mask_tile) in checks_tc_mask.py.
"""
from __future__ import annotations

import re

import numpy as np

from ..words import counted
from .escaped_errors import describe_exception
from .compare import call_on_copies, describe_difference, diagnose, fmt, positive_factor
from .report import Case, CheckResult, Mismatch, run_cases
from .seeds import case_rng

TILE = 16    # rows, tokens and head_dim step of one WMMA 16x16x16 tile


def reference_group_rows(q, kv_head, group):
    """The Q tiles of `kv_head`'s group: [ceil(group / 16), 16, head_dim], rows past the
    group zero, q's dtype."""
    n_tiles = -(-group // TILE)
    tiles = np.zeros((n_tiles * TILE, q.shape[1]), q.dtype)
    tiles[:group] = q[kv_head * group:(kv_head + 1) * group]
    return tiles.reshape(n_tiles, TILE, q.shape[1])


# -- task 1: the group as the rows of Q tiles (NumPy) ----------------------------------------

# NumPy's words for an assignment of `group` rows into a slice that holds fewer
_NO_BROADCAST = re.compile(r"could not broadcast input array from shape \((\d+),\s*(\d+)\)"
                           r" into shape \((\d+),\s*(\d+)\)")


def _too_few_rows_hint(exc: ValueError, group: int, head_dim: int) -> str | None:
    """The hint where the group's rows were copied into an array of fewer rows (NumPy's
    broadcast error names both shapes): one tile of 16 for a group above 16, or a count of
    tiles rounded down."""
    shapes = _NO_BROADCAST.search(str(exc))
    if shapes is None:
        return None
    rows, dim, room, room_dim = (int(n) for n in shapes.groups())
    if (rows, dim, room_dim) != (group, head_dim, head_dim) or room >= group:
        return None
    need = -(-group // TILE)
    # (both where the group is 17 to 31: one tile is then group // 16 tiles too)
    why = [text for text, fits in (("one tile", room == TILE),
                                   ("group // 16 tiles, rounded down",
                                    room == group // TILE * TILE)) if fits]
    return (f"the {group} heads of the group were copied into an array of {room} rows"
            + (f" ({' or '.join(why)})" if why else "") + f": a group of {group} needs "
            f"ceil({group} / 16) = {counted(need, 'tile')}, {need * TILE} rows (-(-group // "
            "16) * 16), the rows past the group left zero.")


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
        return (f"a group of {group} heads needs ceil({group} / 16) = "
                f"{counted(n_tiles, 'tile')}, not {shape[0]}{why}")
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
        ("the group's heads are in reverse order: row r of tile t is query head "
         f"kv_head * group + 16 t + r, so row 0 is head {kv_head * group}, the group's "
         "first, not its last.", lambda: laid_out(mine[::-1])),
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
        (f"the group's last head (query head {kv_head * group + group - 1}, row {group - 1}) "
         # (a group of one without its head is tiles of zeros, as tiles never written are)
         f"is missing{': the tiles are all zeros (were they written?)' if group == 1 else ''}"
         ": q[kv_head * group:(kv_head + 1) * group] already stops one past it, so its stop "
         "needs no - 1 (nor the copy tiles[:group - 1]).",
         lambda: laid_out(np.concatenate([mine[:-1], np.zeros((1, d))]))),
        ("the tiles are transposed (head_dim is 16 here, so the shape cannot show it): row r "
         "of a tile is query head r, its columns the head's dims: [tiles, 16, head_dim].",
         lambda: laid_out(mine).swapaxes(1, 2) if d == TILE else None),
    ]


def _factor_hint(got, expected, rows) -> str | None:
    """A hint when the group's rows are the right heads times one factor (q pre-scaled)."""
    factor = positive_factor(np.asarray(got)[rows], np.asarray(expected)[rows], rtol=2e-3)
    # (a real pre-scale, 1/sqrt(head_dim), is far from 1: within 1% it is rounding, not a scale)
    if factor is None or np.isclose(factor, 1.0, rtol=1e-2):
        return None
    return (f"the rows are the right heads times {fmt(factor)}: copy q's rows as they are "
            "(the softmax scale multiplies the scores later, in mask_tile).")


def _next_heads_hint(g64, q, kv_head, group) -> str | None:
    """A hint when the padding rows hold the query heads that follow the group (zeros past
    q's last head): a slice of whole tiles from the group's first head."""
    first = kv_head * group
    pad = g64.reshape(-1, q.shape[1])[group:]
    after = q[first + group:first + group + len(pad)].astype(np.float64)
    if not len(after) or not np.array_equal(pad[:len(after)], after) or \
            np.any(pad[len(after):]):
        return None
    return (f"the rows past the group hold the query heads after it (row {group} is query "
            f"head {first + group}, the next group's): copy only the group's own heads, "
            "q[kv_head * group:(kv_head + 1) * group], and leave the other rows 0.")


def _front_padded_hint(got, q, kv_head, group) -> str | None:
    """A hint when the group's heads fill the last rows and the zeros come first (the
    padding put before the heads, not after)."""
    n_rows = -(-group // TILE) * TILE
    front = np.zeros((n_rows, q.shape[1]))
    front[n_rows - group:] = q[kv_head * group:(kv_head + 1) * group]
    if n_rows == group or not np.array_equal(np.asarray(got, np.float64).reshape(front.shape),
                                             front):
        return None
    return (f"the zero rows come first and the group's heads last (row {n_rows - group} "
            f"holds query head {kv_head * group}): row r of tile t is query head kv_head * "
            "group + 16 t + r, so row 0 holds the group's first head, and the padding goes "
            f"after the heads, in rows {group}..{n_rows - 1}.")


def _check_padding(g64, q, kv_head, group, rows) -> None:
    """The rows past the group are 0; else the first value that is not, a NaN counting as
    not 0. Every value is searched, not each row's first: a row may start with a 0 by chance."""
    if np.all(g64[~rows] == 0):
        return
    t, r, d = np.argwhere(~rows[..., None] & ~(g64 == 0))[0]
    raise Mismatch(f"padding row {r} of tile {t} (past the group's {group} heads) holds "
                   f"{fmt(g64[t, r, d])} at dim {d} instead of 0",
                   _next_heads_hint(g64, q, kv_head, group) or
                   "rows past the group must be zero: they go through the tensor core with "
                   "the rest, and anything there (another head, a copy, NaN) becomes a row of "
                   "scores the kernel must then ignore, or a NaN.")


def _group_case(fn, seed, num_heads, num_kv_heads, head_dim, kv_head, dtype) -> None:
    rng = case_rng(seed)
    group = num_heads // num_kv_heads
    # No zero rows; fp16 values in any dtype, so tiles of another dtype differ only in dtype.
    q = (rng.standard_normal((num_heads, head_dim)) + 3.0).astype(np.float16).astype(dtype)
    expected = reference_group_rows(q, kv_head, group)
    try:
        got = call_on_copies("group_rows", fn, {"q": q}, kv_head, group)
    except ValueError as exc:
        hint = _too_few_rows_hint(exc, group, head_dim)
        if hint is None:
            raise
        raise Mismatch(describe_exception(exc)[0], hint) from exc
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
        hint = _front_padded_hint(got, q, kv_head, group) or diagnose(
            got, expected, _group_variants(q, kv_head, group, num_kv_heads), atol=0, rtol=0,
            mask=rows[..., None])
        raise Mismatch(diff.message(), hint or _factor_hint(got, expected, rows) or
                       f"row r of tile t is query head kv_head * group + 16 t + r = "
                       f"{kv_head * group} + 16 t + r.")
    _check_padding(np.asarray(got, np.float64), q, kv_head, group, rows)
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
