"""Address translation (guide step 2): from a token's position to an element of the cache.

A sequence sees its KV cache as one contiguous run of tokens (virtual positions 0, 1, 2,
...). Physically its tokens sit in pages scattered over the cache. Four small steps map
one to the other, exactly as a CPU's MMU maps a virtual address:

    token position --(÷, %)--> (virtual page, offset in page)
    virtual page   --(block table)--> physical page
    (physical page, offset) --> physical slot  = physical_page * page_size + offset
    (slot, kv_head, dim)    --> element offset = (slot * num_kv_heads + kv_head) * head_dim + dim

The last line is the NHD layout [num_pages, page_size, num_kv_heads, head_dim] flattened.
Forgetting `num_kv_heads` in it (the guide's head-stride bug) makes every head but one read
another token's data.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .attention_common import cache_dtypes, shared_arrays, to_torch_as
from .backend import is_cupy_array, is_torch_tensor, to_numpy
from .tensor_checks import check_like_k_cache
from .validate import (INT32_MAX, MAX_PAGES, check_array, check_block_tables, check_int,
                       check_kv_cache)
from .validate_kinds import is_int
from .validate_memory import check_memory


def virtual_page(token: int, page_size: int) -> int:
    """Which of the sequence's pages holds `token` (an index into its block table row).
    token: an int >= 0, page_size an int >= 1 (a negative token would name page -1, the row's
    last entry when used as an index)."""
    token, page_size = _position(token, page_size)
    return token // page_size


def page_offset(token: int, page_size: int) -> int:
    """Where inside its page `token` sits (0 .. page_size-1); the arguments as for
    `virtual_page`."""
    token, page_size = _position(token, page_size)
    return token % page_size


def physical_page(block_table_row, token: int, page_size: int) -> int:
    """The physical page holding `token`: the block table entry for its virtual page.
    (The one step that looks something up, so the one that checks: a negative token would
    read the row from its end, a padding entry give a negative slot.)"""
    token, page_size = _position(token, page_size)
    return _entry(_row(block_table_row), token, virtual_page(token, page_size))


def physical_slot(block_table_row, token: int, page_size: int) -> int:
    """The token's slot in the whole cache, counting tokens from the start of page 0."""
    return physical_page(block_table_row, token, page_size) * page_size + page_offset(token, page_size)


def element_offset(slot: int, kv_head: int, dim: int, num_kv_heads: int, head_dim: int) -> int:
    """Offset of element (slot, kv_head, dim) in the flattened NHD cache. slot, kv_head and
    dim: ints, or integer arrays broadcast together (every offset of a page at once). Computed
    in Python ints or int64: a slot read from an int32 block table would wrap past 2^31."""
    num_kv_heads = check_int(num_kv_heads, "num_kv_heads", minimum=1)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    slot, kv_head, dim = (_index(x, name, size) for x, name, size in (
        (slot, "slot", None), (kv_head, "kv_head", num_kv_heads), (dim, "dim", head_dim)))
    return (slot * num_kv_heads + kv_head) * head_dim + dim


def _index(x, name: str, size: int | None):
    """x as a Python int or an int64 array, each value in 0..size-1 (size None: >= 0), else an
    error naming the entry: kv_head == num_kv_heads would be the next token's head 0."""
    one = is_int(x)
    if one:
        values = np.array(int(x), dtype=object)   # a Python int: no width to wrap at
    elif isinstance(x, np.ndarray) and x.dtype.kind in "iu":
        values = x
    else:
        got = f"an array of {x.dtype}" if isinstance(x, np.ndarray) else \
            f"{x!r} ({type(x).__name__})"
        raise TypeError(f"{name}: expected an int or an integer array, got {got}")
    bad = np.argwhere((values < 0) if size is None else (values < 0) | (values >= size))
    if len(bad):   # (of a 0-d array, argwhere's rows are empty: size would be 0)
        i = tuple(int(j) for j in bad[0])
        where = f"[{', '.join(map(str, i))}]" if i else ""
        want = "a slot >= 0" if size is None else f"0..{size - 1}"
        raise ValueError(f"{name}{where}: expected {want}, got {values[i]}")
    return int(x) if one else x.astype(np.int64)


class Translation(NamedTuple):
    """Every intermediate of one address translation, for printing and visualizing."""
    token: int
    virtual_page: int
    offset: int
    physical_page: int
    slot: int
    element_offset: int


def translate(block_table_row, token: int, page_size: int, num_kv_heads: int, head_dim: int,
              kv_head: int = 0, dim: int = 0) -> Translation:
    """Run all four steps for one token (and one head and dimension of it)."""
    row = _row(block_table_row)
    token, page_size = _position(token, page_size)
    num_kv_heads = check_int(num_kv_heads, "num_kv_heads", minimum=1)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    for name, value, size in (("kv_head", kv_head, num_kv_heads), ("dim", dim, head_dim)):
        if not 0 <= check_int(value, name) < size:
            raise ValueError(f"{name}: expected 0..{size - 1}, got {value}")
    vpage, offset = virtual_page(token, page_size), page_offset(token, page_size)
    page = _entry(row, token, vpage)   # (checked once, not again by physical_page/_slot)
    slot = page * page_size + offset
    return Translation(token, vpage, offset, page, slot,
                       element_offset(slot, kv_head, dim, num_kv_heads, head_dim))


def token_slots(block_table_row, seq_len: int, page_size: int) -> np.ndarray:
    """The physical slot of every token 0..seq_len-1 of one sequence, as int64."""
    seq_len = check_int(seq_len, "seq_len", minimum=0, maximum=INT32_MAX)
    page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
    row = _row(block_table_row)
    pages = -(-seq_len // page_size)
    if pages > row.size:
        raise ValueError(f"block_table_row: {seq_len} tokens need {pages} pages, but the row "
                         f"has only {row.size} entries")
    bad = np.flatnonzero((row[:pages] < 0) | (row[:pages] > MAX_PAGES))
    if bad.size:   # a slot computed from it would be another page's (or wrap around int64)
        j = int(bad[0])
        raise ValueError(f"block_table_row[{j}]: {_not_a_page(int(row[j]))} (a sequence of "
                         f"{seq_len} tokens reads its first {pages} entries)")
    # NumPy holds three int64 arrays of seq_len at once (tracemalloc); a row listing one page
    # many times can ask for more than the host has (check_memory says why that is refused)
    check_memory(3 * 8 * seq_len, "cpu", "seq_len", f"the slots of {seq_len} tokens")
    row = row.astype(np.int64)
    tokens = np.arange(seq_len, dtype=np.int64)
    return row[tokens // page_size] * page_size + tokens % page_size


def _position(token, page_size) -> tuple[int, int]:
    """(token, page_size) as ints: token >= 0 (a negative one would index the block table
    row from its end, another page), page_size >= 1."""
    return (check_int(token, "token", minimum=0),
            check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX))


def _row(block_table_row) -> np.ndarray:
    """One sequence's block table row as a 1-D integer NumPy array (a list will do)."""
    try:
        row = np.asarray(to_numpy(block_table_row))
    except (ValueError, TypeError):   # a ragged list: NumPy's message names no argument
        row = None
    if row is None or row.ndim != 1 or (row.size and not np.issubdtype(row.dtype, np.integer)):
        got = "a ragged list" if row is None else f"shape {row.shape} of {row.dtype}"
        raise ValueError(f"block_table_row: expected a 1-D list of integer page ids (one "
                         f"sequence's block table row), got {got}")
    return row


def _entry(row: np.ndarray, token: int, vpage: int) -> int:
    """The page id at entry `vpage` of the row, for `token`; padding or no entry refused."""
    if vpage >= row.size:
        raise ValueError(f"token: position {token} needs virtual page {vpage}, but the block "
                         f"table row has only {row.size} entries")
    page = int(row[vpage])
    if not 0 <= page <= MAX_PAGES:
        raise ValueError(f"block_table_row[{vpage}]: {_not_a_page(page)} (token {token} reads "
                         f"it)")
    return page


def _not_a_page(entry: int) -> str:
    if entry < 0:
        return f"entry {entry} is padding, not a page"
    return f"page id {entry} is past int32 (block tables hold page ids as int32)"


def gather_kv_reference(k_cache, v_cache, block_table_row, seq_len: int):
    """NumPy twin of the `gather_kv` kernel: one sequence's K and V made contiguous.

    Returns (k, v), each [seq_len, num_kv_heads, head_dim] in the cache's dtype, on the host:
    NumPy arrays for NumPy or CuPy caches (a CuPy cache's bfloat16 uint16 bits come back as
    those bits), CPU torch tensors for torch caches (torch.bfloat16 as torch.bfloat16), as
    `gather_kv` returns tensors for them.
    """
    k_cache, v_cache, block_table_row, like = gather_inputs(k_cache, v_cache, block_table_row)
    seq_len = check_gather(k_cache, v_cache, block_table_row, seq_len, on_host=True,
                           from_tensor=like is not None)
    num_pages, page_size = int(k_cache.shape[0]), int(k_cache.shape[1])
    slots = token_slots(block_table_row, seq_len, page_size)
    flat_shape = (num_pages * page_size,) + tuple(k_cache.shape[2:])
    k = to_numpy(k_cache).reshape(flat_shape)[slots]
    v = to_numpy(v_cache).reshape(flat_shape)[slots]
    return to_torch_as(k, like), to_torch_as(v, like)


def gather_inputs(k_cache, v_cache, block_table_row):
    """(k_cache, v_cache, block_table_row, like) with torch tensors as the arrays they share
    memory with (a torch.bfloat16 one as uint16 bits); like: k_cache if it was a tensor."""
    like = k_cache if is_torch_tensor(k_cache) else None
    check_like_k_cache(k_cache, v_cache=v_cache)
    return (*shared_arrays(dict(k_cache=k_cache, v_cache=v_cache,
                                block_table_row=block_table_row), float_caches=True), like)


def check_gather(k_cache, v_cache, block_table_row, seq_len, on_host: bool = False,
                 from_tensor: bool = False) -> int:
    """The checks of a gather (`gather_kv`, `gather_kv_reference`: on_host, its outputs are
    on the host whatever the cache) of arrays from `gather_inputs` (from_tensor: they were torch
    tensors); returns seq_len as an int. It takes the caches decode reads: the gather copies
    16- or 32-bit words whatever they mean, so bfloat16 too (ml_dtypes' on the CPU, uint16
    bits on CuPy or from a torch tensor: `attention_common.cache_dtypes`)."""
    check_kv_cache(k_cache, v_cache,
                   dtypes=cache_dtypes(is_cupy_array(k_cache) or from_tensor))
    check_array(block_table_row, "block_table_row", ndim=1, dtypes=[np.int32])
    seq_len = check_int(seq_len, "seq_len", minimum=0, maximum=INT32_MAX)   # an int32 length
    num_pages, page_size = int(k_cache.shape[0]), int(k_cache.shape[1])
    check_block_tables(to_numpy(block_table_row)[None, :], np.array([seq_len], np.int32),
                       num_pages=num_pages, page_size=page_size, batch=1, min_len=0,
                       names=("block_table_row[{j}]", "seq_len"))
    # A row that lists one page many times reads more tokens than the cache holds: outputs
    # that together outgrow the memory would get the process killed as they are written.
    row_bytes = int(np.prod(k_cache.shape[2:])) * k_cache.dtype.itemsize
    device = "gpu" if is_cupy_array(k_cache) and not on_host else "cpu"
    check_memory(2 * seq_len * row_bytes, device, "seq_len", f"the K and V of {seq_len} tokens")
    return seq_len
