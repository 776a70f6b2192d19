"""The two forms of a page table: the course's padded block tables and FlashInfer's CSR page
table (indptr, indices, last_page_len), the form FlashInfer's `plan` takes and the field's
most asked conversion. `to_csr` and `from_csr` convert either way, where the arrays live."""
from __future__ import annotations

import numpy as np

from .attention_common import shared_arrays, to_torch_as
from .backend import array_module, is_torch_tensor, to_numpy
from .validate import INT32_MAX, check_array, check_block_tables, check_int, check_offsets
from .validate_memory import check_memory

__all__ = ["to_csr", "from_csr"]


def to_csr(block_tables, seq_lens, page_size):
    """(indptr, indices, last_page_len) of FlashInfer's CSR page table from padded tables.

    Sequence i's pages are indices[indptr[i]:indptr[i+1]]: the first ceil(seq_lens[i] /
    page_size) entries of its block-table row; last_page_len[i] is the number of tokens in
    its last page (0 for an empty sequence). int32 arrays, where the tables live (torch
    tensors for torch tables, as paged_attention_decode takes and returns them).
    """
    like = block_tables if is_torch_tensor(block_tables) else None
    block_tables, seq_lens = shared_arrays(dict(block_tables=block_tables, seq_lens=seq_lens))
    page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
    check_array(block_tables, "block_tables", ndim=2, dtypes=[np.int32])
    batch = int(block_tables.shape[0])
    check_block_tables(block_tables, seq_lens, num_pages=None, page_size=page_size, batch=batch,
                       min_len=0, batch_of="block_tables row")
    xp = array_module(block_tables, seq_lens)
    lens = seq_lens.astype(np.int64)
    pages = -(-lens // page_size)
    indptr = xp.zeros(batch + 1, dtype=np.int32)
    indptr[1:] = xp.cumsum(pages)
    used = xp.arange(block_tables.shape[1])[None, :] < pages[:, None]
    indices = block_tables[used].astype(np.int32)
    last = (lens - (pages - 1) * page_size) * (pages > 0)
    return tuple(to_torch_as(a, like) for a in (indptr, indices, last.astype(np.int32)))


def from_csr(indptr, indices, last_page_len, page_size):
    """(block_tables, seq_lens) from FlashInfer's CSR page table: rows padded with -1 to the
    longest sequence's page count. int32 arrays, where the inputs live (torch tensors for a
    torch indptr)."""
    like = indptr if is_torch_tensor(indptr) else None
    indptr, indices, last_page_len = shared_arrays(
        dict(indptr=indptr, indices=indices, last_page_len=last_page_len))
    page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
    check_array(indptr, "indptr", ndim=1, dtypes=[np.int32])
    check_array(indices, "indices", ndim=1, dtypes=[np.int32])
    check_array(last_page_len, "last_page_len", ndim=1, dtypes=[np.int32])
    xp = array_module(indptr, indices, last_page_len)
    ptr, last = to_numpy(indptr).astype(np.int64), to_numpy(last_page_len).astype(np.int64)
    negative = np.flatnonzero(to_numpy(indices) < 0)
    if negative.size:
        i = int(negative[0])
        raise ValueError(f"indices[{i}]: expected a page id >= 0, got {int(to_numpy(indices)[i])}")
    check_offsets(ptr, "indptr", int(indices.shape[0]),
                  "len(indices): the offset past the last sequence's pages")
    pages = np.diff(ptr)
    if last.shape[0] != pages.size:
        raise ValueError(f"last_page_len: expected {pages.size} entries (one per sequence), "
                         f"got {last.shape[0]}")
    bad = np.flatnonzero(np.where(pages > 0, (last < 1) | (last > page_size), last != 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"last_page_len[{i}]: expected 1..{page_size} for a sequence with pages "
                         f"(0 without), got {int(last[i])}")
    lens = np.where(pages > 0, (pages - 1) * page_size + last, 0)
    too_long = np.flatnonzero(lens > INT32_MAX)
    if too_long.size:   # int32 seq_lens would wrap around to a wrong (negative) length
        i = int(too_long[0])
        raise ValueError(f"indptr, last_page_len: sequence {i} has {int(pages[i])} pages of "
                         f"{page_size} tokens, {int(lens[i])} in all, past int32 seq_lens")
    width = int(pages.max()) if pages.size else 0
    # Padded to the longest row: one long sequence among many short ones makes a table far
    # larger than the CSR arrays (2^17 sequences, one of 2^17 pages: 64 GiB). NumPy's
    # MemoryError names no argument, and a table just under the memory kills the process
    # as it is filled with -1.
    check_memory(pages.size * width * 4, "cpu" if xp is np else "gpu", "indptr",
                 f"the padded block tables ({pages.size} sequences x {width} pages, the "
                 f"longest's)", "; convert fewer sequences at once, or keep the CSR form")
    rows = np.repeat(np.arange(pages.size), pages)
    cols = np.arange(rows.size) - np.repeat(ptr[:-1], pages)
    tables = xp.full((pages.size, width), -1, dtype=np.int32)
    tables[xp.asarray(rows), xp.asarray(cols)] = indices
    return to_torch_as(tables, like), to_torch_as(xp.asarray(lens.astype(np.int32)), like)
