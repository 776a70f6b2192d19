"""Lesson 09's tile step: the hints for NaN that came from shared memory no copy wrote (the CPU
executor fills it with NaN), shared by the checks in checks_tc_decode.py."""
from __future__ import annotations

import numpy as np

from .report import several_fit

STEP_PAST_HINT = ("the k0 loop runs one step too far: k0 < head_dim (k0 = 0, 16, .., "
                  "head_dim - 16), not k0 <= head_dim. The step at k0 = head_dim reads 16 "
                  "columns past every row of the tiles: the next row's first 16, and past the "
                  "last row shared memory your copies never wrote.")
SHORT_COPY_HINT = ("the copies stop a row short: row 15 of the Q and K tiles was never written "
                   "(it holds whatever shared memory held, NaN here). The copy loop covers all "
                   "16 rows of a tile: i < 16 * head_dim.")
NAN_READ_HINT = ("a NaN among the scores was read, not computed: q and the cache slots of the "
                 "sequence's tokens hold finite numbers, the check puts NaN in every other "
                 "cache slot and in 16 rows after q, and on the CPU executor shared memory holds "
                 "NaN until your copies write it. Write row r of q_tile and k_tile at r * "
                 "head_dim (not r * MAX_D), load each fragment with ldm = head_dim, the distance "
                 "between those rows, and read only the group's rows and tokens below seq_len.")


def nan_tail_hint(got64, prob) -> str | None:
    """The hint when `got64` is right where it counts and NaN only where the tiles' unwritten
    tail reaches: a k0 step too many, or copies that stop a row short; both where their scores
    are the same (one head per group, head_dim 16)."""
    if not np.isnan(got64).any():
        return None
    fits = [hint for hint, how in ((STEP_PAST_HINT, {"step_past": True}),
                                   (SHORT_COPY_HINT, {"short_copy": True}))
            if np.allclose(got64, prob.expected(**how), equal_nan=True)]
    return several_fit(fits, "scores") if fits else None
