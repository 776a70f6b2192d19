"""A seeded decode batch split over ranks: the rank function that the tests, lesson 13 and the
benchmark launch, and the same batch computed in one process to compare with.

The batch is built by rank 0's allocator (`make_tables`): awkward lengths, and sequences
forked from others so that they share their parents' full prefix pages. Every (page, slot,
KV head) has its own seeded value (`kv_pool`), so a rank can make just its heads' pages and
the one-process run makes all of them, the same numbers either way. Slots no sequence reads
hold NaN: a kernel that read one would give NaN.
"""
from __future__ import annotations

import numpy as np

from ..paging import BlockAllocator
from ..prefill_wrapper import BatchPrefillWrapper
from ..wrappers import BatchDecodeWrapper
from .launch import launch
from .shard import HeadRange, check_split, head_range


def make_tables(seq_lens, page_size: int, num_pages: int, forks=(), seed: int = 0):
    """Rank 0's allocator at work: (block_tables int32 [batch, max_pages], seq_lens int32).

    forks: (child, parent) pairs: the child shares the parent's full pages up to its own
    length (a common prompt prefix) and gets fresh pages after. The allocator's free list is
    first shuffled so that pages are scattered, as in a long-running server.
    """
    lens = [int(n) for n in seq_lens]
    alloc = BlockAllocator(num_pages)
    scatter = np.random.default_rng(seed).permutation(num_pages)
    alloc.allocate(num_pages)
    alloc.free([int(p) for p in scatter])
    parents: dict[int, int] = {}
    for i, (child, parent) in enumerate(forks):
        # the parent's row must exist when the child's is made; a child named twice, or past
        # the batch, would be dropped without a word
        if not 0 <= parent < child < len(lens) or child in parents:
            raise ValueError(f"forks[{i}]: expected (child, parent) with 0 <= parent < child "
                             f"< {len(lens)} (a child forks an earlier sequence), each child "
                             f"once; got ({child}, {parent})")
        parents[child] = parent
    rows: list[list[int]] = []
    for b, n in enumerate(lens):
        need = -(-n // page_size)
        shared = []
        if b in parents:
            full = min(lens[parents[b]], n - 1) // page_size    # whole pages only
            shared = rows[parents[b]][:full]
            alloc.incref(shared)
        rows.append(shared + alloc.allocate(need - len(shared)))
    tables = np.full((len(lens), max(map(len, rows))), -1, np.int32)
    for b, row in enumerate(rows):
        tables[b, :len(row)] = row
    return tables, np.array(lens, np.int32)


def kv_pool(seed: int, heads: HeadRange, num_pages: int, page_size: int, head_dim: int,
            dtype, block_tables, seq_lens, xp=np):
    """(k_cache, v_cache) [num_pages, page_size, kv heads of `heads`, head_dim]: the seeded
    values of these heads; NaN in every slot no sequence reads."""
    read = np.zeros((num_pages, page_size), bool)
    for row, n in zip(np.asarray(block_tables), np.asarray(seq_lens)):
        slots = np.arange(int(n))
        read[row[slots // page_size], slots % page_size] = True
    caches = []
    for which in (0, 1):
        per_head = [np.random.default_rng([seed, which, h]).standard_normal(
            (num_pages, page_size, head_dim)) for h in range(heads.kv_start, heads.kv_stop)]
        cache = np.stack(per_head, axis=2)
        cache[~read] = np.nan
        caches.append(xp.asarray(cache.astype(dtype)))
    return tuple(caches)


def make_q(seed: int, batch: int, num_heads: int, head_dim: int, dtype) -> np.ndarray:
    """The step's queries, all heads (every rank has them: in a model they come from the
    replicated hidden state through the rank's column of the QKV projection)."""
    return np.random.default_rng([seed, 2]).standard_normal(
        (batch, num_heads, head_dim)).astype(dtype)


SMALL = 1 << 20   # elements of a rank's cache still sent back to the launcher

DEFAULT_CASE = dict(seq_lens=(37, 1, 16, 70, 33, 17), forks=((4, 3), (5, 0)), num_heads=8,
                    num_kv_heads=4, head_dim=64, page_size=16, num_pages=40,
                    dtype="float32", seed=0)


def tp_decode_rank(rank: int, world_size: int, case: dict | None = None, num_splits=None,
                   device: str = "cpu", repeats: int = 1) -> dict:
    """One rank of the decode step of `case` (DEFAULT_CASE's keys): returns the gathered
    output, this rank's heads and cache shape, and the step's phase timings (seconds)."""
    from .decode import TPDecode  # noqa: PLC0415 - needs torch, which only ranks import
    c = {**DEFAULT_CASE, **(case or {})}
    ps, d = c["page_size"], c["head_dim"]
    tables = lens = None
    if rank == 0:       # only rank 0 runs the allocator; the others learn its tables
        tables, lens = make_tables(c["seq_lens"], ps, c["num_pages"], c["forks"], c["seed"])
    max_pages = -(-max(c["seq_lens"]) // ps)
    tp = TPDecode(c["num_heads"], c["num_kv_heads"], d, ps, c["dtype"], len(c["seq_lens"]),
                  max_pages, device=device, num_splits=num_splits)
    xp = tp.xp
    tables, lens = tp.share_tables(tables, lens)    # once more each step, in tp.step
    tables_h, lens_h = _host(tables).copy(), _host(lens).copy()
    k, v = kv_pool(c["seed"], tp.heads, c["num_pages"], ps, d, c["dtype"], tables_h, lens_h, xp)
    h = tp.heads
    q = make_q(c["seed"], len(lens_h), c["num_heads"], d, c["dtype"])[:, h.q_start:h.q_stop]
    q = xp.asarray(np.ascontiguousarray(q))
    out_local = xp.full(q.shape, np.nan, q.dtype)   # poisoned: a head not written shows
    for _ in range(repeats):
        out = tp.step(q, k, v, tables_h if rank == 0 else None, lens_h if rank == 0 else None,
                      out_local)
    return {"rank": rank, "heads": tuple(h), "k_shape": tuple(k.shape),
            "tables": tables_h, "seq_lens": lens_h,
            "out": _host(out), "timings": dict(tp.timings),
            "k": _host(k) if k.size <= SMALL else None}   # a test's cache, not a benchmark's


PREFILL_CASE = dict(DEFAULT_CASE, q_lens=(37, 1, 16, 23, 1, 1), dtype="float16")


def _prefill_inputs(c, heads: HeadRange, tables, lens, xp=np):
    """(q of `heads` [total_q, ...], k, v, qo_indptr): a chunk of new tokens per sequence,
    the last q_lens[b] of its seq_lens[b] (their K/V already in the cache)."""
    indptr = np.concatenate([[0], np.cumsum(c["q_lens"])]).astype(np.int32)
    k, v = kv_pool(c["seed"], heads, c["num_pages"], c["page_size"], c["head_dim"], c["dtype"],
                   tables, lens, xp)
    q = np.random.default_rng([c["seed"], 3]).standard_normal(
        (int(indptr[-1]), c["num_heads"], c["head_dim"])).astype(c["dtype"])
    return xp.asarray(np.ascontiguousarray(q[:, heads.q_start:heads.q_stop])), k, v, indptr


def tp_prefill_rank(rank: int, world_size: int, case: dict | None = None,
                    device: str = "cpu") -> dict:
    """One rank of the packed prefill step of `case` (PREFILL_CASE's keys)."""
    from .prefill import TPPrefill  # noqa: PLC0415 - needs torch, which only ranks import
    c = {**PREFILL_CASE, **(case or {})}
    tables = lens = None
    if rank == 0:
        tables, lens = make_tables(c["seq_lens"], c["page_size"], c["num_pages"], c["forks"],
                                   c["seed"])
    tp = TPPrefill(c["num_heads"], c["num_kv_heads"], c["head_dim"], c["page_size"],
                   c["dtype"], len(c["seq_lens"]), -(-max(c["seq_lens"]) // c["page_size"]),
                   device=device)
    tables_h, lens_h, _ = (_host(a).copy() for a in tp.share_tables(
        tables, lens, np.concatenate([[0], np.cumsum(c["q_lens"])]).astype(np.int32)))
    q, k, v, indptr = _prefill_inputs(c, tp.heads, tables_h, lens_h, tp.xp)
    out_local = tp.xp.full(q.shape, np.nan, q.dtype)
    out = tp.step(q, k, v, tables_h, lens_h, indptr, out_local)
    return {"rank": rank, "heads": tuple(tp.heads), "k_shape": tuple(k.shape),
            "out": _host(out), "timings": dict(tp.timings)}


def single_process_prefill(case: dict | None = None, xp=np) -> dict:
    """The prefill step of `case` in this process, every head (NumPy: the CPU executor;
    CuPy: this process's GPU); with its inputs (NumPy)."""
    c = {**PREFILL_CASE, **(case or {})}
    tables, lens = make_tables(c["seq_lens"], c["page_size"], c["num_pages"], c["forks"],
                               c["seed"])
    every = head_range(0, 1, c["num_heads"], c["num_kv_heads"])
    q, k, v, indptr = _prefill_inputs(c, every, tables, lens)
    w = BatchPrefillWrapper().plan(*(xp.asarray(a) for a in (indptr, tables, lens)),
                                   c["num_heads"], c["num_kv_heads"], c["head_dim"],
                                   c["page_size"], c["dtype"])
    out = w.run(*(xp.asarray(a) for a in (q, k, v)))
    return {"out": _host(out).copy(), "q": q, "k_cache": k, "v_cache": v,
            "qo_indptr": indptr, "block_tables": tables, "seq_lens": lens}


def run_tp_decode(world_size: int, case: dict | None = None, *, num_splits=None,
                  device: str = "cpu", repeats: int = 1, timeout: float = 300.0) -> list[dict]:
    """`tp_decode_rank` on `world_size` new processes (gloo on the CPU, NCCL on GPUs); the
    split is checked first, so a bad one is refused before any process starts."""
    c = {**DEFAULT_CASE, **(case or {})}
    check_split(c["num_heads"], c["num_kv_heads"], world_size)
    return launch(tp_decode_rank, world_size, c, num_splits=num_splits, device=device,
                  repeats=repeats, backend="nccl" if device == "gpu" else "gloo",
                  timeout=timeout)


def run_tp_prefill(world_size: int, case: dict | None = None, *, device: str = "cpu",
                   timeout: float = 300.0) -> list[dict]:
    """`tp_prefill_rank` on `world_size` new processes, the split checked first."""
    c = {**PREFILL_CASE, **(case or {})}
    check_split(c["num_heads"], c["num_kv_heads"], world_size)
    return launch(tp_prefill_rank, world_size, c, device=device,
                  backend="nccl" if device == "gpu" else "gloo", timeout=timeout)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def single_process_decode(case: dict | None = None, num_splits=None, xp=np) -> dict:
    """The same step in this process, all heads on one device (NumPy: the CPU executor; CuPy:
    this process's GPU): what the ranks' gathered output must equal. Returns the inputs too
    (NumPy), for the float64 reference."""
    c = {**DEFAULT_CASE, **(case or {})}
    ps, d = c["page_size"], c["head_dim"]
    tables, lens = make_tables(c["seq_lens"], ps, c["num_pages"], c["forks"], c["seed"])
    every = head_range(0, 1, c["num_heads"], c["num_kv_heads"])
    k, v = kv_pool(c["seed"], every, c["num_pages"], ps, d, c["dtype"], tables, lens)
    q = make_q(c["seed"], len(lens), c["num_heads"], d, c["dtype"])
    w = BatchDecodeWrapper().plan(xp.asarray(tables), xp.asarray(lens), c["num_heads"],
                                  c["num_kv_heads"], d, ps, c["dtype"], num_splits=num_splits)
    out = w.run(*(xp.asarray(a) for a in (q, k, v)))
    return {"out": _host(out).copy(), "q": q, "k_cache": k, "v_cache": v,
            "block_tables": tables, "seq_lens": lens}
