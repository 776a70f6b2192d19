"""The bottom-right causal mask of packed prefill, in NumPy (the oracle of lesson 10's checks
and the source of its pictures).

Sequence b's new tokens are rows `qo_indptr[b]:qo_indptr[b+1]` of the packed q and are its
LAST q_len tokens (`seq_lens[b]` counts them too): new query i sits at position
`seq_len - q_len + i` and sees keys 0 .. that position. This covers an all-new prompt
(q_len == seq_len: the usual lower triangle), a chunk over a cached prefix, and a decode
token (q_len 1: every key).
"""
from __future__ import annotations

import numpy as np

from .validate import check_int, check_memory


def causal_mask(q_len: int, seq_len: int) -> np.ndarray:
    """bool [q_len, seq_len]: True where new query i may see key j (j <= seq_len - q_len + i)."""
    # by name, before the array is made: a float made float ranges, a q_len past seq_len rows
    # that see no key, and 2**31 rows took 16 GB of indices: the process was killed, no error
    seq_len = check_int(seq_len, "seq_len", minimum=0)
    q_len = check_int(q_len, "q_len", minimum=0, maximum=seq_len)
    check_memory(q_len * seq_len, "cpu", "q_len, seq_len", f"the {q_len} x {seq_len} mask")
    i = np.arange(q_len)[:, None]
    j = np.arange(seq_len)[None, :]
    return j <= seq_len - q_len + i


def packed_masks(qo_indptr, seq_lens) -> list[np.ndarray]:
    """The mask of every sequence of a packed batch, in batch order."""
    q_lens = np.diff(np.asarray(qo_indptr, dtype=np.int64))
    return [causal_mask(int(q), int(n)) for q, n in zip(q_lens, np.asarray(seq_lens))]
