"""Hunt 111: the engine's KV cache manager driven directly, below the scheduler.

`KVManagerMachine` runs a `KVCacheManager` over a fake store that records, per page slot,
which token it holds, through random admissions (with their prefix hits), growth by chunks
(chunked prefill) and decode tokens, finishes, preemptions by recompute, swap-outs and
swap-ins, each called whether or not the pool can pay for it, and with the store's copy
failing halfway at random. After every rule: the pool's invariants, ref counts equal to the
holders, every computed token readable from its request's pages (device or host), every
cached page holding the tokens its hash entry names; a call that failed leaves the request,
the counters and the pool as before (a page taken from the free queue may forget its
prefix); a call the request's state forbids is refused by name, changing nothing. At the
end every page comes back. Also, refused by name before anything changes: `Scheduler.add`
of a prompt the manager cannot serve (empty, not token ids, past int64), `cached_prefix` of
an empty request, `admission_cost`'s arguments, swap calls without host pages, `hash_block`
of what is no block, a pool whose bookkeeping exceeds the machine's memory.
"""
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagedattn_lab.engine import EngineConfig
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import block_hashes, hash_block
from pagedattn_lab.engine.request import Request, SamplingParams, Status
from pagedattn_lab.engine.scheduler import Scheduler
from pagedattn_lab.paging import OutOfPagesError


class CopyFailed(Exception):
    pass


class FakeStore:
    """Pages as lists of token ids (None: never written); a copy may fail after writing half."""

    def __init__(self, num_pages, num_host_pages, page_size):
        self.dev = [[None] * page_size for _ in range(num_pages)]
        self.host = [[None] * page_size for _ in range(num_host_pages)]
        self.fail = False

    def _copy(self, src, src_ids, dst, dst_ids):
        for i, (s, d) in enumerate(zip(src_ids, dst_ids)):
            if self.fail and i == len(src_ids) // 2:
                dst[d][0] = "garbage"   # a copy interrupted halfway through a page
                raise CopyFailed
            dst[d] = list(src[s])
        if self.fail:
            raise CopyFailed

    def copy_page(self, src, dst):
        self._copy(self.dev, [src], self.dev, [dst])

    def swap_out(self, pages, host_pages):
        self._copy(self.dev, pages, self.host, host_pages)

    def swap_in(self, host_pages, pages):
        self._copy(self.host, host_pages, self.dev, pages)


def pool_snapshot(pool):
    return (list(pool.ref_cnt), list(pool.page_hash), list(pool.free_queue), pool.evictions)


def manager_snapshot(kv, req):
    host = kv.host.state() if kv.host is not None else None
    return (req.save(), pool_snapshot(kv.pool), host,
            (kv.query_tokens, kv.hit_tokens, kv.cow_copies))


def assert_unchanged(before, after):
    (req0, (cnt0, hash0, free0, _), host0, counts0) = before
    (req1, (cnt1, hash1, free1, _), host1, counts1) = after
    assert req1 == req0, "the request changed"
    assert cnt1 == cnt0 and free1 == free0, "ref counts or the free queue changed"
    assert host1 == host0, "the host pages changed"
    assert counts1 == counts0, "the hit / copy counters changed"
    for page, (h0, h1) in enumerate(zip(hash0, hash1)):
        # only a page taken from the free queue (a copy may have begun in it) may forget
        assert h1 == h0 or (h1 is None and page in free0), f"page {page}: hash changed"


ALPHABET = st.sampled_from([1, 2, 3])


class KVManagerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.kv = None

    @precondition(lambda self: self.kv is None)
    @rule(page_size=st.sampled_from([1, 2, 3]), num_pages=st.integers(2, 9),
          host=st.sampled_from([0, 3, 8]), caching=st.booleans())
    def build(self, page_size, num_pages, host, caching):
        self.ps = page_size
        self.store = FakeStore(num_pages, host, page_size)
        self.kv = KVCacheManager(num_pages, page_size, enable_caching=caching,
                                 num_host_pages=host, store=self.store)
        self.reqs = []
        self.next_rid = 0

    def _pick(self, data, status):
        reqs = [r for r in self.reqs if r.status is status]
        return data.draw(st.sampled_from(reqs)) if reqs else None

    def _call(self, req, fail, fn):
        """Run fn; a failure (no pages, a copy interrupted) must change nothing."""
        before = manager_snapshot(self.kv, req)
        self.store.fail = fail
        try:
            fn()
        except (OutOfPagesError, CopyFailed) as e:
            assert_unchanged(before, manager_snapshot(self.kv, req))
            return type(e)
        finally:
            self.store.fail = False
        assert not fail, "the copy meant to fail was never made"
        return None

    def _write(self, req, n):
        """The forward: tokens computed..computed+n-1 into their slots; then register."""
        for pos in range(req.num_computed_tokens, req.num_computed_tokens + n):
            page = req.pages[pos // self.ps]
            assert self.kv.pool.ref_cnt[page] == 1 and self.kv.pool.page_hash[page] is None, (
                f"position {pos} written into page {page}, shared or cached")
            self.store.dev[page][pos % self.ps] = req.tokens(pos, pos + 1)[0]
        req.num_computed_tokens += n
        self.kv.register_computed(req)

    @precondition(lambda self: self.kv is not None)
    @rule(prompt=st.lists(ALPHABET, min_size=1, max_size=8))
    def add(self, prompt):
        self.reqs.append(Request(self.next_rid, prompt, SamplingParams()))
        self.next_rid += 1

    @precondition(lambda self: self.kv is not None)
    @rule(data=st.data(), chunk=st.integers(1, 8), lookahead=st.integers(0, 4),
          fail=st.booleans())
    def admit(self, data, chunk, lookahead, fail):
        req = self._pick(data, Status.WAITING)
        if req is None:
            return
        hits, computed = self.kv.cached_prefix(req)
        n = min(chunk, req.num_tokens - computed)
        cost = self.kv.admission_cost(hits, computed, n, lookahead)
        copies = computed < len(hits) * self.ps   # (the last hit is copied on write)
        free = self.kv.pool.num_free
        error = self._call(req, fail and copies and cost <= free,
                           lambda: self.kv.admit(req, hits, computed, n, lookahead))
        # (the price may be a page high: a free hit that is copied on write goes back to
        # the free queue, where the lookahead can take it)
        assert error is not OutOfPagesError or cost > free, f"cost {cost}, free {free}"
        if error is None:
            assert req.num_computed_tokens == computed
            req.status = Status.RUNNING
            self._write(req, n)
        else:
            assert req.pages == [] and req.status is Status.WAITING

    @precondition(lambda self: self.kv is not None)
    @rule(data=st.data(), chunk=st.integers(1, 8))
    def grow(self, data, chunk):
        req = self._pick(data, Status.RUNNING)
        if req is None:
            return
        if req.num_computed_tokens == req.num_tokens:   # caught up: a decode token
            req.output_ids.append(data.draw(ALPHABET))
        n = min(chunk, req.num_tokens - req.num_computed_tokens)
        cost, free = self.kv.growth_cost(req, n), self.kv.pool.num_free
        before = manager_snapshot(self.kv, req)
        if self.kv.grow(req, n):
            assert cost <= free
            self._write(req, n)
        else:
            assert cost > free
            assert_unchanged(before, manager_snapshot(self.kv, req))

    @precondition(lambda self: self.kv is not None)
    @rule(data=st.data())
    def finish(self, data):
        req = self._pick(data, Status.RUNNING)
        if req is not None:
            self.kv.free(req)
            req.status = Status.FINISHED

    @precondition(lambda self: self.kv is not None)
    @rule(data=st.data())
    def preempt_recompute(self, data):
        req = self._pick(data, Status.RUNNING)
        if req is not None:
            self.kv.free(req)
            req.num_computed_tokens = 0
            req.status = Status.WAITING

    @precondition(lambda self: self.kv is not None and self.kv.host is not None)
    @rule(data=st.data(), fail=st.booleans())
    def swap_out(self, data, fail):
        req = self._pick(data, Status.RUNNING)
        if req is None or not self.kv.can_swap_out(req):
            return
        copies = req.num_computed_tokens > 0
        if self._call(req, fail and copies, lambda: self.kv.swap_out(req)) is None:
            req.status = Status.SWAPPED
            assert req.pages == []

    @precondition(lambda self: self.kv is not None and self.kv.host is not None)
    @rule(data=st.data(), fail=st.booleans())
    def swap_in(self, data, fail):
        req = self._pick(data, Status.SWAPPED)
        if req is None:
            return
        cost, free = self.kv.swap_in_cost(req), self.kv.pool.num_free
        error = self._call(req, fail and bool(req.host_pages) and cost <= free,
                           lambda: self.kv.swap_in(req))
        if error is not CopyFailed:
            assert (error is None) == (cost <= free), f"cost {cost}, free {free}: {error}"
        if error is None:
            req.status = Status.RUNNING
            assert req.host_pages == []

    @precondition(lambda self: self.kv is not None)
    @rule(data=st.data(), which=st.sampled_from(["admit", "swap_in", "grow", "free_pages",
                                                  "swap_out"]))
    def refused(self, data, which):
        """A call the request's state forbids raises by name and changes nothing."""
        req = self._pick(data, Status.RUNNING)
        if req is None or (which == "swap_out" and self.kv.host is None):
            return
        calls = {
            "admit": lambda: self.kv.admit(req, [], 0, 1),   # it holds pages already
            "swap_in": lambda: self.kv.swap_in(req),         # (no host: refused too)
            "grow": lambda: self.kv.grow(req, req.num_tokens - req.num_computed_tokens + 1),
            # its pages once more than they have owners: the last one twice
            "free_pages": lambda: self.kv.pool.free(req.pages + req.pages[-1:] * 99),
            "swap_out": lambda: (req.host_pages.append(0), self.kv.swap_out(req)),
        }
        before = manager_snapshot(self.kv, req)
        with pytest.raises(ValueError, match=r"^(req|num_new|pages\[\d+\]): "):
            calls[which]()
        if which == "swap_out":
            req.host_pages.pop()
        assert_unchanged(before, manager_snapshot(self.kv, req))

    @invariant()
    def bookkeeping(self):
        if self.kv is None:
            return
        pool = self.kv.pool
        pool.check_invariants()
        held = {}
        for req in self.reqs:
            if req.status is Status.RUNNING:
                assert len(set(req.pages)) == len(req.pages), f"a page twice in {req.pages}"
                for page in req.pages:
                    held[page] = held.get(page, 0) + 1
            else:
                assert req.pages == [], f"request {req.rid} ({req.status}) holds pages"
            if req.status is not Status.SWAPPED:
                assert req.host_pages == []
        assert {p: c for p, c in enumerate(pool.ref_cnt) if c} == held, "ref counts != holders"
        if self.kv.host is not None:
            swapped = [p for r in self.reqs for p in r.host_pages]
            assert len(set(swapped)) == len(swapped) == self.kv.host.num_used

    @invariant()
    def contents(self):
        if self.kv is None:
            return
        for req in self.reqs:
            if req.status is Status.RUNNING:
                pages, where = req.pages, self.store.dev
            elif req.status is Status.SWAPPED:
                pages, where = req.host_pages, self.store.host
            else:
                continue
            for pos in range(req.num_computed_tokens):
                got = where[pages[pos // self.ps]][pos % self.ps]
                assert got == req.tokens(pos, pos + 1)[0], (
                    f"request {req.rid} position {pos}: page holds {got}")
        pool = self.kv.pool
        for block_hash, page in pool.cached.items():
            assert tuple(self.store.dev[page]) == pool.page_tokens[page], (
                f"cached page {page} holds {self.store.dev[page]}, its entry says "
                f"{pool.page_tokens[page]}")

    def teardown(self):
        if self.kv is None:
            return
        for req in self.reqs:
            if req.status is Status.RUNNING:
                self.kv.free(req)
            elif req.status is Status.SWAPPED:
                self.kv.free_host(req)
        assert self.kv.pool.num_free == self.kv.pool.num_pages, "pages leaked"
        if self.kv.host is not None:
            assert self.kv.host.num_free == self.kv.host.num_pages, "host pages leaked"


KVManagerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                              deadline=None)
TestKVManagerMachine = KVManagerMachine.TestCase


# -- bad input, refused by name before anything changes -----------------------------------

def _scheduler(num_host_pages=0):
    config = EngineConfig(num_pages=8, page_size=2, num_host_pages=num_host_pages)
    kv = KVCacheManager(8, 2, num_host_pages=num_host_pages)
    return Scheduler(config, kv), kv


@pytest.mark.parametrize("prompt, params, exc, match", [
    ([], SamplingParams(), ValueError, r"req.prompt_ids: request 0 has no token; expected"),
    ([1, 2.0], SamplingParams(), TypeError, r"req.prompt_ids\[1\]: expected an integer"),
    ([1, True], SamplingParams(), TypeError, r"req.prompt_ids\[1\]: expected an integer"),
    ([3, -1], SamplingParams(), ValueError, r"req.prompt_ids\[1\]: expected a token id >= 0"),
    ([3, 2**63], SamplingParams(), ValueError, r"req.prompt_ids\[1\]: expected a token id "
                                               r"that fits int64 .*got 9223372036854775808$"),
    ("abc", SamplingParams(), TypeError, r"req.prompt_ids: expected a list of token ids"),
    ([1, 2], None, TypeError, r"req.params: expected a SamplingParams, got NoneType"),
])
def test_scheduler_add_refuses_a_prompt_it_cannot_serve_before_queueing(prompt, params, exc,
                                                                         match):
    """(an empty prompt was queued, and every schedule() after raised an IndexError)"""
    sched, kv = _scheduler()
    with pytest.raises(exc, match=match):
        sched.add(Request(0, prompt, params))
    assert not sched.has_unfinished() and sched.schedule().requests == []
    sched.add(Request(0, [1, 2], SamplingParams()))   # the id was not taken
    assert kv.pool.num_free == 8


def test_scheduler_add_keeps_numpy_prompts_as_python_ints():
    np = pytest.importorskip("numpy")
    sched, kv = _scheduler()
    req = Request(0, np.array([1, 2, 3]), SamplingParams())
    sched.add(req)
    assert req.prompt_ids == [1, 2, 3] and all(type(t) is int for t in req.prompt_ids)
    assert sched.schedule().num_new == [3]


def test_cached_prefix_refuses_an_empty_request_by_name():
    kv = KVCacheManager(4, 2)
    with pytest.raises(ValueError, match=r"req\.prompt_ids: request 7 has no token"):
        kv.cached_prefix(Request(7, [], SamplingParams()))


@pytest.mark.parametrize("args, exc, match", [
    (([], 0, 1, -5), ValueError, r"lookahead: expected an int >= 0, got -5"),
    (([], 0.5, 1), TypeError, r"computed: expected an int, got 0.5"),
    (([], 0, True), TypeError, r"num_new: expected an int, got True"),
    (([99], 2, 1), ValueError, r"hits\[0\]: page id 99 is not in this pool"),
    (([-1], 2, 1), ValueError, r"hits\[0\]: page id -1 is not in this pool"),
])
def test_admission_cost_refuses_bad_arguments_by_name(args, exc, match):
    """(a lookahead of -5 priced 0 pages; a hit of 99 raised an IndexError)"""
    kv = KVCacheManager(4, 2)
    with pytest.raises(exc, match=match):
        kv.admission_cost(*args)


def test_admit_keeps_numpy_ints_out_of_the_request_and_counters():
    np = pytest.importorskip("numpy")
    kv = KVCacheManager(8, 2)
    req = Request(0, [1, 2, 3, 4, 5], SamplingParams())
    hits, computed = kv.cached_prefix(req)
    kv.admit(req, hits, np.int64(computed), np.int64(3), np.int64(1))
    assert type(req.num_computed_tokens) is int and type(kv.hit_tokens) is int
    assert type(kv.hit_rate) is float and req.pages == [0, 1]


@pytest.mark.parametrize("call, match", [
    ("swap_in", r"req: this manager has no host pages to swap request 3 in from"),
    ("free_host", r"req: this manager has no host pages to give request 3's host pages back to"),
    ("swap_out", r"req: this manager has no host pages to swap request 3 out to"),
])
def test_swap_calls_without_host_pages_are_refused_by_name(call, match):
    """(swap_in and free_host raised an AttributeError on None)"""
    kv = KVCacheManager(4, 2)
    req = Request(3, [1, 2, 3], SamplingParams())
    before = pool_snapshot(kv.pool)
    with pytest.raises(ValueError, match=match):
        getattr(kv, call)(req)
    assert pool_snapshot(kv.pool) == before and req.pages == [] and req.host_pages == []


def test_scheduler_add_refuses_output_ids_that_are_no_token_ids():
    sched, _ = _scheduler()
    with pytest.raises(TypeError, match=r"req.output_ids\[0\]: expected an integer token id"):
        sched.add(Request(0, [1, 2], SamplingParams(), output_ids=[0.5]))
    assert not sched.has_unfinished()


@pytest.mark.parametrize("parent, tokens, exc, match", [
    (None, [1.5], TypeError, r"token_ids: expected a list of integer token ids, got float64"),
    (None, [True, False], TypeError, r"token_ids: expected a list of integer token ids, got bool"),
    (None, [[1, 2]], TypeError, r"token_ids: .* of shape \(1, 2\)"),
    ("abc", [1], TypeError, r"parent: expected the bytes hash_block returns"),
])
def test_hash_block_refuses_what_is_no_block_by_name(parent, tokens, exc, match):
    """(a float token was hashed as the int below it: another prompt's prefix hit)"""
    with pytest.raises(exc, match=match):
        hash_block(parent, tokens)


def test_hash_block_takes_numpy_and_python_ints_alike():
    np = pytest.importorskip("numpy")
    assert hash_block(None, np.array([1, 2], np.int32)) == hash_block(None, (1, 2))
    assert hash_block(hash_block(None, [1]), []) != hash_block(None, [])


@pytest.mark.parametrize("page_size, exc", [(0, ValueError), (-1, ValueError),
                                            (True, TypeError), (2.0, TypeError)])
def test_block_hashes_refuses_a_page_size_by_name(page_size, exc):
    """(-1 gave no hash at all, silently)"""
    with pytest.raises(exc, match=r"^page_size: "):
        block_hashes([1, 2, 3], page_size)


def test_a_pool_larger_than_memory_is_refused_by_name_not_killed(monkeypatch):
    """(KVCacheManager(10**9, 16), or dry_run with such a config, built 10^9 entries of
    Python bookkeeping, ~150 GB, and the out-of-memory killer ended the process)"""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**20)
    with pytest.raises(ValueError, match=r"^num_pages: the bookkeeping of a pool of 100000 "
                                         r"pages would take"):
        KVCacheManager(100_000, 16)
    KVCacheManager(1000, 16)   # (150 kB: fits)
