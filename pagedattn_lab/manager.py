"""The complete system (guide step 5, done right): a KV cache plus the kernels that read it.

The guide's manager kept one page table for the whole batch, handed out pages from a
counter that never went back, and could not tell sequences apart. `PagedAttentionManager`
owns a `PagedKVCache` (one block table per sequence, pages from a free list) and runs the
course's kernels on it:

    mgr = PagedAttentionManager(num_pages=256, page_size=16, num_heads=8, num_kv_heads=2,
                                head_dim=64)
    seq, out = mgr.add_sequence(k_prompt, v_prompt, q_prompt)   # prefill: stores K/V, attends
    out = mgr.decode_step([seq], q_new, k_new, v_new)           # one token per sequence
    mgr.finish(seq)                                             # its pages go back
    mgr.stats()                                                 # pages used, waste, ...

With compressed pages (`kv_dtype="int8"` or `"fp8_e4m3"`, fp16 queries) attention runs on
the tensor-core `BatchPrefillWrapper`, which dequantizes as it reads (decode tokens are its
q_len 1 rows); prefill_kernel must be None and reads "tensor_core".

With bfloat16 pages (`dtype="bfloat16"`, or ml_dtypes' or torch's bfloat16) prompts run on
that tensor-core `BatchPrefillWrapper` too, since the naive and tiled kernels read float32 and
float16 only (so head_dim must be one of its HEAD_DIMS, and prefill_kernel None: it then reads
"tensor_core"); decode steps run on `paged_attention_decode`, as for the other dtypes. q, k
and v are rounded to bfloat16 (ml_dtypes, to nearest even) on the way in; outputs come in the
pages' form: ml_dtypes.bfloat16 arrays on the CPU, uint16 arrays of the bits on CuPy (cache.py).

Every call validates its input first and is all-or-nothing: if the pool cannot hold what a
call needs (`OutOfPagesError`), or a kernel refuses its input or fails to run (a CPU-executor
`KernelTimeout`, say), the error is raised and the sequences, their lengths and block
tables, the K/V pages and the free list are exactly as they were, so the call can simply be
retried. What the kernels cannot run (a head_dim they were not compiled for, a scale that
overflows float32) is refused when the manager is built, not at its first call.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .attention_common import element_dtype, to_elements
from .attention_decode import paged_attention_decode
from .decode_choice import supported_head_dim
from .attention_prefill import NAIVE_MAX_HEAD_DIM, TILED_HEAD_DIMS, paged_attention_prefill
from .cache import PagedKVCache
from .paging import OutOfPagesError
from .prefill_wrapper import HEAD_DIMS, BatchPrefillWrapper
from .quant import kv_dtype_name
from .validate import check_array, check_gqa_heads, check_int, check_int_list, refuse_repeats
from .validate_kinds import is_one_of
from .validate_scale import resolve_scale


class AddedSequence(NamedTuple):
    """What `add_sequence` returns: the new sequence's id, and its prefill output
    ([n, num_heads, head_dim]) when a query was given, else None."""
    seq_id: int
    out: object


class MemoryStats(NamedTuple):
    """A snapshot of the cache, in pages and token slots (one slot holds one token's K and V)."""
    pages_total: int
    pages_used: int
    pages_free: int
    sequences: int
    tokens_stored: int       # sum of the live sequences' lengths (forks: shared tokens twice)
    slots_allocated: int     # pages_used * page_size
    internal_waste: int      # allocated slots that hold no token (unused tails of last pages;
    #                          a page shared by forks counted once, as it is held once)
    bytes_per_token: int     # K and V of one token, all KV heads
    page_size: int

    @property
    def waste_fraction(self) -> float:
        """Share of allocated slots holding no token (0 when nothing is allocated)."""
        return self.internal_waste / self.slots_allocated if self.slots_allocated else 0.0

    @property
    def utilization(self) -> float:
        """Share of the whole pool's slots holding a token (a shared page's once)."""
        total = self.slots_allocated + self.pages_free * self.page_size
        return (self.slots_allocated - self.internal_waste) / total if total else 0.0


class PagedAttentionManager:
    """A paged KV cache and the attention kernels over it, for one attention layer.

    prefill_kernel: "tiled", "naive", or None for tiled where it runs (head_dim 64 or 128)
    and naive elsewhere; bfloat16 or compressed pages: None, for the tensor-core prefill
    (`prefill_kernel` then reads "tensor_core").
    dtype: float32, float16 or bfloat16 (as `PagedKVCache` takes it). A head_dim, dtype or
    scale the kernels cannot run is refused here.
    """

    def __init__(self, num_pages: int, page_size: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, dtype=np.float32, device: str = "auto", scale=None,
                 prefill_kernel: str | None = None, kv_dtype: str | None = None,
                 scale_scheme: str = "static", k_scale=None, v_scale=None):
        num_heads, num_kv_heads = check_gqa_heads(num_heads, num_kv_heads)
        head_dim = check_int(head_dim, "head_dim", minimum=1)
        if prefill_kernel is not None and not is_one_of(prefill_kernel, ("naive", "tiled")):
            raise ValueError(f"prefill_kernel: expected 'naive', 'tiled' or None (tiled when "
                             f"head_dim is {' or '.join(map(str, TILED_HEAD_DIMS))}, else "
                             f"naive), got {prefill_kernel!r}")
        dtype = element_dtype(dtype)
        kv_dtype = None if kv_dtype is None else kv_dtype_name(kv_dtype)   # a misspelling first
        if kv_dtype is not None and (dtype != np.float16 or head_dim not in HEAD_DIMS):
            raise ValueError(f"kv_dtype: compressed pages are read by the tensor-core prefill "
                             f"kernel, which needs dtype float16 and head_dim in {HEAD_DIMS}; "
                             f"got {dtype.name} and {head_dim}")
        prefill_kernel = _prefill_kernel(prefill_kernel, dtype, head_dim, kv_dtype)
        if kv_dtype is None:
            _check_kernels_take(head_dim, dtype, prefill_kernel)
        scale = resolve_scale(scale, head_dim)
        self.cache = PagedKVCache(num_pages, page_size, num_kv_heads, head_dim, dtype=dtype,
                                  device=device, kv_dtype=kv_dtype, scale_scheme=scale_scheme,
                                  k_scale=k_scale, v_scale=v_scale)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.page_size = self.cache.page_size
        self.scale, self.prefill_kernel = scale, prefill_kernel

    @property
    def xp(self):
        return self.cache.xp

    @property
    def seq_ids(self) -> list[int]:
        return self.cache.seq_ids

    def seq_len(self, seq_id: int) -> int:
        return self.cache.seq_len(seq_id)

    # -- the three operations ------------------------------------------------------------

    def add_sequence(self, k, v, q=None) -> AddedSequence:
        """Store a prompt's keys and values ([n, num_kv_heads, head_dim] each) as a new
        sequence; with q ([n, num_heads, head_dim]) also return its causal prefill output."""
        k = self._tokens(k, "k", self.num_kv_heads)
        v = self._tokens(v, "v", self.num_kv_heads)
        n = int(k.shape[0])
        if v.shape[0] != n:
            raise ValueError(f"v: expected {n} tokens like k, got shape {tuple(v.shape)}")
        if n == 0:
            raise ValueError("k: expected at least one prompt token, got 0")
        if q is not None:
            q = self._tokens(q, "q", self.num_heads)
            if q.shape[0] != n:
                raise ValueError(f"q: expected {n} tokens like k, got shape {tuple(q.shape)}")
        needed = -(-n // self.page_size)
        if needed > self.cache.allocator.num_free:
            raise OutOfPagesError(needed, self.cache.allocator.num_free, self.cache.num_pages)
        if q is not None:
            q = self._as_cache(q)[None]
        # The prefill reads the prompt's K/V from the cache, so they are written first; if
        # the kernel then fails, the transaction takes the sequence and its pages back.
        with self.cache.transaction():
            seq_id = self.cache.add_sequence()
            self.cache.append(seq_id, k, v)
            if q is None:
                return AddedSequence(seq_id, None)
            if self.prefill_kernel == "tensor_core":
                return AddedSequence(seq_id, self._attend_tensor_cores([seq_id], q[0], [n]))
            tables, lens = self.cache.block_tables([seq_id])
            out = paged_attention_prefill(q, self.cache.k_cache, self.cache.v_cache, tables,
                                          lens, self.scale, kernel=self.prefill_kernel)
        return AddedSequence(seq_id, out[0])

    def decode_step(self, seq_ids, q, k, v):
        """Append one token to each sequence (k, v [batch, num_kv_heads, head_dim]) and
        return its attention over the whole sequence, itself included ([batch, num_heads,
        head_dim]). All or nothing when pages run out."""
        seq_ids = self._seq_ids(seq_ids)
        batch = len(seq_ids)
        q = self._tokens(q, "q", self.num_heads)
        k = self._tokens(k, "k", self.num_kv_heads)
        v = self._tokens(v, "v", self.num_kv_heads)
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.shape[0] != batch:
                raise ValueError(f"{name}: expected {batch} rows (one per sequence in seq_ids), "
                                 f"got shape {tuple(x.shape)}")
        needed = self.cache.decode_pages_needed(seq_ids)
        if needed > self.cache.allocator.num_free:
            raise OutOfPagesError(needed, self.cache.allocator.num_free, self.cache.num_pages)
        q = self._as_cache(q)
        # The new token attends to itself, so its K/V go into the cache before the kernel
        # runs; if the kernel fails, the transaction undoes every append (a retry appends once).
        with self.cache.transaction():
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i:i + 1], v[i:i + 1])
            if self.cache.kv_dtype is not None:
                return self._attend_tensor_cores(seq_ids, q, [1] * batch)
            tables, lens = self.cache.block_tables(seq_ids)
            return paged_attention_decode(q, self.cache.k_cache, self.cache.v_cache, tables,
                                          lens, self.scale)

    def finish(self, seq_id: int) -> None:
        """The sequence is done: its pages go back to the pool."""
        self.cache.free_sequence(seq_id)

    # -- bookkeeping -----------------------------------------------------------------------

    def stats(self) -> MemoryStats:
        alloc, ps = self.cache.allocator, self.page_size
        lens = [self.cache.seq_len(s) for s in self.cache.seq_ids]
        # Slots holding a token, each page once: a fork shares its parent's pages, so summing
        # per sequence counted a shared tail's empty slots twice (and utilization passed 1).
        full, partial = set(), {}
        for seq_id, n in zip(self.cache.seq_ids, lens):
            table, (pages, rest) = self.cache.block_table(seq_id), divmod(n, ps)
            full.update(table[:pages])
            if rest:
                partial[table[pages]] = max(partial.get(table[pages], 0), rest)
        filled = ps * len(full) + sum(n for page, n in partial.items() if page not in full)
        return MemoryStats(
            pages_total=alloc.num_pages, pages_used=alloc.num_used, pages_free=alloc.num_free,
            sequences=len(lens), tokens_stored=sum(lens),
            slots_allocated=alloc.num_used * ps, internal_waste=alloc.num_used * ps - filled,
            bytes_per_token=self.cache.bytes_per_token,
            page_size=self.page_size)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"PagedAttentionManager(heads={self.num_heads}/{self.num_kv_heads} kv, "
                f"head_dim={self.head_dim}, {self.cache.dtype.name}, {self.cache.device}, "
                f"pages {s.pages_used}/{s.pages_total} used x {self.page_size} tokens, "
                f"sequences={s.sequences}, tokens={s.tokens_stored})")

    # -- internals -------------------------------------------------------------------------

    def _tokens(self, x, name: str, heads: int):
        check_array(x, name, ndim=3, dtypes=self.cache.token_dtypes, contiguous=False)
        if tuple(x.shape[1:]) != (heads, self.head_dim):
            what = "num_heads" if name == "q" else "num_kv_heads"
            raise ValueError(f"{name}: expected shape [n, {heads}, {self.head_dim}] ({what}, "
                             f"head_dim), got {tuple(x.shape)}")
        return x

    def _as_cache(self, x):
        """x as a contiguous array of the cache's dtype, on the cache's device, as the pages
        hold it (the kernels take q so: bfloat16 as uint16 bits on CuPy)."""
        return to_elements(x, self.cache.dtype, self.xp)

    def _attend_tensor_cores(self, seq_ids, q, q_lens):
        """Causal attention of each sequence's last q_lens[i] tokens on the tensor-core
        prefill: over compressed pages (dequantized as it reads) or bfloat16 ones, which the
        naive and tiled kernels do not read (q already as `_as_cache` gives it)."""
        tables, lens = self.cache.block_tables(seq_ids)
        indptr = self.xp.asarray(np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32))
        w = BatchPrefillWrapper().plan(indptr, tables, lens, self.num_heads, self.num_kv_heads,
                                       self.head_dim, self.page_size, self.cache.dtype,
                                       kv_dtype=self.cache.kv_dtype,
                                       scale_scheme=self.cache.scale_scheme or "static")
        return w.run(q, self.cache.k_cache, self.cache.v_cache, scale=self.scale,
                     k_scale=self.cache.k_scale, v_scale=self.cache.v_scale)

    def _seq_ids(self, seq_ids) -> list[int]:
        ids = check_int_list(seq_ids, "seq_ids", "sequence id")
        if not ids:
            raise ValueError("seq_ids: expected at least one sequence id, got none")
        live = set(self.cache.seq_ids)
        for i, s in enumerate(ids):
            if s not in live:
                raise KeyError(f"seq_ids[{i}]: no live sequence {s!r} (live: {sorted(live)})")
        refuse_repeats(ids)
        return ids


def _prefill_kernel(kernel: str | None, dtype: np.dtype, head_dim: int,
                    kv_dtype: str | None) -> str:
    """The prefill kernel the manager runs: on bfloat16 or compressed pages the tensor-core
    prefill, the only one that reads them; else `kernel`, or (None) tiled where it runs, else
    naive."""
    if dtype.name == "bfloat16" or kv_dtype is not None:
        pages = f"{kv_dtype} pages (kv_dtype)" if kv_dtype else "bfloat16 pages (dtype)"
        if kernel is not None:
            raise ValueError(f"prefill_kernel: {kernel!r} reads float32 or float16 pages, not "
                             f"{pages}; pass prefill_kernel=None for the tensor-core prefill, "
                             f"which reads them")
        return "tensor_core"
    if kernel is None:   # the fast kernel where it runs, else the one that runs
        return "tiled" if head_dim in TILED_HEAD_DIMS else "naive"
    return kernel


def _check_kernels_take(head_dim: int, dtype: np.dtype, prefill_kernel: str) -> None:
    """Refuse, when the manager is built, a head_dim its decode or prefill kernel cannot run
    (else the first call would store the prompt and only then meet the kernel's refusal)."""
    reason = supported_head_dim("simt", dtype.name, head_dim)
    if reason:
        raise ValueError(f"head_dim: {head_dim} is not supported by the decode kernel: {reason}")
    if prefill_kernel == "tensor_core" and head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim: {head_dim} is not supported by the tensor-core prefill "
                         f"kernel, the only one that reads {dtype.name} pages; supported: "
                         f"{', '.join(map(str, HEAD_DIMS))}")
    if prefill_kernel == "tiled" and head_dim not in TILED_HEAD_DIMS:
        raise ValueError(f"head_dim: {head_dim} is not supported by the tiled prefill kernel; "
                         f"supported: {', '.join(map(str, TILED_HEAD_DIMS))} "
                         f"(prefill_kernel='naive' takes any head_dim the decode kernel takes "
                         f"up to {NAIVE_MAX_HEAD_DIM})")
    if prefill_kernel == "naive" and head_dim > NAIVE_MAX_HEAD_DIM:
        raise ValueError(f"head_dim: {head_dim} is too large for the naive prefill kernel (at "
                         f"most {NAIVE_MAX_HEAD_DIM})")
