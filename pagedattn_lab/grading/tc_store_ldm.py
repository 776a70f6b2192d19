"""Lesson 09's tile step stored with the wrong leading dimension: where store_matrix_sync put
the tile's rows, read off a launch with room past the scores (checks_tc_decode.py)."""
from __future__ import annotations

import numpy as np

from .checks_tc_rows import TILE
from .kernel_runner import poisoned
from .report import probe

_STORE_ROOM = 16 * 1024   # floats past the scores: rows up to ldm 1024 apart land in it


def store_ldm_hint(launch, prob) -> str | None:
    """The tiles stored with a leading dimension other than 16: launched again with room past
    the scores (`launch(out)` returns what it wrote into `out`), every tile's element (r, c)
    is found at r * ldm + c (or c * ldm + r, column-major) from its tile's start, for one
    such ldm and no other (where rows overlap, either writer's value counts, so zero rows can
    fit a smaller ldm too: then no hint)."""
    got = probe(launch, poisoned((prob.expected().size + _STORE_ROOM,)))
    if got is None:
        return None
    got, want = np.asarray(got, np.float64), prob.expected().reshape(-1, TILE * TILE)
    r, c = np.divmod(np.arange(TILE * TILE), TILE)
    start = np.arange(len(want))[:, None] * TILE * TILE
    fits = [(ldm, layout) for ldm in range(4, _STORE_ROOM // TILE + 1, 4)   # (floats: 4n)
            for layout, at in (("mem_row_major", r * ldm + c), ("mem_col_major", c * ldm + r))
            if ldm != TILE and _stored_at(got, want, (start + at).ravel())]
    return _ldm_hint(prob, *fits[0]) if len(fits) == 1 else None


def _stored_at(got, want, at) -> bool:
    """Every position `at` holds the value of one of the elements stored there."""
    order = np.argsort(at, kind="stable")
    at, ok = at[order], np.isclose(got[at[order]], want.ravel()[order], rtol=2e-4, atol=2e-4)
    first = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
    return bool(np.logical_or.reduceat(ok, first).all())


def _ldm_hint(prob, ldm, layout) -> str:
    num_heads, _, head_dim, _, seq_len = prob.sizes
    named = [name for name, n in (("head_dim", head_dim), ("seq_len", seq_len),
                                  ("num_heads", num_heads), ("MAX_D", 128),
                                  ("16 * gridDim.x", TILE * prob.n_tiles)) if n == ldm]
    what = f" (= {' = '.join(named)} here)" if named else ""
    also = (", and wmma::mem_row_major (yours stores column-major)"
            if layout == "mem_col_major" else "")
    return (f"store_matrix_sync put row r of the tile at r * {ldm}: its ldm is {ldm}{what}. "
            "ldm is the distance between the rows of the destination, and each tile of "
            "scores is 16 x 16 floats, row-major, the tiles one after another: store with "
            f"ldm 16{also}.")
