"""Hunt 61: every public KVCacheManager / BlockPool call is all or nothing outside a step too.

A step's rollback puts the prefix cache back; a call made outside a step (a test, a notebook,
an engine built by hand) had only ad-hoc clean-ups: admit() and swap_in() failing halfway freed
what they held to the BACK of the LRU free queue, so the pages they took from the middle (prefix
hits) or the front (evicting cached prefixes) came back in another order, their hashes lost.

Each test injects a failure at the k-th call of one collaborator (the pool, the host allocator,
the K/V store) and compares the whole state with a snapshot taken before: the free queue's order,
every page's count, hash and tokens, the hash table, the host free list, the counters and every
request. The one change allowed: a page the call took from the free queue forgets the prefix it
cached, because a copy into it (copy on write, swap-in) may have begun (the step's rule too).
"""
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pagedattn_lab.engine import EngineConfig, LLMEngine, LlamaModel, random_weights, tiny_config
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, SamplingParams, Status
from pagedattn_lab.engine.scheduler import Scheduler

from .engine_fakes import FakeStore
from .test_fault_injection_hunt54 import fail_at

PS = 2


def compute(kv, req, n, register=True):
    """The forward's part: write the request's next n tokens into its pages."""
    kv.store.write(req, req.num_computed_tokens, req.num_computed_tokens + n)
    req.num_computed_tokens += n
    if register:
        kv.register_computed(req)


def served(kv, rid, prompt, register=True):
    req = Request(rid, list(prompt), SamplingParams())
    kv.admit(req, [], 0, len(prompt))
    compute(kv, req, len(prompt), register)
    return req


def scenario():
    """Pool of 10 pages of 2 tokens, free queue [2 1 0 5 4 3 9 8] (front first), all of them but
    9 caching a block; a running request (pages 6, 7) shared with a twin (a fork); a request
    swapped out to host pages; a host free list out of id order."""
    kv = KVCacheManager(10, PS, num_host_pages=6, store=FakeStore(10, PS, 6))
    kv.host.free(kv.host.allocate(3)[::-1])
    kv.free(served(kv, 0, [1, 2, 3, 4, 5, 6]))   # pages 0 1 2, cached
    kv.free(served(kv, 1, [9, 8, 7, 6, 5, 4]))   # pages 3 4 5, cached
    running = served(kv, 2, [3, 3, 3, 7], register=False)   # pages 6 7, nothing cached yet
    running.num_computed_tokens = 3
    twin = Request(3, [3, 3, 3], SamplingParams(), pages=list(running.pages),
                   num_computed_tokens=3)
    kv.pool.touch(twin.pages)
    swapped = served(kv, 4, [4, 4, 4])   # pages 8 9, page 8 cached
    kv.swap_out(swapped)
    assert list(kv.pool.free_queue) == [2, 1, 0, 5, 4, 3, 9, 8]
    return kv, {"running": running, "twin": twin, "swapped": swapped}


def whole_prompt_cached(kv, reqs):
    """Every token cached: the last one's page is copied on write (into page 5, cached);
    2 tokens of lookahead take one more page (page 4, cached)."""
    req = reqs["new"] = Request(5, [1, 2, 3, 4, 5, 6], SamplingParams())
    hits, computed = kv.cached_prefix(req)
    assert (hits, computed) == ([0, 1, 2], 5)
    return lambda: kv.admit(req, hits, computed, 1, lookahead=2)


def prefix_hit(kv, reqs):
    req = reqs["new"] = Request(5, [1, 2, 3, 4, 7], SamplingParams())
    hits, computed = kv.cached_prefix(req)
    assert (hits, computed) == ([0, 1], 4)
    return lambda: kv.admit(req, hits, computed, 1)


def register(kv, reqs):
    compute(kv, reqs["running"], 1, register=False)   # 4 tokens computed: 2 full blocks
    return lambda: kv.register_computed(reqs["running"])


def grow_over_shared(kv, reqs):
    """3 tokens to write from token 3 on: page 7 (shared with the twin) copied, one more."""
    reqs["running"].output_ids += [8, 9]   # (grow takes only tokens the request has)
    return lambda: kv.grow(reqs["running"], 3)


# Each sets up (on the scenario) and returns the call under test.
CALLS = {
    "admit, whole prompt cached": whole_prompt_cached,
    "admit, prefix hit": prefix_hit,
    "grow over a shared page": grow_over_shared,
    "swap_in": lambda kv, reqs: lambda: kv.swap_in(reqs["swapped"]),
    "swap_out": lambda kv, reqs: lambda: kv.swap_out(reqs["running"]),
    "register_computed": register,
    "free": lambda kv, reqs: lambda: kv.free(reqs["running"]),
    "free_host": lambda kv, reqs: lambda: kv.free_host(reqs["swapped"]),
}

FAULTS = [("pool", "touch"), ("pool", "allocate"), ("pool", "free"), ("pool", "register"),
          ("store", "copy_page"), ("store", "swap_out"), ("store", "swap_in"),
          ("host", "allocate"), ("host", "free")]


def prepared(call):
    kv, reqs = scenario()
    return kv, reqs, CALLS[call](kv, reqs)


def snapshot(kv, reqs):
    """The manager's whole state."""
    pool = kv.pool
    return {"free queue": list(pool.free_queue.items()), "counts": list(pool.ref_cnt),
            "hashes": list(pool.page_hash), "tokens": list(pool.page_tokens),
            "cached": dict(pool.cached), "evictions": pool.evictions, "host": kv.host.state(),
            "counters": (kv.query_tokens, kv.hit_tokens, kv.cow_copies),
            "requests": {name: r.save() for name, r in reqs.items()}, "undo": pool._undo}


def forgetting(snap: dict, pages) -> dict:
    """The snapshot with the cached prefix of `pages` dropped (BlockPool.forget)."""
    snap = dict(snap, hashes=list(snap["hashes"]), tokens=list(snap["tokens"]),
                cached=dict(snap["cached"]))
    for page in set(pages):
        if snap["hashes"][page] is not None:
            del snap["cached"][snap["hashes"][page]]
            snap["hashes"][page] = snap["tokens"][page] = None
            snap["evictions"] += 1
    return snap


def assert_contents_true(kv, reqs):
    """No lie: each cached page holds its block's tokens, each request reads back its own."""
    for page, tokens in enumerate(kv.pool.page_tokens):
        if tokens is not None:
            assert tuple(kv.store.slots[page]) == tokens, f"page {page} caches {tokens}"
    for name in ("running", "twin"):
        req = reqs[name]
        assert kv.store.read(req) == req.tokens(0, req.num_computed_tokens), name


def recording_allocations(monkeypatch, pool) -> list[int]:
    taken, allocate = [], pool.allocate

    def recorded(n):
        pages = allocate(n)
        taken.extend(pages)
        return pages
    monkeypatch.setattr(pool, "allocate", recorded)
    return taken


@pytest.mark.parametrize("exc", [MemoryError, KeyboardInterrupt])
@pytest.mark.parametrize("where, name", FAULTS, ids=[f"{w}.{n}" for w, n in FAULTS])
@pytest.mark.parametrize("call", list(CALLS))
def test_a_call_failing_halfway_changes_nothing(monkeypatch, call, where, name, exc):
    for k in (1, 2, 3):
        kv, reqs, run = prepared(call)
        with monkeypatch.context() as patch:
            taken = recording_allocations(patch, kv.pool)
            target = {"pool": kv.pool, "store": kv.store, "host": kv.host}[where]
            calls = fail_at(patch, target, name, k, exc)
            try:
                run()
            except exc:
                pass
        if calls[0] < k:   # the call makes fewer than k such calls: nothing was injected
            break
        kv0, reqs0, _ = prepared(call)
        assert snapshot(kv, reqs) == forgetting(snapshot(kv0, reqs0), taken), (call, k)
        kv.pool.check_invariants()
        kv.host.check_invariants()
        assert_contents_true(kv, reqs)
        run()   # the call can simply be made again
        kv.pool.check_invariants()


# -- bad input: refused by name, before anything changes ------------------------------------------

def state(kv):
    return snapshot(kv, {})


def holding():
    """A manager and a request computed on 2 device pages."""
    kv = KVCacheManager(8, PS, num_host_pages=4, store=FakeStore(8, PS, 4))
    return kv, served(kv, 0, [1, 2, 3])


def test_admit_refuses_a_request_that_holds_pages():
    """Admitted twice, a request's first pages were replaced in its table and leaked (held
    for ever); swapped out, its host pages would have been."""
    kv, req = holding()
    before, pages = state(kv), list(req.pages)
    with pytest.raises(ValueError, match=r"^req: request 0 holds device pages \[0, 1\] already; "
                                         r"admit takes a waiting request"):
        kv.admit(req, [], 0, 3)
    assert state(kv) == before and req.pages == pages
    kv.swap_out(req)
    with pytest.raises(ValueError, match=r"^req: request 0 holds host pages \[0, 1\]"):
        kv.admit(req, [], 0, 3)


@pytest.mark.parametrize("hits, computed, num_new, lookahead, match", [
    ([0], 5, 1, 0, r"^computed: expected 0\.\.1 \(request 5 has 2 tokens"),
    ([1], 1, 1, 0, r"^hits\[0\]: page 1 caches no prefix; pass what cached_prefix returns$"),
    ([0, 0], 1, 1, 0, r"^hits: expected 1 page\(s\) holding the 1 computed token\(s\), got "
                      r"\[0, 0\] \(pass what cached_prefix returns\)$"),
    ([9], 1, 1, 0, r"^hits\[0\]: page id 9 is not in this pool"),
    ([], 0, 3, 0, r"^num_new: expected 0\.\.2 \(the request's 2 tokens less 0 computed\), "
                  r"got 3"),
    ([], 0, 1, -1, r"^lookahead: expected an int >= 0, got -1"),
])
def test_admit_refuses_a_prefix_that_is_not_the_lookups(hits, computed, num_new, lookahead,
                                                        match):
    """admit(req, [0], 5, 1) on a 2-token prompt counted 5 tokens as computed; a page that
    caches nothing was taken as a hit, its contents served as the prompt's."""
    kv, req = holding()
    kv.free(req)
    before = state(kv)
    new = Request(5, [5, 5], SamplingParams())
    with pytest.raises(ValueError, match=match):
        kv.admit(new, hits, computed, num_new, lookahead)
    assert state(kv) == before and new.pages == [] and new.num_computed_tokens == 0


def test_swap_out_refuses_a_request_already_swapped_out():
    """The second swap_out gave the request an empty host table: the first's host pages
    leaked."""
    kv, req = holding()
    kv.swap_out(req)
    before = state(kv)
    with pytest.raises(ValueError, match=r"^req: request 0 holds host pages \[0, 1\] already "
                                         r"\(it is swapped out\)"):
        kv.swap_out(req)
    assert state(kv) == before and req.host_pages == [0, 1]


def test_swap_out_without_host_pages_says_so():
    kv = KVCacheManager(8, PS, store=FakeStore(8, PS))
    req = served(kv, 0, [1, 2, 3])
    with pytest.raises(ValueError, match=r"^req: this manager has no host pages to swap "
                                         r"request 0 out to \(num_host_pages=0\)"):
        kv.swap_out(req)
    assert len(req.pages) == 2 and kv.pool.num_used == 2


def test_swap_in_refuses_a_request_that_holds_device_pages():
    """swap_in of a running request replaced its table by the (empty) swapped-in one: its
    device pages leaked."""
    kv, req = holding()
    before = state(kv)
    with pytest.raises(ValueError, match=r"^req: request 0 holds device pages \[0, 1\] "
                                         r"already; swap_in takes a swapped-out request"):
        kv.swap_in(req)
    assert state(kv) == before and req.pages == [0, 1]


@pytest.mark.parametrize("pages, match", [
    ([-1], r"^pages\[0\]: page id -1 is not in this pool"),
    ([0, 9], r"^pages\[1\]: page id 9 is not in this pool"),
    (["0"], r"^pages\[0\]: expected an integer page id"),
])
def test_forget_refuses_a_page_outside_the_pool_before_forgetting_any(pages, match):
    """forget([-1]) forgot the last page's prefix; forget([0, 9]) forgot page 0's, then
    raised IndexError naming nothing."""
    kv, req = holding()
    kv.free(req)
    rest = kv.pool.allocate(6)   # pages 2..7: the last page, held, can cache a block
    kv.pool.register(7, b"h" * 32, [4, 4])
    kv.pool.free(rest)
    before = state(kv)
    with pytest.raises((ValueError, TypeError), match=match):
        kv.pool.forget(pages)
    assert state(kv) == before


def test_pool_rollback_without_begin_says_so():
    with pytest.raises(RuntimeError, match=r"^rollback: nothing to roll back \(no begin\(\)"):
        KVCacheManager(4, PS).pool.rollback()


def test_scheduler_finish_refuses_a_request_not_running_before_marking_it():
    """finish() of a waiting request marked it FINISHED, then raised list.remove's
    ValueError: the request stayed in the waiting queue, finished."""
    sched = Scheduler(EngineConfig(num_pages=8, page_size=PS), KVCacheManager(8, PS))
    req = Request(0, [1], SamplingParams())
    sched.add(req)
    with pytest.raises(ValueError, match=r"^req: request 0 is waiting, not running; only a "
                                         r"running request finishes"):
        sched.finish(req, "stop")
    assert (req.status, req.finish_reason, list(sched.waiting)) == (Status.WAITING, None, [req])


def test_kv_manager_rollback_without_begin_says_so():
    """It raised TypeError: cannot unpack non-iterable NoneType object."""
    with pytest.raises(RuntimeError, match=r"^rollback: nothing to roll back \(no begin\(\)"):
        KVCacheManager(4, PS).rollback()


def test_add_request_that_fails_takes_no_request_id(monkeypatch):
    """The id was taken before the request was queued: a failure there (an interrupt)
    skipped it, and the next request got id 1."""
    config = tiny_config()
    engine = LLMEngine(LlamaModel(config, random_weights(config, seed=0), device="cpu"),
                       EngineConfig(num_pages=8, page_size=4))
    with monkeypatch.context() as patch:
        fail_at(patch, engine.scheduler, "add", 1, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            engine.add_request([1, 2, 3])
    assert not engine.has_unfinished() and engine.stats.prompt_tokens == 0
    assert engine.add_request([1, 2, 3]) == 0


# -- the same, as a state machine: random requests, random calls, random failures -----------------

FAULT = st.none() | st.tuples(st.sampled_from(FAULTS), st.integers(1, 3),
                              st.sampled_from([MemoryError, KeyboardInterrupt]))


class ManagerMachine(RuleBasedStateMachine):
    """Requests over a pool of 8 pages of 2 tokens from a 2-token alphabet (prefixes shared
    often); every call may fail at the k-th call of a collaborator, and must then change
    nothing but the prefixes of the pages it took."""

    def __init__(self):
        super().__init__()
        self.kv = KVCacheManager(8, PS, num_host_pages=6, store=FakeStore(8, PS, 6))
        self.reqs = {"waiting": [], "running": [], "swapped": []}
        self.next_rid = 0

    def attempt(self, fault, call) -> bool:
        """Run call() with the fault (if any) injected; True when it succeeded, else the
        state is checked against the one before."""
        kv = self.kv
        named = {f"{q}{i}": r for q, rs in self.reqs.items() for i, r in enumerate(rs)}
        before = snapshot(kv, named)
        with pytest.MonkeyPatch.context() as patch:
            taken = recording_allocations(patch, kv.pool)
            if fault is not None:
                (where, name), k, exc = fault
                target = {"pool": kv.pool, "store": kv.store, "host": kv.host}[where]
                fail_at(patch, target, name, k, exc)
            try:
                call()
                return True
            except (MemoryError, KeyboardInterrupt) as e:
                if fault is None or str(e) != "injected":
                    raise
        assert snapshot(kv, named) == forgetting(before, taken)
        return False

    def pick(self, queue, i):
        reqs = self.reqs[queue]
        return reqs[i % len(reqs)] if reqs else None

    def move(self, req, src, dst):
        self.reqs[src].remove(req)
        if dst:
            self.reqs[dst].append(req)

    @rule(prompt=st.lists(st.integers(1, 2), min_size=1, max_size=7))
    def add(self, prompt):
        self.reqs["waiting"].append(Request(self.next_rid, prompt, SamplingParams()))
        self.next_rid += 1

    @rule(i=st.integers(0, 9), fault=FAULT)
    def admit(self, i, fault):
        req = self.pick("waiting", i)
        if req is None:
            return
        hits, computed = self.kv.cached_prefix(req)
        n = req.num_tokens - computed
        if self.kv.admission_cost(hits, computed, n) > self.kv.pool.num_free:
            return
        if self.attempt(fault, lambda: self.kv.admit(req, hits, computed, n)):
            compute(self.kv, req, n, register=False)
            self.move(req, "waiting", "running")

    @rule(i=st.integers(0, 9), token=st.integers(1, 2), fault=FAULT)
    def decode(self, i, token, fault):
        req = self.pick("running", i)
        if req is None or req.num_tokens > 10:
            return
        req.output_ids.append(token)   # the token sampled; its K/V are written next step
        grown = []
        if self.attempt(fault, lambda: grown.append(self.kv.grow(req, 1))) and grown[0]:
            compute(self.kv, req, 1)   # (registered, as every step does: prefixes to hit)
        else:   # (no room: a scheduler would preempt someone)
            req.output_ids.pop()

    @rule(i=st.integers(0, 9), fault=FAULT)
    def register(self, i, fault):
        req = self.pick("running", i)
        if req is not None:
            self.attempt(fault, lambda: self.kv.register_computed(req))

    @rule(i=st.integers(0, 9), fault=FAULT)
    def swap_out(self, i, fault):
        req = self.pick("running", i)
        if req is not None and self.kv.can_swap_out(req):
            if self.attempt(fault, lambda: self.kv.swap_out(req)):
                self.move(req, "running", "swapped")

    @rule(i=st.integers(0, 9), fault=FAULT)
    def swap_in(self, i, fault):
        req = self.pick("swapped", i)
        if req is not None and self.kv.swap_in_cost(req) <= self.kv.pool.num_free:
            if self.attempt(fault, lambda: self.kv.swap_in(req)):
                self.move(req, "swapped", "running")

    @rule(i=st.integers(0, 9), fault=FAULT)
    def finish(self, i, fault):
        req = self.pick("running", i)
        if req is not None and self.attempt(fault, lambda: self.kv.free(req)):
            self.move(req, "running", None)

    @invariant()
    def consistent(self):
        kv = self.kv
        kv.pool.check_invariants()
        kv.host.check_invariants()
        owners = [0] * kv.pool.num_pages
        for req in self.reqs["running"]:
            for page in req.pages:
                owners[page] += 1
            assert kv.store.read(req) == req.tokens(0, req.num_computed_tokens)
        assert owners == kv.pool.ref_cnt
        assert kv.host.num_used == sum(len(r.host_pages) for r in self.reqs["swapped"])
        for page, tokens in enumerate(kv.pool.page_tokens):
            if tokens is not None:
                assert tuple(kv.store.slots[page]) == tokens, f"page {page} caches {tokens}"


TestManagerMachine = ManagerMachine.TestCase
