"""Causal prefill attention on a paged KV cache: `paged_attention_prefill`.

Two kernels compute the same function:
- "naive" (`kernels/prefill_naive.cu`, guide step 3 fixed): one thread per query token;
- "tiled" (`kernels/prefill_tiled.cu`, guide step 4 done right): 64 queries per block share
  each 32-key K/V tile staged in shared memory; register-tiled, online softmax.
"""
from __future__ import annotations

import numpy as np

from .attention_common import (
    LOG2E,
    THREADS,
    allow_shared_memory,
    check_aligned16,
    check_grid,
    fast_path,
    page_shift,
    prepare_out,
    result_for,
    same_place,
    shared_arrays,
)
from .backend import array_module, is_torch_tensor
from .kernels import kernel as load_kernel
from .tensor_checks import check_like_k_cache
from .validate import check_attention_inputs
from .validate_kinds import is_one_of
from .validate_out import check_out
from .validate_scale import resolve_scale

KERNELS = ("naive", "tiled")
NAIVE_MAX_HEAD_DIM = 128        # the naive kernel's per-thread accumulator array
TILED_HEAD_DIMS = (64, 128)     # one compiled tiled kernel each
TILE_Q, TILE_K = 64, 32         # must match BQ, BK in prefill_tiled.cu


def tiled_shared_bytes(head_dim: int) -> int:
    """Shared memory of one tiled block: Q tile, K and V tiles, P (floats, padded rows)."""
    return 4 * (TILE_Q * (head_dim + 4) + 2 * TILE_K * (head_dim + 4) + TILE_Q * (TILE_K + 8))


def plan_prefill(q, k_cache, v_cache, block_tables, seq_lens, scale=None, kernel="tiled", *,
                 out=None):
    """Validate a prefill call; return a function that launches it and returns `out`."""
    if not is_one_of(kernel, KERNELS):
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    shapes = check_attention_inputs(q, k_cache, v_cache, block_tables, seq_lens, mode="prefill")
    check_out(out, q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
              seq_lens=seq_lens)
    check_aligned16(q=q, k_cache=k_cache, v_cache=v_cache)
    scale = resolve_scale(scale, shapes.head_dim)
    hd = shapes.head_dim
    if kernel == "naive" and hd > NAIVE_MAX_HEAD_DIM:
        raise ValueError(f"q: head_dim {hd} is too large for the naive kernel (at most "
                         f"{NAIVE_MAX_HEAD_DIM}: its per-thread accumulator array)")
    if kernel == "tiled" and hd not in TILED_HEAD_DIMS:
        raise ValueError(f"q: head_dim {hd} is not supported by the tiled kernel; supported: "
                         f"{', '.join(map(str, TILED_HEAD_DIMS))} (kernel='naive' takes any "
                         f"head_dim up to {NAIVE_MAX_HEAD_DIM})")
    check_grid(shapes.batch, shapes.num_heads)
    if -(-shapes.max_len // TILE_Q) > 65535:
        raise ValueError(f"q: max_len {shapes.max_len} needs more than 65535 query tiles")
    xp = array_module(q)
    on_gpu = xp is not np
    dtype = np.dtype(k_cache.dtype)
    out = prepare_out(out, tuple(q.shape), dtype, xp)
    block_tables, seq_lens = same_place(block_tables, xp), same_place(seq_lens, xp)
    suffix = "f16" if dtype == np.float16 else "f32"
    i32 = np.int32
    s = shapes

    if s.batch == 0 or s.max_len == 0:
        return lambda: out
    if kernel == "naive":
        kern = load_kernel("prefill_naive", f"prefill_naive_{suffix}")
        grid = (-(-s.max_len // THREADS), s.num_heads, s.batch)
        args = (q, k_cache, v_cache, block_tables, seq_lens, out, i32(s.max_len),
                i32(s.num_heads), i32(s.num_kv_heads), i32(hd), i32(s.page_size),
                i32(s.max_pages_per_seq), np.float32(scale))
        shared = 0
    else:
        kern = load_kernel("prefill_tiled", f"prefill_tiled_{suffix}_d{hd}")
        grid = (s.num_heads, s.batch, -(-s.max_len // TILE_Q))
        args = (q, k_cache, v_cache, block_tables, seq_lens, out, i32(s.max_len),
                i32(s.num_heads), i32(s.num_kv_heads), i32(s.page_size),
                i32(page_shift(s.page_size)), i32(s.max_pages_per_seq),
                np.float32(scale * LOG2E))
        shared = tiled_shared_bytes(hd)
        allow_shared_memory(kern, shared)

    state = [kern]

    def launch():
        state[0](grid, (THREADS,), args, shared_mem=shared)
        state[0] = fast_path(state[0], on_gpu)   # checked once; later launches skip the check
        return out

    return launch


def paged_attention_prefill(q, k_cache, v_cache, block_tables, seq_lens, scale=None,
                            kernel="tiled", *, out=None):
    """Causal attention for every cached token of every sequence.

    q [batch, max_len, num_heads, head_dim]: query t of sequence b attends to that
    sequence's cached tokens 0..t (the prompt's K/V must already be in the cache).
    Returns an array of q's shape and the cache's dtype; rows at or past seq_lens[b] are
    zero. kernel: "tiled" (fast; head_dim 64 or 128) or "naive" (head_dim up to 128).
    out: optional preallocated result. Torch tensors (CPU or CUDA) are taken as
    paged_attention_decode takes them; the result is then a tensor of q's kind.
    """
    like = q if is_torch_tensor(q) else None
    named = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out}
    for name, x in named.items():   # bfloat16, torch's or ml_dtypes': the hint to the wrapper
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "bfloat16"):
            raise TypeError(f"{name}: expected dtype float32 or float16 (the one-shot prefill's "
                            f"kernels), got {x.dtype}; BatchPrefillWrapper runs bfloat16")
    check_like_k_cache(k_cache, q=q, v_cache=v_cache, out=out)
    given_out = out
    q, k_cache, v_cache, block_tables, seq_lens, out = shared_arrays(
        dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
             seq_lens=seq_lens, out=out))
    return result_for(plan_prefill(q, k_cache, v_cache, block_tables, seq_lens, scale,
                                   kernel, out=out)(), like, given_out)
