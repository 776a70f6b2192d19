"""The prefix cache: block hashing, and the page bookkeeping under random workloads.

`FakeStore` stands in for the K/V arrays (each slot holds the token id written there), so
"every running request reads back exactly its own tokens" checks copy on write, prefix
hits, eviction and swapping all at once, without a model.
"""
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import BlockPool, block_hashes, hash_block
from pagedattn_lab.engine.request import Request, SamplingParams
from pagedattn_lab.paging import OutOfPagesError

from .engine_fakes import FakeStore, assert_private

PAGE = 4


# -- hashing --------------------------------------------------------------------------------

def test_block_hash_covers_the_whole_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], PAGE)
    b = block_hashes([9, 9, 9, 9, 5, 6, 7, 8], PAGE)
    assert len(a) == 2, "the partial third block has no hash"
    assert a[1] != b[1], "same tokens after a different prefix must hash differently"
    assert a == block_hashes([1, 2, 3, 4, 5, 6, 7, 8], PAGE)
    assert hash_block(None, [1, 2]) != hash_block(None, [2, 1])
    assert hash_block(None, [1, 2, 3, 4]) == a[0]


# -- the pool ----------------------------------------------------------------------------------

def test_freed_cached_pages_stay_reusable_in_lru_order():
    pool = BlockPool(4)
    pages = pool.allocate(3)
    for i, p in enumerate(pages):
        assert pool.register(p, bytes([i]), [i] * PAGE)
    pool.free(reversed(pages))        # tail first: pages[2] is the first to be evicted
    assert pool.num_free == 4 and pool.lookup(bytes([0]), [0] * PAGE) == pages[0]
    pool.touch([pages[0]])            # a hit takes it back out of the free queue
    assert pool.ref_cnt[pages[0]] == 1 and pool.num_free == 3
    fresh = pool.allocate(2)          # the never-used page, then the LRU cached one
    assert fresh == [3, pages[2]] and pool.evictions == 1
    assert pool.lookup(bytes([2]), [2] * PAGE) is None
    assert pool.lookup(bytes([1]), [1] * PAGE) == pages[1]
    with pytest.raises(OutOfPagesError):
        pool.allocate(2)
    pool.check_invariants()


def test_double_free_raises():
    pool = BlockPool(2)
    page, = pool.allocate(1)
    pool.free([page])
    with pytest.raises(ValueError, match="already free"):
        pool.free([page])


# -- the manager under random workloads ---------------------------------------------------------

BASES = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 7, 7, 7, 7], [5, 5, 5, 5]]
prompts = st.builds(lambda base, cut, tail: base[:cut] + tail, st.sampled_from(BASES),
                    st.integers(0, 12), st.lists(st.integers(0, 9), max_size=6)).filter(bool)


class PrefixCacheMachine(RuleBasedStateMachine):
    """Admit, grow, finish, preempt, swap random requests with shared prefixes."""

    def __init__(self):
        super().__init__()
        self.store = FakeStore(10, PAGE, 12)
        self.kv = KVCacheManager(10, PAGE, enable_caching=True, num_host_pages=12,
                                 store=self.store)
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self.next_rid = 0

    def _protected(self):
        """Cached pages that someone holds: they must survive any operation."""
        pool = self.kv.pool
        return {h: p for h, p in pool.cached.items() if pool.ref_cnt[p] > 0}

    def _check_protected(self, before):
        for h, page in before.items():
            assert self.kv.pool.cached.get(h) == page, "a held cached page was evicted"

    @rule(prompt=prompts, chunk=st.integers(1, 8))
    def admit(self, prompt, chunk):
        req = Request(self.next_rid, list(prompt), SamplingParams())
        self.next_rid += 1
        hits, computed = self.kv.cached_prefix(req)
        assert computed < req.num_tokens, "at least the last token is always computed"
        assert self.store.read(Request(-1, req.prompt_ids, req.params, pages=hits,
                                       num_computed_tokens=len(hits) * PAGE)) == \
            req.prompt_ids[:len(hits) * PAGE], "a prefix hit must hold the prompt's tokens"
        n = min(chunk, req.num_tokens - computed)
        if self.kv.admission_cost(hits, computed, n) > self.kv.pool.num_free:
            return
        before = self._protected()
        self.kv.admit(req, hits, computed, n)
        self._compute(req, n)
        self._check_protected(before)
        self.running.append(req)

    def _compute(self, req, n):
        """What a step does after the model ran: K/V written, maybe a token sampled."""
        start = req.num_computed_tokens
        assert_private(self.kv, req, start, start + n)
        self.store.write(req, start, start + n)
        req.num_computed_tokens += n
        self.kv.register_computed(req)
        if req.num_computed_tokens == req.num_tokens:
            req.output_ids.append(req.num_tokens % 7)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), chunk=st.integers(1, 8))
    def grow(self, data, chunk):
        req = data.draw(st.sampled_from(self.running))
        n = min(chunk, req.num_tokens - req.num_computed_tokens)
        before = self._protected()
        free_before = self.kv.pool.num_free
        if self.kv.grow(req, n):
            self._compute(req, n)
            self._check_protected(before)
        else:
            assert self.kv.pool.num_free == free_before

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data):
        req = data.draw(st.sampled_from(self.running))
        self.running.remove(req)
        self.kv.free(req)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def swap_out(self, data):
        req = data.draw(st.sampled_from(self.running))
        if not self.kv.can_swap_out(req):
            return
        want = self.store.read(req)
        self.running.remove(req)
        self.kv.swap_out(req)
        assert not req.pages
        assert self.store.host[req.host_pages].ravel()[:len(want)].tolist() == want
        self.swapped.append(req)

    @precondition(lambda self: self.swapped)
    @rule()
    def swap_in(self):
        req = self.swapped[0]
        if self.kv.swap_in_cost(req) > self.kv.pool.num_free:
            return
        before = self._protected()
        self.kv.swap_in(req)
        self._check_protected(before)
        self.swapped.pop(0)
        self.running.append(req)

    @invariant()
    def ref_counts_equal_owners(self):
        pool = self.kv.pool
        pool.check_invariants()
        owners = {}
        for req in self.running:
            assert len(set(req.pages)) == len(req.pages), "a page twice in one block table"
            for page in req.pages:
                owners[page] = owners.get(page, 0) + 1
        assert {p: c for p, c in enumerate(pool.ref_cnt) if c} == owners

    @invariant()
    def shared_pages_are_cached_prefixes(self):
        """A page in two block tables got there only by a prefix hit: it is cached, and
        both requests reach it at the same block with the same hash."""
        seen = {}
        for req in self.running:
            hashes = self.kv.hashes(req)
            for i, page in enumerate(req.pages):
                if page in seen:
                    assert self.kv.pool.page_hash[page] is not None
                    assert seen[page] == (i, hashes[i])
                elif i < len(hashes):
                    seen[page] = (i, hashes[i])

    @invariant()
    def every_request_reads_back_its_tokens(self):
        for req in self.running:
            assert self.store.read(req) == req.tokens(0, req.num_computed_tokens)

    @invariant()
    def host_pages_are_accounted_for(self):
        held = sum(len(r.host_pages) for r in self.swapped)
        assert self.kv.host.num_used == held


TestPrefixCacheMachine = PrefixCacheMachine.TestCase


def test_whole_prompt_cached_copies_the_last_page_before_writing():
    store = FakeStore(6, PAGE)
    kv = KVCacheManager(6, PAGE, store=store)
    first = Request(0, list(range(8)), SamplingParams())
    kv.admit(first, [], 0, 8)
    store.write(first, 0, 8)
    first.num_computed_tokens = 8
    kv.register_computed(first)
    second = Request(1, list(range(8)), SamplingParams())
    hits, computed = kv.cached_prefix(second)
    assert hits == first.pages and computed == 7, "all cached, the last token recomputed"
    assert kv.admission_cost(hits, computed, 1) == 1, "one page: the copy"
    kv.admit(second, hits, computed, 1)
    assert second.pages[0] == first.pages[0] and second.pages[1] != first.pages[1]
    assert kv.cow_copies == 1 and store.read(second) == list(range(7))
    assert kv.hit_rate == pytest.approx(7 / 16)
