"""Decode attention on a paged KV cache, in one call: `paged_attention_decode`.

One new query token per sequence attends to every cached token of that sequence. The call
is `BatchDecodeWrapper().plan(...)` then `.run(...)` (see `wrappers.py`): the kernel
(`kernels/decode.cu` on CUDA cores, `kernels/decode_tc.cu` on tensor cores) and the split-K
partitioning are chosen in `decode_plan.py`. A serving loop that runs many layers per step
should plan once and run per layer instead. On the GPU this form keeps its last few plans
(the CPU executor's kernel time dwarfs the planning, so there it plans every call): a call whose
tables and lengths hold the same values as a cached plan's (compared on the host, after the
one copy of the tables that checking them needs anyway), for arrays of the same shapes and
dtypes, skips the table checks and the planning and only launches.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .attention_common import cache_dtypes, prepare_out, result_for, shared_arrays
from .backend import cupy_module, is_cupy_array, is_torch_tensor, pinned_like, to_numpy_together
from .decode_plan import choose_partitions
from .tensor_checks import check_like_k_cache
from .validate import check_array, check_attention_inputs, check_int
from .validate_out import check_out
from .validate_scale import resolve_scale
from .wrappers import BatchDecodeWrapper

__all__ = ["paged_attention_decode", "choose_partitions"]

PLAN_CACHE_SIZE = 4   # plans kept by paged_attention_decode (a few layers' shapes)
_plans: OrderedDict = OrderedDict()   # key -> (tables, lens, BatchDecodeWrapper)
_pinned: OrderedDict = OrderedDict()  # key -> page-locked host arrays the tables are copied to


def paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *,
                           num_splits=None, out=None, kernel="auto"):
    """Attention of one new query token per sequence over its paged KV cache.

    q [batch, num_heads, head_dim]; k_cache, v_cache [num_pages, page_size, num_kv_heads,
    head_dim] (float32, float16 or bfloat16, q of the same dtype); block_tables int32
    [batch, max_pages]; seq_lens int32 [batch], each >= 1. Returns [batch, num_heads,
    head_dim] in the cache's dtype, where the inputs live (NumPy: CPU executor; CuPy: GPU;
    torch tensors: the same device, as torch). bfloat16: see `wrappers.py`.

    num_splits: None picks the split-K partitioning automatically; an int cuts the longest
    sequence into that many partitions (1 = no split). out: optional preallocated result.
    kernel: "auto", "simt" (CUDA cores) or "tensor_core" (PTX mma.sync, or WMMA with
    decode_plan.TC_IMPL = "wmma"; fp16 and bf16).
    """
    like, given_out = (q if is_torch_tensor(q) else None), out
    check_like_k_cache(k_cache, q=q, v_cache=v_cache, out=out)
    q, k_cache, v_cache, block_tables, seq_lens, out = shared_arrays(
        dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
             seq_lens=seq_lens, out=out), elements=True, float_caches=True)
    for name, x in (("block_tables", block_tables), ("seq_lens", seq_lens)):
        check_array(x, name, contiguous=False)   # a list: named here, not as int64 later
    on_gpu = is_cupy_array(k_cache)
    bits = on_gpu or like is not None   # where uint16 arrays hold bfloat16
    if num_splits is not None:
        num_splits = check_int(num_splits, "num_splits", minimum=1)
    # One copy of the tables to the host (both arrays, one wait), checked once (vectorised).
    key = _plan_key(q, k_cache, v_cache, block_tables, seq_lens, kernel, num_splits, on_gpu)
    tables_h, lens_h = to_numpy_together(block_tables, seq_lens,
                                         into=_pinned_for(key, block_tables, seq_lens, on_gpu))
    w = _cached_plan(key, tables_h, lens_h) if on_gpu else None
    if w is None:
        shapes = check_attention_inputs(q, k_cache, v_cache, tables_h, lens_h, mode="decode",
                                        cache_dtypes=cache_dtypes(bits))
        qshape = (shapes.batch, shapes.num_heads, shapes.head_dim)
    else:   # the same values were checked against a cache of the same shape; run checks
        qshape = (w.batch, w.num_heads, w.head_dim)   # the arrays themselves
    scale = resolve_scale(scale, qshape[2])
    xp = cupy_module() if on_gpu else np
    if out is not None:
        prepare_out(out, qshape, q.dtype, xp)
        check_out(out, q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                  seq_lens=seq_lens)
    else:   # a new array: the plan's own buffer would be overwritten by the next call
        out = xp.empty(qshape, dtype=q.dtype)
    if w is None:
        dtype = "bfloat16" if k_cache.dtype in cache_dtypes(bits)[2:] else k_cache.dtype.name
        w = BatchDecodeWrapper()
        w._plan(block_tables, seq_lens, tables_h, lens_h, shapes.num_heads,
                shapes.num_kv_heads, shapes.head_dim, shapes.page_size, dtype, kernel,
                num_splits, on_gpu, copy=True,
                max_page=-1,   # the pages were checked against this very cache above
                page_size_arg="k_cache",   # whose shape[1] is page_size here
                # (the plan refuses a grid past CUDA's limits per kernel: the tensor-core
                # kernels take a batch of more than 65535 sequences, which the simt one does not)
                grid_args="q, k_cache")
        if on_gpu:
            _keep_plan(key, tables_h, lens_h, w)
    return result_for(w.run(q, k_cache, v_cache, out=out, scale=scale), like, given_out)


def _plan_key(q, k, v, tables, lens, kernel, num_splits, on_gpu):
    def sig(x):
        return (type(x), x.shape, x.dtype) if hasattr(x, "shape") else (type(x),)
    device = k.device.id if on_gpu and hasattr(k, "device") else -1
    return (on_gpu, device, repr(kernel), num_splits, sig(q), sig(k), sig(v), sig(tables),
            sig(lens))


def _pinned_for(key, tables, lens, on_gpu):
    """The page-locked arrays this call's tables are copied into, kept per plan key: the
    calls of a serving loop copy into the same memory instead of taking it from CuPy's pool
    each time (None where the tables are not CuPy arrays). Each call waits for its copy
    before it reads the values, so one pair per key is enough."""
    if not (on_gpu and is_cupy_array(tables) and is_cupy_array(lens)):
        return None
    bufs = _pinned.get(key)
    return bufs if bufs is not None else _remember(_pinned, key, pinned_like(tables, lens))


def _cached_plan(key, tables_h, lens_h):
    hit = _plans.get(key)
    if hit is None or not (np.array_equal(hit[0], tables_h) and np.array_equal(hit[1], lens_h)):
        return None
    _plans.move_to_end(key)
    return hit[2]


def _keep_plan(key, tables_h, lens_h, w):
    _remember(_plans, key, (np.array(tables_h, copy=True), np.array(lens_h, copy=True), w))


def _remember(cache: OrderedDict, key, value):
    """value under key, the newest of at most PLAN_CACHE_SIZE entries (the oldest goes)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > PLAN_CACHE_SIZE:
        cache.popitem(last=False)
    return value
