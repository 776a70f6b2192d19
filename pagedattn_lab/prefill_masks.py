"""The bottom-right causal mask of packed prefill, in NumPy (the oracle of lesson 10's checks
and the source of its pictures).

Sequence b's new tokens are rows `qo_indptr[b]:qo_indptr[b+1]` of the packed q and are its
LAST q_len tokens (`seq_lens[b]` counts them too): new query i sits at position
`seq_len - q_len + i` and sees keys 0 .. that position. This covers an all-new prompt
(q_len == seq_len: the usual lower triangle), a chunk over a cached prefix, and a decode
token (q_len 1: every key).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .validate import check_int, check_int_list, check_offsets
from .validate_memory import check_memory


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
    batch = packed_batch(qo_indptr, seq_lens)
    # each mask alone may fit (causal_mask checks it) and all of them together not
    check_memory(batch.cells, "cpu", "qo_indptr, seq_lens", f"the masks' {batch.cells} cells")
    return [causal_mask(int(q), int(n)) for q, n in zip(batch.q_lens, batch.seq_lens)]


class PackedBatch(NamedTuple):
    """A checked packed batch: int64 offsets, lengths, and each sequence's new tokens."""
    indptr: np.ndarray
    seq_lens: np.ndarray
    q_lens: np.ndarray

    @property
    def cells(self) -> int:
        """Cells of all the masks together (q_len x seq_len per sequence), a Python int."""
        return sum(int(q) * int(n) for q, n in zip(self.q_lens, self.seq_lens))


def packed_batch(qo_indptr, seq_lens) -> PackedBatch:
    """(qo_indptr, seq_lens, q_lens) as int64 arrays, refused by name (the entry, and why)
    unless offsets from 0 that never decrease, one length per sequence, and each sequence's
    new tokens its last ones (q_len <= seq_len): else a mask has rows that see no key, or a
    negative q_len is blamed on an argument the caller never passed."""
    indptr = np.asarray(check_int_list(qo_indptr, "qo_indptr", "offset"), dtype=np.int64)
    lens = np.asarray(check_int_list(seq_lens, "seq_lens", "length", minimum=0), dtype=np.int64)
    check_offsets(indptr, "qo_indptr")
    if lens.size != indptr.size - 1:   # (zip() kept the shorter of the two, without a word)
        raise ValueError(f"seq_lens: expected {indptr.size - 1} lengths (one per sequence of "
                         f"qo_indptr), got {lens.size}")
    q_lens = np.diff(indptr)
    bad = np.flatnonzero(q_lens > lens)
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"seq_lens[{b}]: expected at least q_len = {int(q_lens[b])} (the new "
                         f"tokens are the sequence's last), got {int(lens[b])}")
    return PackedBatch(indptr, lens, q_lens)
