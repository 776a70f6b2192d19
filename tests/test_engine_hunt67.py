"""Hunt 67: the serving engine's block managers against reference models, as a vLLM /
nano-vllm engineer would grid them.

- `PoolMachine` drives `BlockPool` (allocate, touch, free, register, lookup, forget, steps
  that commit or roll back, `atomic` calls that fail) beside a plain reference model of
  vLLM v1's pool: counts, the LRU free queue in order, the hash table, evictions. Every call
  that raises must leave a full snapshot as it was.
- `Scheduler.add` refuses a request id already queued, a finished request, and one holding
  pages, before changing anything (`DuplicateIdMachine`: ids reused at random, steps that
  fail); `Scheduler` refuses a config and a pool that disagree.
- `KVCacheManager` refuses its settings and a `num_new` the request has not, by name.
- The serving simulator's paged policy admits a preempted request longer than the
  watermark allows once nothing runs (it waited for ever: the run stalled to max_steps).
- `PagedAttentionManager.stats` counts a page shared by a fork once.
- End to end: greedy tokens with prefix caching, chunked prefill and preemption on equal
  those with all of them off, for awkward sizes.
"""
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import BlockPool, hash_block
from pagedattn_lab.engine.request import Request, Status
from pagedattn_lab.engine.scheduler import ScheduledStep, Scheduler
from pagedattn_lab.manager import PagedAttentionManager
from pagedattn_lab.paging import OutOfPagesError
from pagedattn_lab.sim import Workload, simulate

NUM_PAGES = 6


class Abort(Exception):
    pass


def pool_state(pool):
    return (list(pool.ref_cnt), list(pool.page_hash), list(pool.page_tokens),
            dict(pool.cached), list(pool.free_queue), pool.evictions)


class RefPool:
    """vLLM v1's BlockPool, as plainly as it can be written."""

    def __init__(self, n):
        self.ref = [0] * n
        self.hash = [None] * n
        self.tokens = [None] * n
        self.cached = {}
        self.queue = list(range(n))   # the free pages; front: evicted first
        self.evictions = 0

    def state(self):
        return (list(self.ref), list(self.hash), list(self.tokens), dict(self.cached),
                list(self.queue), self.evictions)

    def restore(self, state):
        ref, hashes, tokens, cached, queue, self.evictions = state
        self.ref, self.hash, self.tokens = list(ref), list(hashes), list(tokens)
        self.cached, self.queue = dict(cached), list(queue)

    def drop_hash(self, page):
        if self.hash[page] is not None:
            del self.cached[self.hash[page]]
            self.hash[page] = self.tokens[page] = None
            self.evictions += 1

    def allocate(self, n):
        pages, self.queue = self.queue[:n], self.queue[n:]
        for page in pages:
            self.drop_hash(page)
            self.ref[page] = 1
        return pages

    def takeable(self, page):
        """Held, or free with a cached block: what touch and register take (a free page
        caching nothing is refused)."""
        return self.ref[page] > 0 or self.hash[page] is not None

    def touch(self, pages):
        if not all(map(self.takeable, pages)):
            raise ValueError("a free page that caches no block")
        for page in pages:
            if self.ref[page] == 0:
                self.queue.remove(page)
            self.ref[page] += 1

    def release(self, pages):
        for page in pages:
            self.ref[page] -= 1
            if self.ref[page] == 0:
                self.queue.append(page)

    def register(self, page, block_hash, tokens):
        if not self.takeable(page):
            raise ValueError("a free page that caches no block")
        if block_hash in self.cached or self.hash[page] is not None:
            return False
        self.cached[block_hash] = page
        self.hash[page], self.tokens[page] = block_hash, tuple(tokens)
        return True

    def lookup(self, block_hash, tokens):
        page = self.cached.get(block_hash)
        return page if page is not None and self.tokens[page] == tuple(tokens) else None


BLOCKS = [(1, 1), (1, 2), (2, 1), (2, 2)]   # few blocks: hashes meet again and again
PAGE_LISTS = st.lists(st.integers(0, NUM_PAGES - 1), max_size=4)


def takeable_lists(ref):
    """Lists of pages that touch takes (held or cached), when there are any."""
    takeable = [p for p in range(NUM_PAGES) if ref.takeable(p)]
    return st.lists(st.sampled_from(takeable), max_size=4) if takeable else st.just([])


def mostly_takeable(ref):
    """A page that register takes (held or cached) when there is one, now and then any."""
    takeable = [p for p in range(NUM_PAGES) if ref.takeable(p)]
    anyone = st.integers(0, NUM_PAGES - 1)
    return st.one_of(st.sampled_from(takeable), anyone) if takeable else anyone


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pool, self.ref = BlockPool(NUM_PAGES), RefPool(NUM_PAGES)
        self.step = None   # (reference state at begin, pages allocated since) in a step

    def call(self, ref_call, pool_call):
        """Both calls, or (the pool raising) the check that it changed nothing."""
        before = pool_state(self.pool)
        try:
            got = pool_call()
        except (ValueError, OutOfPagesError):
            assert pool_state(self.pool) == before, "a call that raised changed the pool"
            return None
        want = ref_call()
        assert got == want
        return got

    @rule(n=st.integers(0, NUM_PAGES + 1))
    def allocate(self, n):
        if n > len(self.ref.queue):
            with pytest.raises(OutOfPagesError):
                self.pool.allocate(n)
            return   # (the invariant: nothing changed)
        pages = self.call(lambda: self.ref.allocate(n), lambda: self.pool.allocate(n))
        if self.step is not None:
            self.step[1].extend(pages)

    @rule(data=st.data())
    def touch(self, data):   # (mostly a legal hit; any pages now and then, to be refused)
        pages = data.draw(st.one_of(takeable_lists(self.ref), PAGE_LISTS))
        legal = all(map(self.ref.takeable, pages))
        got = self.call(lambda: self.ref.touch(pages) or True,
                        lambda: self.pool.touch(pages) or True)
        assert (got is True) == legal, f"touch({pages}) with counts {self.ref.ref}"

    @rule(pages=PAGE_LISTS)
    def free(self, pages):
        ok = all(pages.count(p) <= self.ref.ref[p] for p in pages)
        got = self.call(lambda: self.ref.release(pages) or True,
                        lambda: self.pool.free(pages) or True)
        assert (got is True) == ok, f"free({pages}) with counts {self.ref.ref}"

    @rule(data=st.data(), chain=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3))
    def register(self, data, chain):
        page = data.draw(mostly_takeable(self.ref))
        parent = None
        for block in chain:
            parent = hash_block(parent, block)
        legal = self.ref.takeable(page)
        got = self.call(lambda: self.ref.register(page, parent, chain[-1]),
                        lambda: self.pool.register(page, parent, chain[-1]))
        assert (got is not None) == legal, f"register({page}) with counts {self.ref.ref}"

    @rule(chain=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3),
          tokens=st.sampled_from(BLOCKS))
    def lookup(self, chain, tokens):
        parent = None
        for block in chain:
            parent = hash_block(parent, block)
        assert self.pool.lookup(parent, tokens) == self.ref.lookup(parent, tokens)

    @rule(pages=PAGE_LISTS)
    def forget(self, pages):
        def forget():
            for page in pages:
                self.ref.drop_hash(page)
        self.call(forget, lambda: self.pool.forget(pages))

    @precondition(lambda self: self.step is None)
    @rule()
    def begin(self):
        self.pool.begin()
        self.step = (self.ref.state(), [])

    @precondition(lambda self: self.step is not None)
    @rule(fail=st.booleans())
    def end(self, fail):
        state, taken = self.step
        self.step = None
        if not fail:
            self.pool.commit()
            return
        assert self.pool.rollback() == taken
        self.pool.forget(taken)
        self.ref.restore(state)
        for page in taken:
            self.ref.drop_hash(page)

    @rule(n=st.integers(0, 3), data=st.data())
    def failed_atomic_call(self, n, data):
        """A call that takes pages, touches others (held or cached: still so after the
        allocation), then fails: all undone, but the pages it took forget their prefix;
        inside a step, the step's rollback still sees them."""
        pages = data.draw(takeable_lists(self.ref))
        state = self.ref.state()
        taken = []
        with pytest.raises(Abort):
            with self.pool.atomic():
                if n <= self.pool.num_free:
                    taken = self.pool.allocate(n)
                self.pool.touch(pages)
                raise Abort
        self.ref.restore(state)
        for page in taken:
            self.ref.drop_hash(page)
        if self.step is not None:
            self.step[1].extend(taken)

    @invariant()
    def same_as_the_reference(self):
        self.pool.check_invariants()
        assert pool_state(self.pool) == self.ref.state()
        assert self.pool.num_free + self.pool.num_used == NUM_PAGES


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# -- Scheduler.add: one request per id ------------------------------------------------------

def _scheduler(mode="recompute"):
    config = EngineConfig(num_pages=8, page_size=2, preemption_mode=mode,
                          num_host_pages=8 if mode == "swap" else 0)
    kv = KVCacheManager(8, 2, num_host_pages=config.num_host_pages)
    return Scheduler(config, kv)


def _queues(sched):
    kv = sched.kv
    return ([(r.rid, r.status) for r in sched.waiting],
            [(r.rid, r.status) for r in sched.running],
            [(r.rid, r.status) for r in sched.swapped], list(kv.pool.ref_cnt),
            list(kv.pool.free_queue))


def _run_one_step(sched):
    step = sched.schedule()
    for req, n in zip(step.requests, step.num_new):
        req.num_computed_tokens += n
        sched.kv.register_computed(req)
        if req.num_computed_tokens == req.num_tokens:
            req.output_ids.append(0)
    return step


@pytest.mark.parametrize("where", ["waiting", "running", "swapped"])
@pytest.mark.parametrize("same_object", [True, False])
def test_scheduler_add_refuses_an_id_already_queued_before_changing_anything(where,
                                                                             same_object):
    """add() took a second request under an id already queued (or the same request twice):
    both were served, one twice over, and an engine keyed by id mixed their outputs up."""
    sched = _scheduler("swap")
    first = Request(7, [1, 2, 3], SamplingParams(max_tokens=4))
    sched.add(first)
    if where != "waiting":
        _run_one_step(sched)
        assert first.status is Status.RUNNING
    if where == "swapped":
        sched._preempt(first, ScheduledStep())
        assert first.status is Status.SWAPPED
    again = first if same_object else Request(7, [4, 5], SamplingParams())
    before, states = _queues(sched), (first.save(), again.save())
    what = "this request" if same_object else "another request"
    with pytest.raises(ValueError, match=rf"^req: request id 7 is already queued \({what}, "
                                         rf"{where}\); ids must be unique"):
        sched.add(again)
    assert _queues(sched) == before and (first.save(), again.save()) == states


def test_scheduler_add_refuses_a_finished_request_or_one_holding_pages():
    sched = _scheduler()
    req = Request(0, [1, 2], SamplingParams(max_tokens=1))
    sched.add(req)
    _run_one_step(sched)
    sched.finish(req, "length")
    before = _queues(sched)
    with pytest.raises(ValueError, match=r"^req: request 0 is finished; queue a new Request"):
        sched.add(req)
    holding = Request(1, [1, 2], SamplingParams(), pages=[3])
    with pytest.raises(ValueError, match=r"^req: request 1 holds device pages \[3\] already; "
                                         r"add takes a new request"):
        sched.add(holding)
    with pytest.raises(TypeError, match=r"^req: expected a Request, got list"):
        sched.add([1, 2])
    assert _queues(sched) == before and req.status is Status.FINISHED
    sched.add(Request(0, [1, 2], SamplingParams()))   # a finished id may be used again
    assert [r.rid for r in sched.waiting] == [0]


def test_scheduler_abort_takes_a_numpy_id_and_refuses_a_bool():
    """abort(np.int64(1)) was refused as no queued id 1, and abort(True) aborted request 1."""
    sched = _scheduler()
    for rid in (0, 1):
        sched.add(Request(rid, [1, 2], SamplingParams(max_tokens=2)))
    with pytest.raises(TypeError, match=r"^rid: expected an int, got True"):
        sched.abort(True)
    assert [r.rid for r in sched.waiting] == [0, 1]
    assert sched.abort(np.int64(1)).finish_reason == "abort"
    assert [r.rid for r in sched.waiting] == [0]


@pytest.mark.parametrize("rid", [True, 1.0, "1"])
def test_scheduler_add_refuses_an_id_that_is_no_int(rid):
    """Request(True, ...) was queued beside request 1 as the same key: two requests under one
    id, their outputs mixed up."""
    sched = _scheduler()
    sched.add(Request(1, [1, 2], SamplingParams(max_tokens=2)))
    before = _queues(sched)
    with pytest.raises(TypeError, match=r"^req\.rid: expected an int, got "):
        sched.add(Request(rid, [1, 2], SamplingParams(max_tokens=2)))
    assert _queues(sched) == before
    sched.add(Request(np.int64(2), [1, 2], SamplingParams(max_tokens=2)))   # kept as an int
    assert [type(r.rid) for r in sched.waiting] == [int, int]


class DuplicateIdMachine(RuleBasedStateMachine):
    """Requests under a handful of ids, often one already queued, through real steps (with
    preemption by swap or recompute) and aborts: a refused add or abort changes nothing, and
    no id is ever in two places."""

    def __init__(self):
        super().__init__()
        self.sched = _scheduler("swap")

    def unfinished(self):
        return {r.rid for q in (self.sched.waiting, self.sched.running, self.sched.swapped)
                for r in q}

    @rule(rid=st.integers(0, 4), prompt=st.lists(st.integers(1, 3), min_size=1, max_size=6),
          max_tokens=st.integers(1, 4))
    def add(self, rid, prompt, max_tokens):
        req = Request(rid, prompt, SamplingParams(max_tokens=max_tokens))
        if rid in self.unfinished():
            before = _queues(self.sched)
            with pytest.raises(ValueError, match=rf"^req: request id {rid} is already queued"):
                self.sched.add(req)
            assert _queues(self.sched) == before and req.status is Status.WAITING
        else:
            self.sched.add(req)

    @precondition(lambda self: self.sched.has_unfinished())
    @rule()
    def step(self):
        step = _run_one_step(self.sched)
        assert step.requests, "nothing ran although requests wait"
        for req in step.requests:   # (one that sampled is one token behind)
            if req.num_computed_tokens == req.num_tokens - 1 and \
                    len(req.output_ids) >= req.params.max_tokens:
                self.sched.finish(req, "length")

    @rule(rid=st.integers(0, 4))
    def abort(self, rid):
        """abort() between steps: the id is free at once; an id not queued changes nothing."""
        if rid in self.unfinished():
            req = self.sched.abort(rid)
            assert (req.status, req.finish_reason, req.pages, req.host_pages) == \
                (Status.FINISHED, "abort", [], [])
        else:
            before = _queues(self.sched)
            with pytest.raises(ValueError, match=rf"^rid: no queued request has id {rid}"):
                self.sched.abort(rid)
            assert _queues(self.sched) == before

    @precondition(lambda self: self.sched.has_unfinished())
    @rule()
    def failed_step(self):
        """A step whose requests finish, then fails: they are queued again, ids refused."""
        sched = self.sched
        sched.begin()
        self.step()
        sched.rollback()

    @invariant()
    def one_place_per_id(self):
        sched = self.sched
        rids = [r.rid for q in (sched.waiting, sched.running, sched.swapped) for r in q]
        assert len(rids) == len(set(rids)), f"an id queued twice: {rids}"
        for rid in rids:
            with pytest.raises(ValueError, match="already queued"):
                sched.add(Request(rid, [1], SamplingParams()))
        owners = {}
        for req in sched.running:
            for page in req.pages:
                owners[page] = owners.get(page, 0) + 1
        assert {p: c for p, c in enumerate(sched.kv.pool.ref_cnt) if c} == owners
        sched.kv.pool.check_invariants()
        host = sched.kv.host
        assert host.num_pages - host.num_free == sum(len(r.host_pages) for r in sched.swapped)


TestDuplicateIdMachine = DuplicateIdMachine.TestCase
TestDuplicateIdMachine.settings = settings(max_examples=30, stateful_step_count=30,
                                           deadline=None)

# -- the simulator ---------------------------------------------------------------------------

def test_sim_admits_a_preempted_request_longer_than_the_watermark_allows():
    """With watermark 0.5 of 8 pages, a request preempted at 5 pages (longer than any prompt)
    needed 5 + 4 reserved pages: never there, even with the pool empty. The run admitted
    nothing more and stalled to max_steps with 1 of 6 requests finished."""
    workload = Workload(num_requests=6, prompt_median=8, prompt_sigma=0.5, prompt_max=16,
                        output_median=10, output_sigma=0.5, min_len=4, max_len=32, seed=100)
    result = simulate("paged", workload, capacity_tokens=32, page_size=4, watermark=0.5,
                      max_steps=400)
    assert result.preemptions >= 1
    assert result.finished == 6 and result.steps < 400


# -- end to end: serving features never change greedy tokens ----------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_config(num_hidden_layers=1)
    return LlamaModel(config, random_weights(config, seed=67), device="cpu")


def _awkward_prompts(ps):
    """Lengths 1, ps - 1, ps, ps + 1, 2 ps; prompts sharing a partial page; one prompt that
    is entirely another's cached prefix (pages full), one that is a prefix ending mid-page."""
    base = [(7 * i + 3) % 128 for i in range(2 * ps + 1)]
    return [base[:1], base[:max(1, ps - 1)], base[:ps], base[:ps + 1], base[:2 * ps],
            base[:2 * ps], base[:ps + 1] + [5], [9] * (ps + 1), base[:ps]]


@pytest.mark.parametrize("ps", [1, 3, 4])
def test_awkward_sizes_give_the_same_greedy_tokens_with_every_feature(tiny_model, ps):
    prompts = _awkward_prompts(ps)
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (1, 3, 1, 4, 2, 5, 3, 1, 2)]
    plain = LLMEngine(tiny_model, EngineConfig(page_size=ps, num_pages=256,
                                               enable_prefix_caching=False))
    want = [o.output_ids for o in plain.generate(prompts, params)]
    need = -(-max(len(p) + sp.max_tokens for p, sp in zip(prompts, params)) // ps) + 1
    preempted = 0
    for chunk, mode, seqs in [(None, "recompute", 64), (1, "swap", 64), (3, "recompute", 2),
                              (2, "swap", 3)]:
        config = EngineConfig(page_size=ps, num_pages=need, max_num_batched_tokens=4,
                              max_prefill_chunk=chunk, preemption_mode=mode,
                              num_host_pages=need if mode == "swap" else 0, max_num_seqs=seqs,
                              watermark=0.0)
        engine = LLMEngine(tiny_model, config)
        outs = engine.generate(prompts, params)
        assert [o.output_ids for o in outs] == want, config
        pool = engine.kv.pool
        pool.check_invariants()
        assert pool.num_used == 0 and not engine.has_unfinished()
        for page in pool.cached.values():   # full pages only
            assert len(pool.page_tokens[page]) == ps
        s = engine.summary()
        preempted += s["preempted_recompute"] + s["preempted_swap"]
        assert [o.num_cached_tokens for o in outs][5] > 0, "the duplicate hits the cache"
    assert preempted > 0, "the small pools preempt"


# -- bad input naming the argument --------------------------------------------------------------

@pytest.mark.parametrize("call", ["grow", "growth_cost", "swap_in_cost"])
@pytest.mark.parametrize("num_new, exc, match", [
    (3, ValueError, r"^num_new: expected 0\.\.2 \(the request's 3 tokens less 1 computed\), "
                    r"got 3$"),
    (-1, ValueError, r"^num_new: expected 0\.\.2 .*got -1$"),
    (1.5, TypeError, r"^num_new: expected an int, got 1\.5 \(float\)"),
    (True, TypeError, r"^num_new: expected an int, got True \(bool\)"),
    ("1", TypeError, r"^num_new: expected an int, got '1' \(str\)"),
])
def test_growing_by_tokens_the_request_has_not_is_refused_by_name(call, num_new, exc, match):
    """grow(req, 3) of a request with 2 tokens left took pages for a token it does not have
    (never written, held until it finished); 1.5 raised naming `n`, "1" naming nothing."""
    kv = KVCacheManager(8, 2)
    req = Request(0, [1, 2, 3], SamplingParams())
    kv.admit(req, [], 0, 1)
    req.num_computed_tokens = 1
    before, saved = pool_state(kv.pool), req.save()
    with pytest.raises(exc, match=match):
        getattr(kv, call)(req, num_new)
    assert pool_state(kv.pool) == before and req.save() == saved
    assert kv.grow(req, 2) and len(req.pages) == 2


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(page_size=0), ValueError, r"^page_size: expected an int >= 1, got 0"),
    (dict(page_size=2.5), TypeError, r"^page_size: expected an int, got 2\.5"),
    (dict(enable_caching="no"), TypeError, r"^enable_caching: expected True or False, got 'no'"),
    (dict(num_host_pages=-1), ValueError, r"^num_host_pages: expected an int >= 0, got -1"),
    (dict(num_host_pages=True), TypeError, r"^num_host_pages: expected an int, got True"),
])
def test_kv_manager_refuses_its_settings_by_name(kwargs, exc, match):
    """page_size 0 or 2.5 was taken (a division by zero, or fractional pages, at the first
    request); "no" turned caching on; num_host_pages -1 was refused naming num_pages."""
    with pytest.raises(exc, match=match):
        KVCacheManager(**{"num_pages": 8, "page_size": 2, **kwargs})


@pytest.mark.parametrize("config, kv, extra, exc, match", [
    (None, KVCacheManager(8, 2), {}, TypeError, r"^config: expected an EngineConfig, got "
                                                r"NoneType"),
    (EngineConfig(num_pages=8, page_size=2), "kv", {}, TypeError,
     r"^kv: expected a KVCacheManager, got str"),
    (EngineConfig(num_pages=16, page_size=2), KVCacheManager(8, 2), {}, ValueError,
     r"^kv: its num_pages is 8, config\.num_pages is 16; build both from one EngineConfig"),
    (EngineConfig(num_pages=8, page_size=4), KVCacheManager(8, 2), {}, ValueError,
     r"^kv: its page_size is 2, config\.page_size is 4"),
    (EngineConfig(num_pages=8, page_size=2, preemption_mode="swap", num_host_pages=4),
     KVCacheManager(8, 2), {}, ValueError, r"^kv: its num_host_pages is 0, config\."
                                           r"num_host_pages is 4"),
    (EngineConfig(num_pages=8, page_size=2, enable_prefix_caching=False),
     KVCacheManager(8, 2), {}, ValueError, r"^kv: its enable_prefix_caching is True"),
    (EngineConfig(num_pages=8, page_size=2), KVCacheManager(8, 2), {"max_model_len": 0},
     ValueError, r"^max_model_len: expected an int >= 1, got 0"),
])
def test_scheduler_refuses_a_config_and_pool_that_disagree(config, kv, extra, exc, match):
    """Scheduler(config, None) failed at the first step naming nothing; a pool of another
    size than config.num_pages kept a watermark computed for the wrong pool; preemption by
    swap without host pages silently recomputed."""
    with pytest.raises(exc, match=match):
        Scheduler(config, kv, **extra)


# -- PagedAttentionManager.stats with forks -------------------------------------------------------

def test_manager_stats_count_a_page_shared_by_a_fork_once():
    """A 6-token sequence in pages of 4 and its fork hold 2 pages (8 slots, 6 tokens): the
    waste was counted per sequence (4 empty slots of 8: 50%) and utilization came out 1.5,
    a share of the pool above 1."""
    mgr = PagedAttentionManager(num_pages=3, page_size=4, num_heads=2, num_kv_heads=1,
                                head_dim=8, device="cpu")
    k = np.ones((6, 1, 8), np.float32)
    parent = mgr.add_sequence(k, k).seq_id
    mgr.cache.fork_sequence(parent)
    s = mgr.stats()
    assert (s.pages_used, s.slots_allocated, s.tokens_stored, s.internal_waste) == (2, 8, 12, 2)
    assert s.waste_fraction == pytest.approx(2 / 8)
    assert s.utilization == pytest.approx(6 / 12)
    mgr.add_sequence(k[:1], k[:1])   # its own page: 3 more empty slots
    s = mgr.stats()
    assert (s.internal_waste, s.utilization) == (5, pytest.approx(7 / 12))


def test_scheduler_finish_refuses_an_unknown_reason_before_changing_anything():
    sched = _scheduler()
    req = Request(0, [1, 2], SamplingParams(max_tokens=1))
    sched.add(req)
    _run_one_step(sched)
    before, state = _queues(sched), req.save()
    with pytest.raises(ValueError, match=r"^reason: expected one of \('stop', 'length'\), "
                                         r"got 'done'"):
        sched.finish(req, "done")
    assert _queues(sched) == before and req.save() == state
    sched.finish(req, "stop")
    assert req.status is Status.FINISHED and req.finish_reason == "stop"
