"""Launch the page-access kernel (`kernels/page_access.cu`): gather one sequence's K and V."""
from __future__ import annotations

import numpy as np

from .addressing import check_gather
from .attention_common import data_pointer
from .backend import array_module
from .kernels import kernel

THREADS_PER_BLOCK = 128


def gather_kv(k_cache, v_cache, block_table_row, seq_len: int):
    """Copy one sequence's keys and values into contiguous [seq_len, num_kv_heads, head_dim]
    arrays with the `gather_kv` kernel (GPU for CuPy inputs, the CPU executor for NumPy).

    The result matches `addressing.gather_kv_reference` exactly: a gather is a copy.
    """
    seq_len = check_gather(k_cache, v_cache, block_table_row, seq_len)
    _, page_size, num_kv_heads, head_dim = (int(n) for n in k_cache.shape)
    xp = array_module(k_cache, v_cache, block_table_row)
    k_out = xp.empty((seq_len, num_kv_heads, head_dim), dtype=k_cache.dtype)
    v_out = xp.empty_like(k_out)
    if seq_len == 0:
        return k_out, v_out
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
    return k_out, v_out
