"""Hunt 37: the serving engine's scheduler and prefix cache, driven as vLLM / nano-vllm
engineers would test theirs.

`SchedulerMachine` runs the real `Scheduler` + `KVCacheManager` over a `FakeStore` (slots
hold token ids) through random arrivals, steps, finishes and failed steps, and checks after
each: ref counts = block tables, only full computed blocks cached (with the token ids they
hold), every running request reads back its own tokens, FCFS order of the waiting and
swapped queues, no admission while a request is swapped out, the step's prefill tokens are
those of requests not yet decoding, preempted requests hold no page and keep their output
tokens, and a failed step leaves everything as it was but its victims.
The engine tests below compare with the dense oracle: prefix-hit counts under preemption,
predictive reservations capped by the context, and a half-evicted cached prefix.
"""
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.dense import dense_generate
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, Status
from pagedattn_lab.engine.scheduler import Scheduler

from .engine_fakes import FakeStore, assert_private

BASES = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 0, 0], [3, 3, 3, 3, 3, 3]]
prompts = st.builds(lambda base, cut, tail: base[:cut] + tail, st.sampled_from(BASES),
                    st.integers(0, 9), st.lists(st.integers(0, 4), max_size=4)).filter(bool)


def _snapshot(sched):
    kv = sched.kv
    reqs = [*sched.waiting, *sched.running, *sched.swapped]
    return ([r.rid for r in sched.waiting], [r.rid for r in sched.running],
            [r.rid for r in sched.swapped],
            {r.rid: (r.status, r.num_computed_tokens, list(r.pages), list(r.output_ids),
                     list(r.host_pages)) for r in reqs},
            list(kv.pool.ref_cnt), dict(kv.pool.cached), list(kv.pool.free_queue))


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.config = None

    @precondition(lambda self: self.config is None)
    @rule(page_size=st.sampled_from([1, 2, 3, 4]), num_pages=st.integers(8, 16),
          budget=st.integers(1, 10), chunk=st.one_of(st.none(), st.integers(1, 5)),
          mode=st.sampled_from(["recompute", "swap"]), caching=st.booleans(),
          seqs=st.integers(1, 4), watermark=st.sampled_from([0.0, 0.1]))
    def build(self, page_size, num_pages, budget, chunk, mode, caching, seqs, watermark):
        self.config = EngineConfig(page_size=page_size, num_pages=num_pages,
                                   max_num_batched_tokens=budget, max_prefill_chunk=chunk,
                                   preemption_mode=mode, num_host_pages=6 if mode == "swap"
                                   else 0, enable_prefix_caching=caching, max_num_seqs=seqs,
                                   watermark=watermark)
        self.store = FakeStore(num_pages, page_size, 6)
        self.kv = KVCacheManager(num_pages, page_size, enable_caching=caching,
                                 num_host_pages=self.config.num_host_pages, store=self.store)
        self.sched = Scheduler(self.config, self.kv)
        self.next_rid = 0
        self.outputs = {}   # rid -> output ids seen so far (never lost by a preemption)
        self.decoding = set()   # rids that sampled since their latest admission

    @precondition(lambda self: self.config is not None)
    @rule(prompt=prompts, max_tokens=st.integers(1, 6))
    def add(self, prompt, max_tokens):
        longest = len(prompt) + max_tokens
        if -(-longest // self.config.page_size) + 1 > self.config.num_pages:
            return   # the engine refuses what could never fit
        req = Request(self.next_rid, list(prompt), SamplingParams(max_tokens=max_tokens))
        self.next_rid += 1
        self.sched.add(req)
        self.outputs[req.rid] = []

    @precondition(lambda self: self.config is not None and self.sched.has_unfinished())
    @rule(fail=st.booleans())
    def step(self, fail):
        sched, kv = self.sched, self.kv
        before, decoding = _snapshot(sched), set(self.decoding)
        waiting = set(sched.waiting)
        sched.begin()
        step = sched.schedule()
        assert step.requests, "no progress although requests wait"
        admitted = [r.rid for r in step.requests if r in waiting]
        assert not (admitted and sched.swapped), f"{admitted} admitted before swapped ones"
        self.decoding -= {r.rid for r in step.preempted}   # they prefill everything again
        decodes = [n for r, n in zip(step.requests, step.num_new) if r.rid in self.decoding]
        assert set(decodes) <= {1} and step.prefill_tokens == step.num_tokens - len(decodes)
        assert step.num_tokens <= self.config.max_num_batched_tokens
        assert len(sched.running) <= self.config.max_num_seqs
        for victim in step.preempted:
            assert victim.pages == [] and victim.num_computed_tokens == 0
            assert victim.status is Status.WAITING and victim in sched.waiting
        for victim in step.swapped_out:
            assert victim.pages == [] and victim in sched.swapped
        for req, n in zip(step.requests, step.num_new):
            assert 1 <= n <= self.config.chunk_limit
            start = req.num_computed_tokens
            assert start + n <= req.num_tokens
            assert len(req.pages) * self.config.page_size >= start + n
            assert_private(kv, req, start, start + n)
            self.store.write(req, start, start + n)
            req.num_computed_tokens += n
            kv.register_computed(req)
        for req in list(step.requests):
            if req.num_computed_tokens == req.num_tokens:
                self.decoding.add(req.rid)
                req.output_ids.append((req.rid * 7 + len(req.output_ids)) % 5)
                if len(req.output_ids) >= req.params.max_tokens:
                    sched.finish(req, "length")
        if not fail:
            sched.commit()
            for req in step.requests:
                self.outputs[req.rid] = list(req.output_ids)
            return
        victims = sched.rollback()
        self.decoding = decoding - {r.rid for r in victims if r.status is Status.WAITING}
        after = _snapshot(sched)
        if not victims:
            # the pages it handed out may forget their hash, nothing else changes
            assert after[:5] == before[:5]
            assert set(after[5].items()) <= set(before[5].items())
        for req in victims:
            assert req.pages == [] and req.output_ids == self.outputs[req.rid]

    @invariant()
    def pool_matches_block_tables(self):
        if self.config is None:
            return
        pool, ps = self.kv.pool, self.config.page_size
        pool.check_invariants()
        owners = {}
        for req in self.sched.running:
            assert len(req.pages) * ps >= req.num_computed_tokens
            for page in req.pages:
                owners[page] = owners.get(page, 0) + 1
            assert self.store.read(req) == req.tokens(0, req.num_computed_tokens)
        assert {p: c for p, c in enumerate(pool.ref_cnt) if c} == owners
        for req in [*self.sched.waiting, *self.sched.swapped]:
            assert req.pages == [], f"request {req.rid} waits holding pages"
        for page in pool.cached.values():   # only full blocks, holding their tokens
            assert (self.store.slots[page] >= 0).all(), "a partial block is cached"
            assert pool.page_tokens[page] == tuple(self.store.slots[page].tolist())

    @invariant()
    def waiting_is_first_come_first_served(self):
        if self.config is None:
            return
        for queue in ("waiting", "swapped"):
            rids = [r.rid for r in getattr(self.sched, queue)]
            assert rids == sorted(rids), f"{queue} order {rids} is not arrival order"
        for req in [*self.sched.waiting, *self.sched.running, *self.sched.swapped]:
            assert req.output_ids[:len(self.outputs[req.rid])] == self.outputs[req.rid]


SchedulerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30,
                                              deadline=None)
TestSchedulerMachine = SchedulerMachine.TestCase


# -- the engine against the dense oracle ----------------------------------------------------

CONFIG = tiny_config()
WEIGHTS = random_weights(CONFIG, seed=1)


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CONFIG, WEIGHTS, device="cpu")


def dense(prompt, n, config=CONFIG):
    return list(dense_generate(config, WEIGHTS, prompt, n)[0])


def test_a_request_preempted_mid_prompt_reports_no_prefix_hit_of_its_own(model):
    """Two prompts that share nothing, prefilled 2 tokens a step on a pool too small for
    both: the newer is preempted halfway through its prompt, and resumed it finds its own
    first chunks in the prefix cache. Those were computed, not served by the cache: its
    num_cached_tokens stays 0 and so does prompt_hit_rate (it read 6 and 0.1875)."""
    engine = LLMEngine(model, EngineConfig(page_size=2, num_pages=12, max_num_batched_tokens=4,
                                           max_prefill_chunk=2, watermark=0.0))
    prompts = [list(range(20, 36)), list(range(40, 56))]
    outs = engine.generate(prompts, SamplingParams(max_tokens=2, ignore_eos=True))
    assert [o.num_preemptions for o in outs] == [0, 1], "the scenario needs a preemption"
    assert [o.output_ids for o in outs] == [dense(p, 2) for p in prompts]
    assert [o.num_cached_tokens for o in outs] == [0, 0]
    assert engine.summary()["prompt_hit_rate"] == 0.0
    assert engine.kv.hit_rate > 0, "the resumed request did hit its own pages"


def test_a_shared_prefix_still_counts_as_served_by_the_cache(model):
    """(The fix above must not lose a real hit: 6 prompt tokens from another request.)"""
    prefix = list(range(60, 66))
    engine = LLMEngine(model, EngineConfig(page_size=2, num_pages=40))
    engine.generate([prefix + [1]], SamplingParams(max_tokens=1))
    (out,) = engine.generate([prefix + [2, 3]], SamplingParams(max_tokens=3, ignore_eos=True))
    assert out.num_cached_tokens == 6 and out.output_ids == dense(prefix + [2, 3], 3)


def test_a_predictive_reservation_stops_at_the_context_length():
    """Predictive allocation with max_tokens 100 past a 24-token context: each 8-token prompt
    can reach 24 tokens (12 pages), but 72 were reserved (36 pages), so the three requests
    of a 40-page pool ran one after another (32 steps) instead of together (16)."""
    config = tiny_config(max_position_embeddings=24)
    model = LlamaModel(config, WEIGHTS, device="cpu")
    engine = LLMEngine(model, EngineConfig(page_size=2, num_pages=40, allocation="predictive",
                                           initial_output_guess=64, watermark=0.0))
    prompts = [list(range(10 * i, 10 * i + 8)) for i in range(3)]
    outs = engine.generate(prompts, SamplingParams(max_tokens=100, ignore_eos=True))
    assert [o.output_ids for o in outs] == [dense(p, 16, config) for p in prompts]
    assert [o.finish_reason for o in outs] == ["length"] * 3
    summary = engine.summary()
    assert summary["max_running"] == 3 and summary["steps"] == 16


def test_a_half_evicted_prefix_serves_what_is_left_of_it(model):
    """A (12 + 2 tokens, 13 computed) leaves 6 cached blocks, freed tail first. B, with
    another prompt, takes the 5 never-used pages, A's uncached partial page, then the LRU
    free pages: A's blocks 5 and 4. C repeats A's prompt: it hits exactly blocks 0..3 (never
    a block whose parent is gone) and serves the dense tokens."""
    engine = LLMEngine(model, EngineConfig(page_size=2, num_pages=12))
    a = list(range(70, 82))
    engine.generate([a], SamplingParams(max_tokens=2, ignore_eos=True))
    pool = engine.kv.pool
    assert pool.num_cached_free == 6 and pool.num_used == 0 and pool.evictions == 0
    engine.generate([list(range(90, 98))], SamplingParams(max_tokens=8, ignore_eos=True))
    assert pool.evictions == 2
    (c,) = engine.generate([a], SamplingParams(max_tokens=3, ignore_eos=True))
    assert c.num_cached_tokens == 8 and c.output_ids == dense(a, 3)
    pool.check_invariants()
