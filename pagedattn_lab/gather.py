"""Launch the page-access kernel (`kernels/page_access.cu`): gather one sequence's K and V."""
from __future__ import annotations

import numpy as np

from .addressing import check_gather, gather_inputs
from .attention_common import data_pointer, to_torch_like
from .backend import array_module
from .kernels import kernel

THREADS_PER_BLOCK = 128


def gather_kv(k_cache, v_cache, block_table_row, seq_len: int):
    """Copy one sequence's keys and values into contiguous [seq_len, num_kv_heads, head_dim]
    arrays with the `gather_kv` kernel (GPU for CuPy inputs, the CPU executor for NumPy).

    The result matches `addressing.gather_kv_reference` exactly: a gather is a copy. Caches:
    float32, float16 or bfloat16, as decode takes them (ml_dtypes.bfloat16 NumPy arrays; on
    the GPU CuPy uint16 arrays of the bits, or torch tensors: the results are then tensors).
    """
    k_cache, v_cache, block_table_row, like = gather_inputs(k_cache, v_cache, block_table_row)
    seq_len = check_gather(k_cache, v_cache, block_table_row, seq_len,
                           from_tensor=like is not None)
    _, page_size, num_kv_heads, head_dim = (int(n) for n in k_cache.shape)
    xp = array_module(k_cache, v_cache, block_table_row)
    k_out = xp.empty((seq_len, num_kv_heads, head_dim), dtype=k_cache.dtype)
    v_out = xp.empty_like(k_out)
    if seq_len == 0:
        return _like(k_out, v_out, like)
    # The kernel copies 32-bit words; a token's row of an odd number of fp16 values is not
    # whole words, nor is an fp16 cache starting 2 bytes past a word (an offset view: the GPU
    # faults on a misaligned word), so those get the same kernel compiled to copy 16-bit words.
    row_bytes = num_kv_heads * head_dim * k_cache.dtype.itemsize
    whole_words = row_bytes % 4 == 0 and not (data_pointer(k_cache) | data_pointer(v_cache)) % 4
    word, options = (np.float32, ()) if whole_words else (np.int16, ("-DWORD=short",))
    words = lambda a: a.reshape(-1).view(word)  # noqa: E731 - contiguous, so a flat view
    kernel("page_access", "gather_kv", options)(
        (seq_len,), (THREADS_PER_BLOCK,),
        (words(k_cache), words(v_cache), block_table_row, np.int32(seq_len), np.int32(page_size),
         np.int32(row_bytes // np.dtype(word).itemsize), words(k_out), words(v_out)))
    return _like(k_out, v_out, like)


def _like(k_out, v_out, like):
    """The results as torch tensors of like's dtype where the caches were tensors."""
    return (k_out, v_out) if like is None else (to_torch_like(k_out, like),
                                                to_torch_like(v_out, like))
