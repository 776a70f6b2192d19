"""The prefix cache's pool and manager refuse a page in the wrong state, changing nothing.

A free page that caches no block holds nothing any request computed: `BlockPool.touch` took it
as a prefix hit, `register` cached it (a later lookup handed it out as that block), and
`is_shared_or_cached` told a caller it could write into it. `KVCacheManager.admission_cost`
priced hits that cache nothing, which `admit` then refused.
"""
import pytest

from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import BlockPool, hash_block
from pagedattn_lab.engine.request import Request, SamplingParams


def pool_state(pool):
    return (list(pool.ref_cnt), list(pool.page_hash), list(pool.page_tokens), dict(pool.cached),
            list(pool.free_queue.items()), pool.evictions)


def pages_in_every_state():
    """A pool of 5 pages: 0 held and cached, 1 held privately, 2 free and cached, 3 and 4
    free, caching nothing (4 never used)."""
    pool = BlockPool(5)
    assert pool.allocate(4) == [0, 1, 2, 3]
    for page in (0, 2):
        assert pool.register(page, hash_block(None, [page]), [page])
    pool.free([2, 3])
    return pool


FREE_UNCACHED = "is free and caches no block"


@pytest.mark.parametrize("pages, index, page", [([3], 0, 3), ([0, 2, 4], 2, 4),
                                                ([1, 3, 0], 1, 3)])
def test_touch_refuses_a_free_page_caching_nothing_before_taking_any(pages, index, page):
    pool = pages_in_every_state()
    before = pool_state(pool)
    with pytest.raises(ValueError, match=rf"^pages\[{index}\]: page {page} {FREE_UNCACHED}; "
                                         rf"a prefix hit takes a page a request holds or a "
                                         rf"cached one \(what lookup returns\)$"):
        pool.touch(pages)
    assert pool_state(pool) == before
    pool.check_invariants()


def test_touch_takes_held_and_cached_free_pages():
    pool = pages_in_every_state()
    pool.touch([0, 1, 2])
    assert pool.ref_cnt == [2, 2, 1, 0, 0] and list(pool.free_queue) == [4, 3]
    pool.check_invariants()


@pytest.mark.parametrize("page", [3, 4])
def test_register_refuses_a_free_page_caching_nothing(page):
    pool = pages_in_every_state()
    before = pool_state(pool)
    with pytest.raises(ValueError, match=rf"^page: page {page} {FREE_UNCACHED}; only a page a "
                                         rf"request holds, its block computed, is offered to "
                                         rf"the cache$"):
        pool.register(page, hash_block(None, [7]), [7])
    assert pool_state(pool) == before
    assert pool.lookup(hash_block(None, [7]), [7]) is None


def test_register_still_takes_a_held_page_and_leaves_a_cached_one():
    pool = pages_in_every_state()
    assert pool.register(1, hash_block(None, [1]), [1])
    before = pool_state(pool)
    assert not pool.register(2, hash_block(None, [9]), [9])   # free, cached already: kept
    assert pool_state(pool) == before


def test_is_shared_or_cached_refuses_a_free_page_caching_nothing():
    pool = pages_in_every_state()
    with pytest.raises(ValueError, match=rf"^page: page 4 {FREE_UNCACHED}; a request writes "
                                         rf"only into its own pages \(or copies a cached one "
                                         rf"first\)$"):
        pool.is_shared_or_cached(4)
    assert [pool.is_shared_or_cached(p) for p in (0, 1, 2)] == [True, False, True]


def _manager_state(kv):
    return pool_state(kv.pool), kv.query_tokens, kv.hit_tokens, kv.cow_copies


@pytest.mark.parametrize("hits, index, page", [([1], 0, 1), ([0, 3], 1, 3)])
def test_admission_cost_refuses_a_hit_that_caches_nothing(hits, index, page):
    kv = KVCacheManager(5, 1)
    kv.pool = pages_in_every_state()
    before = _manager_state(kv)
    with pytest.raises(ValueError, match=rf"^hits\[{index}\]: page {page} caches no prefix; "
                                         rf"pass what cached_prefix returns$"):
        kv.admission_cost(hits, len(hits), 1)
    assert _manager_state(kv) == before
    # what cached_prefix gives is priced as before: a held hit costs nothing, a free one a page
    req = Request(0, [0, 5], SamplingParams())
    assert kv.cached_prefix(req) == ([0], 1)
    assert kv.admission_cost([0], 1, 1) == 1   # (the one new token's page)
    assert kv.admission_cost([2], 1, 1) == 2
