"""Write new tokens' K and V into the paged cache through a slot mapping (`kernels/cache_write.cu`).

This is vLLM's "reshape and cache" step: the model produces K and V for the new tokens as
dense rows `[n_tokens, num_kv_heads, head_dim]`; `slot_mapping[i]` says where row i lives in
the cache (`physical_page * page_size + offset`, -1 to skip a padding row). After the write,
the attention kernels read the new tokens through the block tables like any cached token.

    slots = slot_mapping(block_tables, seq_lens, q_lens, page_size)   # host work, once a step
    write_kv(k, v, k_cache, v_cache, slots)                           # one launch

The kernel moves raw words, so any 16- or 32-bit element goes: float32, float16 and bfloat16
(ml_dtypes.bfloat16 on the CPU, uint16 bits on CuPy, or torch tensors of any of them, written
in place through DLPack), the types the decode and prefill wrappers read. A NumPy uint16 cache
is refused, as gather_kv and paged_attention_decode refuse it: on the CPU uint16 is integers.
"""
from __future__ import annotations

import numpy as np

from .attention_common import cache_dtypes, from_torch, shared_arrays, to_torch_as
from .backend import array_module, is_cupy_array, is_torch_tensor, to_numpy
from .kernels import kernel
from .tensor_checks import check_like_k_cache
from .validate import INT32_MAX, check_array, check_block_tables, check_int, check_kv_cache
from .validate_memory import check_memory
from .validate_out import check_disjoint, check_writeable
from .words import counted

THREADS_PER_BLOCK = 128
SLOT_MAPPING_PEAK = 7   # int64 arrays of the new tokens' count slot_mapping holds at once
_WORDS = ((16, "uint4", np.uint32), (8, "uint2", np.uint32), (4, "unsigned int", np.uint32),
          (2, "unsigned short", np.uint16))


def slot_mapping(block_tables, seq_lens, q_lens, page_size: int) -> np.ndarray:
    """int64 slots of the last `q_lens[b]` tokens of each sequence b, packed in batch order.

    `seq_lens[b]` counts every token of sequence b including the new ones, so the new tokens
    are positions `seq_lens[b] - q_lens[b] .. seq_lens[b] - 1` (the prefill wrapper's
    bottom-right convention). Vectorised: no Python loop over tokens. Torch tensors are
    taken too (a strided one as well, unlike write_kv's arguments: the slots are computed on
    the host, where no kernel reads the tables); the slots then come back as a CPU torch
    int64 tensor (as to_csr's arrays come back as tensors), ready for write_kv's
    slot_mapping.
    """
    like = block_tables if is_torch_tensor(block_tables) else None
    block_tables, seq_lens, q_lens = (from_torch(x, n) for x, n in zip(
        (block_tables, seq_lens, q_lens), ("block_tables", "seq_lens", "q_lens")))
    # at most int32 (the kernels' page_size): a larger one would wrap the int64 slots
    page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
    tables = _host_ints(block_tables, "block_tables", 2)
    batch = int(tables.shape[0])
    # The used entries must be page ids >= 0: a -1 read as a page would give a negative slot,
    # and slot -1 means "skip this row" to write_kv (the token would silently vanish).
    tables, lens = check_block_tables(tables, _host_ints(seq_lens, "seq_lens", 1),
                                      num_pages=None, page_size=page_size, batch=batch,
                                      min_len=0, batch_of="block_tables row")
    new = _host_ints(q_lens, "q_lens", 1).astype(np.int64)
    lens = lens.astype(np.int64)
    if new.shape != lens.shape:
        raise ValueError(f"q_lens: expected {counted(batch, 'entry', 'entries')} (one per "
                         f"block table row), got shape {new.shape}")
    if np.any(new < 0) or np.any(new > lens):
        b = int(np.flatnonzero((new < 0) | (new > lens))[0])
        raise ValueError(f"q_lens[{b}]: expected 0 <= q_len <= seq_lens[{b}] = {lens[b]}, "
                         f"got {new[b]}")
    _check_token_count(int(new.sum()))
    rows = np.repeat(np.arange(lens.size), new)
    starts = np.repeat(lens - new, new)
    within = np.arange(rows.size) - np.repeat(np.cumsum(new) - new, new)
    positions = starts + within
    pages = tables[rows, positions // page_size].astype(np.int64)
    return to_torch_as(pages * page_size + positions % page_size, like)


def _check_token_count(total: int) -> None:
    """The new tokens of a slot mapping: no more than write_kv takes (an int32 count), nor
    than the host holds the slots of (slot_mapping's NumPy temporaries peak at
    SLOT_MAPPING_PEAK int64 arrays of them, measured with tracemalloc): past that, arrays
    each smaller than the memory would get the process killed as they are filled."""
    if total > INT32_MAX:
        raise ValueError(f"q_lens: {total} new tokens in all, more than the {INT32_MAX} "
                         f"write_kv takes in one call (an int32 count)")
    check_memory(SLOT_MAPPING_PEAK * 8 * total, "cpu", "q_lens",
                 f"the slots of {total} new tokens")


def _host_ints(x, name: str, ndim: int) -> np.ndarray:
    """A host int32 copy of an integer index array (host work only: any integer dtype will
    do, but not floats, whose fractions would be cut, nor ids past int32)."""
    check_array(x, name, ndim=ndim, contiguous=False)
    a = to_numpy(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {a.dtype.name}")
    info = np.iinfo(np.int32)
    big = np.argwhere((a < info.min) | (a > info.max))
    if len(big):
        i = tuple(int(j) for j in big[0])
        raise ValueError(f"{name}[{', '.join(map(str, i))}]: value {a[i]} does not fit int32 "
                         f"(page ids and lengths are int32)")
    return np.ascontiguousarray(a, dtype=np.int32)


def _check_slots(slots: np.ndarray, n_tokens: int, num_slots: int) -> None:
    if slots.shape != (n_tokens,):
        raise ValueError(f"slot_mapping: expected shape ({n_tokens},) (one slot per row of k), "
                         f"got {slots.shape}")
    bad = np.flatnonzero((slots < -1) | (slots >= num_slots))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"slot_mapping[{i}]: slot {int(slots[i])} is out of range for a cache "
                         f"of {num_slots} slots (use -1 to skip a row)")
    used = slots[slots >= 0]
    if np.unique(used).size != used.size:
        values, counts = np.unique(used, return_counts=True)
        dup = int(values[counts > 1][0])
        rows = np.flatnonzero(slots == dup).tolist()
        raise ValueError(f"slot_mapping: rows {rows} all write slot {dup}; two tokens cannot "
                         f"share a slot")


def _word_for(row_bytes: int, *arrays) -> tuple[str, np.dtype, int]:
    """The widest word that divides a row and the alignment of every array."""
    for size, ctype, dtype in _WORDS:
        if row_bytes % size == 0 and all(_address(a) % size == 0 for a in arrays):
            return ctype, np.dtype(dtype), size
    raise ValueError(f"k: a row of {row_bytes} bytes cannot be moved in whole 2-byte words")


def _address(a) -> int:
    return a.data.ptr if is_cupy_array(a) else a.__array_interface__["data"][0]


def write_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Scatter rows `k[i]`, `v[i]` ([n_tokens, num_kv_heads, head_dim]) to slot
    `slot_mapping[i]` of `k_cache`, `v_cache` ([num_pages, page_size, num_kv_heads, head_dim]).

    Everything is checked before the launch (shapes, dtypes, one device, slots in range and
    distinct); a refused call writes nothing.
    """
    # uint16 holds bfloat16 bits where no bfloat16 dtype exists: CuPy, and a torch.bfloat16
    # tensor's view; a NumPy uint16 cache holds integers, refused as gather_kv and decode do
    bits = is_cupy_array(k_cache) or is_torch_tensor(k_cache)
    check_like_k_cache(k_cache, k=k, v=v, v_cache=v_cache)
    k, v, k_cache, v_cache, slot_mapping = shared_arrays(
        dict(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping),
        float_caches=True)
    check_kv_cache(k_cache, v_cache, dtypes=cache_dtypes(bits))
    num_pages, page_size, num_kv_heads, head_dim = (int(n) for n in k_cache.shape)
    for name, rows in (("k", k), ("v", v)):
        check_array(rows, name, ndim=3, dtypes=[k_cache.dtype])
        if tuple(rows.shape[1:]) != (num_kv_heads, head_dim):
            raise ValueError(f"{name}: expected [n_tokens, {num_kv_heads}, {head_dim}] (the "
                             f"cache's heads and head_dim), got {tuple(rows.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    check_array(slot_mapping, "slot_mapping", ndim=1, dtypes=[np.int64])
    on_gpu = [is_cupy_array(a) for a in (k, v, k_cache, v_cache, slot_mapping)]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError("k, v, k_cache, v_cache, slot_mapping: expected all on the CPU (NumPy) "
                        "or all on the GPU (CuPy), got a mix")
    n_tokens = int(k.shape[0])
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_writeable(cache, name)
        check_disjoint(name, cache, "; pass copies of the new rows", k=k, v=v,
                       slot_mapping=slot_mapping)
    check_disjoint("v_cache", v_cache, "; K and V need separate caches", k_cache=k_cache)
    _check_slots(to_numpy(slot_mapping), n_tokens, num_pages * page_size)
    if n_tokens == 0:
        return
    array_module(k_cache)  # the arrays' device is usable (CuPy present for CuPy arrays)
    row_bytes = num_kv_heads * head_dim * k_cache.dtype.itemsize
    ctype, word_dtype, word_size = _word_for(row_bytes, k, v, k_cache, v_cache)
    words = lambda a: a.reshape(-1).view(word_dtype)  # noqa: E731 - the kernel moves raw words
    kernel("cache_write", "write_kv", (f"-DWORD_T={ctype}",))(
        (n_tokens,), (THREADS_PER_BLOCK,),
        (words(k), words(v), slot_mapping, np.int32(n_tokens), np.int32(row_bytes // word_size),
         words(k_cache), words(v_cache)))
