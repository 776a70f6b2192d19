"""Split-K decode in float64: cut each sequence into partitions, attend per partition, merge.

A decode step has one query per sequence and head, so a short batch of long sequences gives
the GPU too few blocks. Split-K (flash-decoding, vLLM's v2 kernel, `kernels/decode.cu`) cuts
each sequence into partitions of `part_len` tokens, runs one block per partition, and merges.
Partition p of a sequence, over its scaled scores s_j and values v_j, yields three things:

    m_p = max_j s_j        l_p = sum_j exp(s_j - m_p)        o_p = sum_j exp(s_j - m_p) v_j / l_p

(o_p is that partition's own softmax average). The merge puts them on one scale:

    m = max_p m_p,   w_p = l_p * exp(m_p - m),   out = sum_p w_p o_p / sum_p w_p

which is exactly softmax over all tokens: w_p is partition p's share of the full sum of
exp(s_j - m). These are the oracles of lesson 06 and of its workbook's checks.
"""
from __future__ import annotations

import numpy as np

from .addressing import gather_kv_reference
from .backend import to_numpy
from .validate import check_attention_inputs, check_int
from .validate_scale import resolve_scale


def partition_bounds(seq_len: int, part_len: int) -> list[tuple[int, int]]:
    """[(start, end), ...]: the half-open token ranges of a sequence's partitions, in order.
    Every token is in exactly one; the last one is short when part_len does not divide."""
    seq_len = check_int(seq_len, "seq_len", minimum=0)
    part_len = check_int(part_len, "part_len", minimum=1)
    return [(start, min(seq_len, start + part_len)) for start in range(0, seq_len, part_len)]


def partial_state(scores, values) -> tuple[float, float, np.ndarray]:
    """(m, l, o) of one partition: its max score, sum of exp(score - m), and softmax average."""
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    m = float(scores.max())
    weights = np.exp(scores - m)
    return m, float(weights.sum()), weights @ values / weights.sum()


def reference_partials(q, k_cache, v_cache, block_tables, seq_lens, part_len: int,
                       scale=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every partition's (m, l, o) of a decode batch, in float64.

    Returns m, l [batch, num_heads, max_parts] and o [batch, num_heads, max_parts, head_dim],
    max_parts = ceil(max(seq_lens) / part_len). Partitions past a sequence's end hold
    m = -inf, l = 0 and o = NaN: they do not exist, and a merge must not read them.
    """
    shapes = check_attention_inputs(q, k_cache, v_cache, block_tables, seq_lens, mode="decode")
    part_len = check_int(part_len, "part_len", minimum=1)
    scale = resolve_scale(scale, shapes.head_dim)
    q, tables, lens = to_numpy(q).astype(np.float64), to_numpy(block_tables), to_numpy(seq_lens)
    max_parts = -(-int(lens.max()) // part_len) if lens.size else 0
    rows = (shapes.batch, shapes.num_heads, max_parts)
    m, l = np.full(rows, -np.inf), np.zeros(rows)
    o = np.full(rows + (shapes.head_dim,), np.nan)
    for b in range(shapes.batch):
        keys, values = gather_kv_reference(k_cache, v_cache, tables[b], int(lens[b]))
        for h in range(shapes.num_heads):
            kv_head = h // shapes.group_size
            scores = keys[:, kv_head].astype(np.float64) @ q[b, h] * scale
            for p, (start, end) in enumerate(partition_bounds(int(lens[b]), part_len)):
                m[b, h, p], l[b, h, p], o[b, h, p] = partial_state(
                    scores[start:end], values[start:end, kv_head])
    return m, l, o


def merge_partials(m, l, o, num_parts=None) -> np.ndarray:
    """Merge partition states into the attention output, in float64.

    m, l [..., P]; o [..., P, head_dim] -> [..., head_dim]. With `num_parts` (an int array
    of the leading shape, or an int), only the first num_parts partitions of each row are
    read; the rest may hold anything (NaN included); a row of 0 partitions is NaN (there is no
    softmax over no score). Refused by name: states whose shapes disagree (NumPy's broadcast
    error named none of them), a num_parts that is no integer (1.5 read two partitions) and
    counts below 0 or past the P partitions held."""
    m, l, o = (np.asarray(x, dtype=np.float64) for x in (m, l, o))
    if m.ndim == 0 or l.shape != m.shape or o.shape[:-1] != m.shape:
        raise ValueError(f"m, l, o: expected m and l of one shape [..., P] and o of that shape "
                         f"plus head_dim, got {m.shape}, {l.shape} and {o.shape}")
    if num_parts is not None:
        counts = np.asarray(num_parts)
        if counts.dtype.kind not in "iu":
            raise TypeError(f"num_parts: expected an int or an int array (partitions per "
                            f"row), got {counts.dtype.name} values")
        try:
            fits = np.broadcast_shapes(counts.shape, m.shape[:-1]) == m.shape[:-1]
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"num_parts: expected a shape that broadcasts to m's rows "
                             f"{m.shape[:-1]}, got {counts.shape}")
        outside = (counts < 0) | (counts > m.shape[-1])
        if outside.any():   # a count past P read only P partitions, a negative one none
            at = tuple(int(i) for i in np.argwhere(outside)[0])
            raise ValueError(f"num_parts{list(at) if at else ''}: expected a count from 0 to "
                             f"{m.shape[-1]} (the partitions m holds), got {int(counts[at])}")
    used = np.arange(m.shape[-1]) < (m.shape[-1] if num_parts is None
                                     else np.asarray(num_parts)[..., None])
    # NaN in unused partitions is dropped below; a row of none is 0 / 0
    with np.errstate(invalid="ignore"):
        m_all = np.where(used, m, -np.inf).max(axis=-1, keepdims=True)
        w = np.where(used, l * np.exp(m - m_all), 0.0)
        o = np.where(used[..., None], o, 0.0)
        return (w[..., None] * o).sum(axis=-2) / w.sum(axis=-1)[..., None]
