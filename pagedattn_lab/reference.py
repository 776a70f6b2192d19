"""The oracle: paged attention in float64 NumPy, written to be read, not to be fast.

Every kernel, every exercise and every notebook check compares against these two
functions. They walk the block table page by page exactly as the definition says, with no
tricks: for each sequence, collect its keys and values by following its block table, then
take an ordinary softmax of scaled dot products.

    decode:  out[b, h]    = softmax(q[b, h] . K_b[0:len_b]^T * scale) @ V_b[0:len_b]
    prefill: out[b, t, h] = softmax(q[b, t, h] . K_b[0:t+1]^T * scale) @ V_b[0:t+1]   (causal)

Query head h reads KV head h // (num_heads // num_kv_heads) (GQA; MQA when there is one
KV head). Prefill rows at or past seq_lens[b] are zero. Inputs of any float dtype are read
(float16, float32, float64, ml_dtypes' bfloat16) and computed in float64.
"""
from __future__ import annotations

import numpy as np

from .attention_common import bfloat16_dtype, shared_arrays
from .backend import to_numpy
from .validate import (check_array, check_attention_inputs, check_block_tables, check_bool,
                       check_kv_cache, check_offsets, check_query_heads)
from .validate_scale import resolve_scale


def _any_float() -> list:
    """Every float dtype the oracle reads: bfloat16 (ml_dtypes') too, the pages the decode
    wrappers and the prefill wrapper take (a kernel's bfloat16 result would otherwise have no
    oracle but a float32 copy of its inputs). A function: ml_dtypes loads on first use."""
    return [np.float16, np.float32, np.float64, bfloat16_dtype()]


def _sequence_kv(k_cache, v_cache, block_table_row, seq_len: int):
    """Follow one block table row page by page: K and V of one sequence, [len, kv_heads, dim]."""
    page_size = k_cache.shape[1]
    keys, values = [], []
    for virtual_page in range(-(-seq_len // page_size)):
        page = int(block_table_row[virtual_page])
        tokens_here = min(page_size, seq_len - virtual_page * page_size)
        keys.append(k_cache[page, :tokens_here])
        values.append(v_cache[page, :tokens_here])
    head_shape = k_cache.shape[2:]
    if not keys:
        return np.zeros((0,) + head_shape), np.zeros((0,) + head_shape)
    return np.concatenate(keys), np.concatenate(values)


def _softmax_attend(q_rows, keys, values, scale: float, visible=None):
    """softmax(K @ q * scale) @ V for query tokens and all their heads, in float64.

    q_rows [n, num_heads, dim]; keys, values [len, num_kv_heads, dim]; query row i sees
    keys[:visible[i]] (all of them when `visible` is None), the rest are masked out of its
    softmax. Query head h reads KV head h // group: each KV head's queries (n rows x group
    heads) are one matrix product with its keys, a few hundred rows at a time.
    """
    n, num_heads, dim = q_rows.shape
    length, num_kv_heads = keys.shape[:2]
    group = num_heads // num_kv_heads
    keys_t = np.ascontiguousarray(keys.transpose(1, 2, 0))       # [kv, dim, len]
    values_t = np.ascontiguousarray(values.transpose(1, 0, 2))   # [kv, len, dim]
    out = np.empty((n, num_heads, dim))
    step = max(1, (1 << 22) // max(1, num_heads * length))       # <= 32 MB of logits
    for lo in range(0, n, step):
        rows = q_rows[lo:lo + step]                               # [r, heads, dim]
        r = rows.shape[0]
        grouped = rows.reshape(r, num_kv_heads, group, dim).transpose(1, 0, 2, 3)
        logits = grouped.reshape(num_kv_heads, r * group, dim) @ keys_t * scale
        if visible is not None:   # [r * group, len]: True where the key is in the future
            limit = np.repeat(np.asarray(visible[lo:lo + step]), group)
            logits[:, np.arange(length)[None, :] >= limit[:, None]] = -np.inf
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        attended = (weights @ values_t).reshape(num_kv_heads, r, group, dim)
        out[lo:lo + r] = attended.transpose(1, 0, 2, 3).reshape(r, num_heads, dim)
    return out


def _arrays(**named) -> tuple:
    """The arguments with torch tensors as the arrays they share memory with, as
    paged_attention_decode reads them (a CPU torch.bfloat16 tensor as ml_dtypes.bfloat16), so
    the oracle takes whatever the kernels take, and refuses what they refuse in their words (a
    strided tensor is told torch's .contiguous()); its result stays float64 NumPy."""
    return tuple(shared_arrays(named, elements=True))


def _as_float64_inputs(q, k_cache, v_cache, block_tables, seq_lens):
    return (to_numpy(q).astype(np.float64), to_numpy(k_cache).astype(np.float64),
            to_numpy(v_cache).astype(np.float64), to_numpy(block_tables), to_numpy(seq_lens))


def reference_decode(q, k_cache, v_cache, block_tables, seq_lens, scale=None) -> np.ndarray:
    """One new query token per sequence attending to all its cached tokens.

    q [batch, num_heads, head_dim]; caches [num_pages, page_size, num_kv_heads, head_dim];
    block_tables int32 [batch, max_pages]; seq_lens int32 [batch] (each >= 1).
    Returns float64 NumPy [batch, num_heads, head_dim].
    """
    q, k_cache, v_cache, block_tables, seq_lens = _arrays(
        q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens)
    shapes = check_attention_inputs(q, k_cache, v_cache, block_tables, seq_lens, mode="decode",
                                    q_dtypes=_any_float(), cache_dtypes=_any_float())
    scale = resolve_scale(scale, shapes.head_dim)
    q, k_cache, v_cache, tables, lens = _as_float64_inputs(q, k_cache, v_cache, block_tables,
                                                           seq_lens)
    out = np.zeros(q.shape)
    for b in range(shapes.batch):
        keys, values = _sequence_kv(k_cache, v_cache, tables[b], int(lens[b]))
        out[b] = _softmax_attend(q[b][None], keys, values, scale)[0]
    return out


def reference_prefill(q, k_cache, v_cache, block_tables, seq_lens, scale=None) -> np.ndarray:
    """Causal attention for every cached token of every sequence.

    q [batch, max_len, num_heads, head_dim]: query t of sequence b attends to that
    sequence's cached tokens 0..t. Returns float64 NumPy of q's shape; rows at or past
    seq_lens[b] are zero.
    """
    q, k_cache, v_cache, block_tables, seq_lens = _arrays(
        q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens)
    shapes = check_attention_inputs(q, k_cache, v_cache, block_tables, seq_lens, mode="prefill",
                                    q_dtypes=_any_float(), cache_dtypes=_any_float())
    scale = resolve_scale(scale, shapes.head_dim)
    q, k_cache, v_cache, tables, lens = _as_float64_inputs(q, k_cache, v_cache, block_tables,
                                                           seq_lens)
    out = np.zeros(q.shape)
    for b in range(shapes.batch):
        keys, values = _sequence_kv(k_cache, v_cache, tables[b], int(lens[b]))
        n = int(lens[b])   # query t sees keys 0..t
        out[b, :n] = _softmax_attend(q[b, :n], keys, values, scale, visible=np.arange(1, n + 1))
    return out


def reference_prefill_packed(q, k_cache, v_cache, qo_indptr, block_tables, seq_lens,
                             scale=None, causal: bool = True) -> np.ndarray:
    """Packed queries over cached prefixes: the oracle of `BatchPrefillWrapper`.

    q [total_q, num_heads, head_dim]; sequence b's queries are rows
    `qo_indptr[b]:qo_indptr[b+1]` and are its LAST q_len tokens: `seq_lens[b]` counts all its
    cached tokens, the new ones included. With `causal`, query i of sequence b (position
    `seq_lens[b] - q_len + i`) sees keys 0..its own position (bottom-right alignment: a chunk
    over a cached prefix, or a decode token when q_len is 1); without, it sees all of them.
    Returns float64 NumPy [total_q, num_heads, head_dim].
    """
    # As the wrapper's plan: None or "no" would be read as a truth value (None: not causal).
    causal = check_bool(causal, "causal")
    q, k_cache, v_cache, qo_indptr, block_tables, seq_lens = _arrays(
        q=q, k_cache=k_cache, v_cache=v_cache, qo_indptr=qo_indptr, block_tables=block_tables,
        seq_lens=seq_lens)
    indptr = np.asarray(to_numpy(qo_indptr))
    if indptr.dtype.kind not in "iu":   # 1.5 would silently truncate to 1
        raise TypeError(f"qo_indptr: expected integer offsets, got dtype {indptr.dtype}")
    indptr = indptr.astype(np.int64)
    batch = indptr.size - 1
    check_offsets(indptr, "qo_indptr")
    check_array(q, "q", ndim=3, dtypes=_any_float())
    if q.shape[0] != indptr[-1]:
        raise ValueError(f"q: expected [total_q = qo_indptr[-1] = {indptr[-1]}, num_heads, "
                         f"head_dim], got {tuple(q.shape)}")
    check_kv_cache(k_cache, v_cache, dtypes=_any_float())
    num_pages, page_size, num_kv_heads, head_dim = (int(n) for n in k_cache.shape)
    check_query_heads(q)   # as reference_decode: zero heads would return an empty result
    if q.shape[2] != head_dim or q.shape[1] % num_kv_heads:
        raise ValueError(f"q: expected [total_q, a multiple of {num_kv_heads} heads, "
                         f"{head_dim}], got {tuple(q.shape)}")
    check_block_tables(block_tables, seq_lens, num_pages=num_pages, page_size=page_size,
                       batch=batch, min_len=0, batch_of="sequence in qo_indptr")
    scale = resolve_scale(scale, head_dim)
    q, k_cache, v_cache, tables, lens = _as_float64_inputs(q, k_cache, v_cache, block_tables,
                                                           seq_lens)
    out = np.zeros(q.shape)
    for b in range(batch):
        q_len, seq_len = int(indptr[b + 1] - indptr[b]), int(lens[b])
        if q_len > seq_len:
            raise ValueError(f"qo_indptr: sequence {b} has {q_len} queries but seq_lens[{b}] "
                             f"is {seq_len} (the new tokens are among its cached tokens)")
        keys, values = _sequence_kv(k_cache, v_cache, tables[b], seq_len)
        first = seq_len - q_len   # query i sits at position first + i
        visible = first + np.arange(1, q_len + 1) if causal else None
        out[indptr[b]:indptr[b + 1]] = _softmax_attend(q[indptr[b]:indptr[b + 1]], keys,
                                                       values, scale, visible)
    return out
