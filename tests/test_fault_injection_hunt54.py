"""A call that fails halfway leaves every table, page and length as it was.

Each test runs a mutating call with a collaborator made to raise at its k-th invocation
(a device out of memory, an interrupt) and compares the whole observable state, free list
order and page contents included, with a snapshot taken before.
"""
import numpy as np
import pytest

from pagedattn_lab import BlockAllocator, PagedKVCache
from pagedattn_lab import cache as cache_module
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, SamplingParams


class Injected(Exception):
    pass


def fail_at(monkeypatch, obj, name: str, k: int, exc=MemoryError):
    """Make obj.name raise `exc` at its k-th call; returns a list holding the call count."""
    original, calls = getattr(obj, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise exc("injected")
        return original(*args, **kwargs)
    monkeypatch.setattr(obj, name, wrapper)
    return calls


def cache_state(cache):
    alloc = cache.allocator
    return (alloc.free_list(), {p: alloc.ref_count(p) for p in range(alloc.num_pages)},
            {s: (cache.block_table(s), cache.seq_len(s)) for s in cache.seq_ids},
            cache._next_seq_id, cache.k_cache.tobytes(), cache.v_cache.tobytes(), cache._undo,
            None if cache.k_scale is None else (cache.k_scale.tobytes(), cache.v_scale.tobytes()))


def shared_cache(kv_dtype=None):
    """Sequence a (6 tokens, pages of 4) forked into b: both share a partly filled tail;
    a third sequence's pages were freed, so the free list has returned pages too.
    kv_dtype "int8": per-token scales, written (and to be put back) with the rows."""
    rng = np.random.default_rng(0)
    quant = dict(dtype=np.float16, kv_dtype="int8", scale_scheme="per_token") if kv_dtype else {}
    cache = PagedKVCache(12, 4, 1, 2, device="cpu", **quant)
    rows = lambda n: rng.random((n, 1, 2), dtype=np.float32)   # noqa: E731
    a = cache.add_sequence()
    cache.append(a, rows(6), rows(6))
    b = cache.fork_sequence(a)
    c = cache.add_sequence()
    cache.append(c, rows(3), rows(3))
    cache.free_sequence(c)
    return cache, a, b


def grow(cache, seq, n=7):
    ones = np.ones((n, 1, 2), np.float32)
    cache.append(seq, ones, ones)


APPEND_FAULTS = [("cache", "_write"), ("cache", "_copy_on_write_tail"), ("alloc", "free"),
                 ("module", "token_slots"), ("cache", "_save_rows")]


@pytest.mark.parametrize("kv_dtype, exc", [(None, MemoryError), (None, KeyboardInterrupt),
                                           ("int8", MemoryError)])
@pytest.mark.parametrize("where, name", APPEND_FAULTS)
def test_append_that_fails_halfway_changes_nothing(monkeypatch, where, name, kv_dtype, exc):
    """A copy-on-write append (3 pages: the tail's copy and 2 new ones) failing in the
    write, the copy or the release of the shared tail: the pages leaked, the table kept the
    new pages and the copy's rows stayed in a free page."""
    for k in (1, 2):
        cache, a, b = shared_cache(kv_dtype)
        before = cache_state(cache)
        target = {"cache": cache, "alloc": cache.allocator, "module": cache_module}[where]
        with monkeypatch.context() as patch:
            calls = fail_at(patch, target, name, k, exc)
            try:
                grow(cache, b)
            except exc:
                pass
        if calls[0] < k:
            continue
        assert cache_state(cache) == before, (name, k)
        cache.allocator.check_invariants()
        grow(cache, b)   # the retry succeeds and reads back what it wrote
        assert cache.seq_len(b) == 13 and (cache.gather(b)[0][6:] == 1).all()
        assert (cache.gather(a)[0] == shared_cache(kv_dtype)[0].gather(a)[0]).all()


def test_fork_that_fails_leaves_no_child(monkeypatch):
    cache, a, _ = shared_cache()
    before = cache_state(cache)
    fail_at(monkeypatch, cache.allocator, "incref", 1)
    with pytest.raises(MemoryError):
        cache.fork_sequence(a)
    assert cache_state(cache) == before


def test_transaction_whose_snapshot_fails_leaves_no_undo_log(monkeypatch):
    """allocator.state() out of memory as a transaction begins: the undo log stayed on, so
    every later write was copied into it and every later transaction counted as nested."""
    cache, _, b = shared_cache()
    fail_at(monkeypatch, cache.allocator, "state", 1)
    with pytest.raises(MemoryError):
        with cache.transaction():
            pass
    assert cache._undo is None


@pytest.mark.parametrize("history", ["fresh", "returned", "both", "exhausted"])
def test_unallocate_puts_pages_back_in_their_place(history):
    alloc = BlockAllocator(6)
    if history != "fresh":
        held = alloc.allocate(6 if history == "exhausted" else 4)
        alloc.free([held[2], held[0], held[-1]])
    before, state = alloc.free_list(), alloc.state()
    n = {"fresh": 3, "returned": 2, "both": 4, "exhausted": 3}[history]
    alloc.unallocate(alloc.allocate(n))
    assert alloc.free_list() == before and alloc.num_used == len(state.owners)
    alloc.check_invariants()


def test_unallocate_refuses_a_shared_page_by_index():
    alloc = BlockAllocator(4)
    pages = alloc.allocate(2)
    alloc.incref(pages[1:])
    with pytest.raises(ValueError, match=r"pages\[1\]: page 1 has 2 owner"):
        alloc.unallocate(pages)
    assert alloc.ref_count(0) == 1


# -- the engine's KVCacheManager, outside a step's begin / rollback ---------------------------

class LogStore:
    """A KVStore stand-in that only records the copies asked of it."""

    def __init__(self):
        self.log = []

    def copy_page(self, src, dst):
        self.log.append(("copy", src, dst))

    def swap_out(self, pages, host_pages):
        self.log.append(("out", list(pages), list(host_pages)))

    def swap_in(self, host_pages, pages):
        self.log.append(("in", list(host_pages), list(pages)))


def kv_manager(num_host_pages=6):
    kv = KVCacheManager(10, 2, num_host_pages=num_host_pages, store=LogStore())
    kv.host.free(kv.host.allocate(3)[::-1])   # a host free list out of id order: [3, 4, 5, 2, 1, 0]
    req = Request(0, [7, 7, 7], SamplingParams())
    kv.admit(req, [], 0, 3)
    req.num_computed_tokens = 3
    return kv, req


def test_swap_out_whose_copy_fails_keeps_the_host_free_list_order(monkeypatch):
    """host.free() gave the host pages back at the end of the host free list."""
    kv, req = kv_manager()
    before = (kv.host.free_list(), list(kv.pool.free_queue), req.pages)
    fail_at(monkeypatch, kv.store, "swap_out", 1, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        kv.swap_out(req)
    assert (kv.host.free_list(), list(kv.pool.free_queue), req.pages) == before
    assert req.host_pages == []


def test_swap_in_whose_host_free_fails_leaves_the_request_swapped_out(monkeypatch):
    """The request was handed its device pages before its host pages were freed: a failure
    there left it holding both (device pages counted as used, never to be freed)."""
    kv, req = kv_manager()
    kv.swap_out(req)
    host_pages, used = list(req.host_pages), kv.pool.num_used
    fail_at(monkeypatch, kv.host, "free", 1)
    with pytest.raises(MemoryError):
        kv.swap_in(req)
    assert (req.pages, req.host_pages, kv.pool.num_used) == ([], host_pages, used)
    kv.pool.check_invariants()
    monkeypatch.undo()
    kv.swap_in(req)
    assert len(req.pages) == 2 and req.host_pages == [] and kv.host.num_free == 6


def test_admit_whose_copy_on_write_release_fails_leaks_no_reference(monkeypatch):
    """A prompt wholly cached: its last page is copied on write. Releasing the cached page
    failed after the table pointed at the copy, so admit()'s clean-up freed the copy and
    left the cached page one owner too many, never to be freed or evicted."""
    kv, first = kv_manager()
    kv.free(first)
    owner = Request(1, [1, 2, 3, 4], SamplingParams())
    kv.admit(owner, [], 0, 4)
    owner.num_computed_tokens = 4
    kv.register_computed(owner)
    kv.free(owner)   # its 2 pages stay cached, free
    req = Request(2, [1, 2, 3, 4], SamplingParams())
    hits, computed = kv.cached_prefix(req)
    counts = list(kv.pool.ref_cnt)
    fail_at(monkeypatch, kv.pool, "free", 1)
    with pytest.raises(MemoryError):
        kv.admit(req, hits, computed, 4 - computed)
    assert kv.pool.ref_cnt == counts and req.pages == []
    kv.pool.check_invariants()


def test_unallocate_with_never_used_restores_the_exact_state():
    """With every page handed out once and the last page returned first, a returned page
    num_pages - 1 looks like a never-used one; given num_never_used from before the allocate,
    unallocate puts back the very state (not only the same free list)."""
    alloc = BlockAllocator(4)
    held = alloc.allocate(4)
    alloc.free([held[3], held[1]])
    before, never_used = alloc.state(), alloc.num_never_used
    alloc.unallocate(alloc.allocate(2), never_used)
    assert alloc.state() == before
    with pytest.raises(ValueError, match="never used before it"):
        alloc.unallocate(alloc.allocate(2), 2)   # 2 claimed never used: they were returned
