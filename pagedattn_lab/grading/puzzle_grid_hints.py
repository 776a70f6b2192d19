"""What puzzle 3 of workbook 03 (add_bias, checks_onramp.py) says when its output differs
from the spec: the hints read off the output, each a callable (diff) -> str | None that
names one mistake only where the output is that mistake's, for puzzle_hints.check_output."""
from __future__ import annotations

import numpy as np

from ..words import ranges
from .puzzle_hints import unwritten_only


def grid_hints(got, x, bias, expected, grid, block) -> list:
    """The hints, first to last, for `got` [rows, cols] against `expected`, from x [rows,
    cols] and bias [cols], launched on `grid` blocks of `block` (x, y) threads."""
    rows, cols = got.shape
    bx, by = block
    r, c = np.indices((rows, cols))

    def bias_by_row(diff):
        if rows > cols:
            return None
        wrong = x.astype(np.float64) + bias[:rows, None]
        return ("bias is indexed by the row: out[r, c] adds bias[c], the column's bias."
                if np.allclose(got, wrong, atol=1e-5) else None)

    def one_axis_only(diff):
        # the rows (or columns, or both) past the first block's never written, and only
        # those: a block index left out of that side's coordinate
        row, col = ("row = blockIdx.y * blockDim.y + threadIdx.y",
                    "column = blockIdx.x * blockDim.x + threadIdx.x")
        forms = [(r >= by, f"only rows 0-{by - 1} were written: {row}."),
                 (c >= bx, f"only columns 0-{bx - 1} were written: {col}."),
                 ((r >= by) | (c >= bx), f"only rows 0-{by - 1} and columns 0-{bx - 1} were "
                                         f"written: {row} and {col}.")]
        return next((text for mask, text in forms
                     if mask.any() and np.array_equal(diff.unwritten, mask)), None)

    # row = blockIdx.y * blockDim.x + threadIdx.y: each block's rows start bx apart, so
    # the last bx - by rows of every step of bx are never written, the others are right
    stepped = (r % bx < by) & (r // bx < grid[1])
    row_step_swapped = unwritten_only(
        ~stepped, f"rows {ranges(np.flatnonzero(~stepped[:, 0]))} were never written: a "
                  f"block's first row is blockIdx.y * blockDim.y ({by} rows a block), not "
                  f"blockIdx.y * blockDim.x ({bx}).")

    written = ~np.isnan(got)
    # written by x and y exchanged: (gx * bx) rows, (gy * by) columns; by a guard with the
    # other side's (smaller) bound: col < rows, row < cols. Each is named only if it alone fits.
    exchanged = (r < grid[0] * bx) & (c < grid[1] * by)
    bounds = {("column", "cols", "rows", rows): c < rows, ("row", "rows", "cols", cols): r < cols}

    def only(mask, others):
        return not mask.all() and np.array_equal(written, mask) and \
            not any(np.array_equal(written, m) for m in others)

    def swapped(diff):
        return ("x and y are exchanged: the grid is (columns, rows), so blockIdx.x / "
                "threadIdx.x give the column and blockIdx.y / threadIdx.y the row."
                if only(exchanged, bounds.values()) else None)

    def bound_swapped(diff):
        return next((f"the {name} guard uses {wrong}: only {name}s 0-{n - 1} were written; "
                     f"guard it with {name} < {right}." for (name, right, wrong, n), mask
                     in bounds.items() if only(mask, [exchanged])), None)

    def bias_misread(diff):
        # x in its place everywhere, the bias wrong: no index of x or out is to blame
        x64 = x.astype(np.float64)
        forms = [("bias was never added: out[r, c] = x[r, c] + bias[c].", x64),
                 ("every element adds bias[0]: the column's bias is bias[c], c = blockIdx.x * "
                  "blockDim.x + threadIdx.x.", x64 + bias[0]),
                 (f"columns {bx} and up add bias[c % {bx}]: bias is indexed by threadIdx.x "
                  "alone; the column is blockIdx.x * blockDim.x + threadIdx.x.",
                  x64 + bias[np.arange(cols) % bx]),
                 ("the bias is subtracted: out[r, c] = x[r, c] + bias[c].", x64 - bias)]
        named = next((text for text, wrong in forms
                      if not np.allclose(wrong, expected, atol=1e-5)
                      and np.allclose(got, wrong, atol=1e-5)), None)
        added = got - x64   # (one row cannot show that the same is added down a column)
        if named or rows < 2 or diff.unwritten.any() or \
                not np.allclose(added, added[:1], atol=1e-5):
            return named
        return ("x is in its place everywhere, but what column c adds is not bias[c]: "
                "out[r, c] = x[r, c] + bias[c].")

    def guard_one_short(diff):
        if (diff.bad != diff.unwritten).any():
            return None
        return next((f"only the last {name}, {size - 1}, was never written: it is the last one "
                     f"that exists, so the guard is {bound} (yours stops one short)."
                     for name, index, size, bound in (("column", c, cols, "col < cols"),
                                                      ("row", r, rows, "row < rows"))
                     if size > 1 and np.array_equal(diff.unwritten, index == size - 1)), None)

    def misplaced(diff):
        if not (diff.bad & ~diff.unwritten).any():
            return None
        return ("values landed on the wrong elements: element (r, c) of a row-major "
                "[rows, cols] matrix is at r * cols + c, in x and in out.")

    return [bias_by_row, bias_misread, swapped, bound_swapped, guard_one_short, one_axis_only,
            row_step_swapped, misplaced]
