"""Quantize on write: new tokens' K and V into int8 / fp8 (e4m3) pages with their scales
(`kernels/cache_write_quant.cu`; the formats and the NumPy reference are `quant.py`).

    write_kv_quant(k, v, k_cache, v_cache, slots, "fp8_e4m3", "static",
                   k_scale=ks, v_scale=vs)            # ks, vs: [num_kv_heads], read
    write_kv_quant(k, v, k_cache, v_cache, slots, "int8", "per_token",
                   k_scale=ks, v_scale=vs)            # [num_pages, page_size, num_kv_heads],
                                                      # the new tokens' entries written
Everything is checked before the launch; a refused call writes nothing.
"""
from __future__ import annotations

import numpy as np

from .attention_common import check_storage
from .backend import array_module, is_cupy_array, to_numpy
from .cache_write import _check_slots
from .kernels import kernel
from .quant import check_scale, kv_format, scale_shape
from .validate import check_array, check_kv_cache
from .validate_out import check_disjoint, check_writeable

_SRC_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float16): "__half"}


def check_quant_cache(k_cache, v_cache, kv_dtype: str, scale_scheme: str, k_scale, v_scale):
    """Caches of the format's storage dtype and shape-matched scales; returns the format.
    Static scales must be finite and normal (> 0, not subnormal); per-token scale arrays are
    checked for shape and dtype only (their entries are outputs of the write)."""
    fmt = kv_format(kv_dtype)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_array(cache, name, ndim=4, dtypes=None)   # (an array first, then its dtype)
        check_storage(cache, fmt, name)
    check_kv_cache(k_cache, v_cache, dtypes=None)
    shape = scale_shape(scale_scheme, *(int(n) for n in k_cache.shape[:3]))
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if scale_scheme == "static":
            check_scale(scale, name, shape, fmt.qmax)
        elif scale is None:
            raise ValueError(f"{name}: per-token scales need an array of shape {shape} to "
                             f"write them into, got None")
        check_array(scale, name, dtypes=[np.float32])
        if tuple(scale.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(scale.shape)}")
    return fmt


def write_kv_quant(k, v, k_cache, v_cache, slot_mapping, kv_dtype: str, scale_scheme: str,
                   k_scale=None, v_scale=None) -> None:
    """Quantize rows `k[i]`, `v[i]` ([n_tokens, num_kv_heads, head_dim], float32 or
    float16) into slot `slot_mapping[i]` of the int8 / uint8 caches
    ([num_pages, page_size, num_kv_heads, head_dim]). See the module docstring."""
    fmt = check_quant_cache(k_cache, v_cache, kv_dtype, scale_scheme, k_scale, v_scale)
    num_pages, page_size, num_kv_heads, head_dim = (int(n) for n in k_cache.shape)
    for name, rows in (("k", k), ("v", v)):
        check_array(rows, name, ndim=3, dtypes=list(_SRC_TYPES))
        if tuple(rows.shape[1:]) != (num_kv_heads, head_dim):
            raise ValueError(f"{name}: expected [n_tokens, {num_kv_heads}, {head_dim}] (the "
                             f"cache's heads and head_dim), got {tuple(rows.shape)}")
    if v.shape != k.shape or v.dtype != k.dtype:
        raise ValueError(f"v: expected the shape and dtype of k {tuple(k.shape)} {k.dtype}, "
                         f"got {tuple(v.shape)} {v.dtype}")
    check_array(slot_mapping, "slot_mapping", ndim=1, dtypes=[np.int64])
    arrays = (k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    on_gpu = [is_cupy_array(a) for a in arrays]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError("k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale: expected all "
                        "on the CPU (NumPy) or all on the GPU (CuPy), got a mix")
    n_tokens = int(k.shape[0])
    for name, written in (("k_cache", k_cache), ("v_cache", v_cache), ("k_scale", k_scale),
                          ("v_scale", v_scale)):
        check_disjoint(name, written, "; pass copies of the new rows", k=k, v=v,
                       slot_mapping=slot_mapping)
    check_disjoint("v_cache", v_cache, "; K and V need separate caches", k_cache=k_cache)
    written = (("k_cache", k_cache), ("v_cache", v_cache))
    if scale_scheme == "per_token":   # the scales are written too, beside the codes
        written += (("k_scale", k_scale), ("v_scale", v_scale))
        check_disjoint("v_scale", v_scale, "; K and V need separate scales", k_scale=k_scale)
        for name, scale in written[2:]:
            check_disjoint(name, scale, "; the scales need arrays of their own",
                           k_cache=k_cache, v_cache=v_cache)
    else:   # static scales are read while the codes are written
        for name, cache in written:
            check_disjoint(name, cache, "; the scales need arrays of their own",
                           k_scale=k_scale, v_scale=v_scale)
    for name, x in written:   # all before the launch: nothing half written
        check_writeable(x, name)
    _check_slots(to_numpy(slot_mapping), n_tokens, num_pages * page_size)
    if n_tokens == 0:
        return
    array_module(k_cache)
    options = (f"-DKV_QUANT={fmt.kernel_id}", f"-DSRC={_SRC_TYPES[k.dtype]}",
               f"-DPER_TOKEN_SCALES={int(scale_scheme == 'per_token')}")
    warps = min(num_kv_heads, 8)
    kernel("cache_write_quant", "write_kv_quant", options)(
        (n_tokens,), (32 * warps,),
        (k, v, slot_mapping, np.int32(n_tokens), np.int32(num_kv_heads), np.int32(head_dim),
         k_scale, v_scale, k_cache.view(np.uint8), v_cache.view(np.uint8)))
