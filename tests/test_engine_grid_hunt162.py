"""Hunt 162: an outsider's grid on the serving engine, against each request served alone.

The reference for every request is the same model in a roomy engine that serves it alone
(no batching, no chunking, no prefix cache, no preemption). Greedy tokens, and seeded
sampled tokens (their stream is the request's own), must equal it whatever the batching,
the chunking, the preemptions or the prefix hits; the finish reason too.

- A grid of named workloads (prompts of 1 token, of a block, a block +- 1, identical prompts
  at once, a prompt that is the prefix of another, a long prompt arriving while others
  decode, a pool so small that requests preempt, stop ids, end tokens) under several
  configs, the books checked after every step.
- A state machine over add_request / step / abort_request, with refused calls, on random
  pools: after every rule the ref counts equal the holders, held + free = total, nothing
  held by a waiting or finished request; a refused call changes nothing; at the end every
  page, device and host, is free again.
- add_request refused a request that fits (prefix caching off): it kept a page for a copy
  on write that only the prefix cache can cause.
"""
import dataclasses
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.request import Status

CONFIG = tiny_config(num_hidden_layers=1, max_position_embeddings=40)   # (fast)
WEIGHTS = random_weights(CONFIG, seed=162)
BASE = [int(t) for t in np.random.default_rng(162).integers(0, 128, 24)]
EOS = (0, 87)             # tokens the greedy decodes of BASE's prefixes meet often
STOPS = [(), (122,), (26, 9)]
ROOMY = dict(page_size=16, num_pages=64, max_num_batched_tokens=4096,
             enable_prefix_caching=False)
_MODELS, _ALONE = {}, {}


def model(eos: bool) -> LlamaModel:
    if eos not in _MODELS:
        config = dataclasses.replace(CONFIG, eos_token_id=EOS if eos else None)
        _MODELS[eos] = LlamaModel(config, WEIGHTS, device="cpu")
    return _MODELS[eos]


def alone(prompt, params: SamplingParams, eos: bool) -> tuple[list[int], str]:
    """(output, finish reason) of the request served alone in a roomy engine."""
    key = (tuple(prompt), params, eos)
    if key not in _ALONE:
        out = LLMEngine(model(eos), EngineConfig(**ROOMY)).generate([prompt], params)[0]
        _ALONE[key] = out.output_ids, out.finish_reason
    return _ALONE[key]


def check_books(engine: LLMEngine) -> None:
    """Ref counts = holders, held + free = total, pages only where they belong."""
    pool, sched, ps = engine.kv.pool, engine.scheduler, engine.config.page_size
    pool.check_invariants()
    holders = Counter(p for req in sched.running for p in req.pages)
    assert {p: c for p, c in enumerate(pool.ref_cnt) if c} == dict(holders), \
        "ref counts != holders"
    assert len(holders) + pool.num_free == pool.num_pages, "held + free != total"
    for req in sched.running:
        assert len(set(req.pages)) == len(req.pages), f"request {req.rid}: a page twice"
        assert not req.host_pages
    for req in sched.waiting:
        assert not req.pages and not req.host_pages, f"waiting request {req.rid} holds pages"
    for req in sched.swapped:
        assert not req.pages and len(req.host_pages) == -(-req.num_computed_tokens // ps)
    for page in pool.cached.values():   # only full, computed blocks are offered
        assert len(pool.page_tokens[page]) == ps
    if engine.kv.host is not None:
        held = [p for req in sched.swapped for p in req.host_pages]
        assert len(set(held)) == len(held), "a host page held twice"
        assert len(held) + engine.kv.host.num_free == engine.kv.host.num_pages


def check_drained(engine: LLMEngine) -> None:
    """Everything finished: no page leaked, device or host."""
    assert not engine.has_unfinished()
    check_books(engine)
    assert engine.kv.pool.num_free == engine.config.num_pages
    assert not any(engine.kv.pool.ref_cnt)
    if engine.kv.host is not None:
        assert engine.kv.host.num_free == engine.kv.host.num_pages


# -- the grid ---------------------------------------------------------------------------------

def greedy(n, **kw):
    return SamplingParams(max_tokens=n, **kw)


def sampled(n, seed, **kw):
    return SamplingParams(max_tokens=n, temperature=0.8, top_k=20, top_p=0.9, seed=seed, **kw)


# name: ([(step it arrives at, prompt, params)], with end tokens or not, the CONFIGS it runs in)
WORKLOADS = {
    "one-token prompts": ([(0, [5], greedy(4)), (0, [77], greedy(3)), (1, [5], greedy(4))],
                          False, ["roomy", "pages of 1, budget 1"]),
    "a block, twice (then wholly cached)": ([(0, BASE[:4], greedy(3)), (6, BASE[:4], greedy(3)),
                                             (6, BASE[:8], greedy(2))], False,
                                            ["roomy", "tight, recompute", "one seq, no cache"]),
    "a block +- 1": ([(0, BASE[:3], greedy(3)), (0, BASE[:5], greedy(3)),
                      (5, BASE[:5], greedy(3)), (5, BASE[:3], greedy(2))], False,
                     ["roomy", "tight, swap", "predictive"]),
    "identical prompts at once": ([(0, BASE[:9], greedy(4))] * 3, False,
                                  ["tight, recompute", "tight, swap", "pages of 1, budget 1"]),
    "prefix of another": ([(0, BASE[:6], greedy(3)), (4, BASE[:14], greedy(3)),
                           (9, BASE[:6], greedy(3)), (9, BASE[:14] + [1], greedy(2))], False,
                          ["roomy", "tight, recompute", "predictive"]),
    "long prompt while others decode": ([(0, [5, 77], greedy(12)), (0, [77], greedy(12)),
                                         (2, BASE, greedy(3))], False,
                                        ["tight, recompute", "tight, swap", "one seq, no cache"]),
    "stop ids and end tokens": ([(0, BASE[:n], greedy(6, stop_token_ids=STOPS[n % 3]))
                                 for n in (1, 5, 9, 14, 16, 19)]
                                + [(1, BASE[:16], greedy(6, ignore_eos=True))], True,
                                ["roomy", "tight, swap"]),
    "sampled, seeded": ([(0, BASE[:n], sampled(5, seed=n)) for n in (1, 4, 9)]
                        + [(2, BASE[:9], sampled(5, seed=9)), (2, [5], greedy(5))], False,
                        ["tight, recompute", "one seq, no cache"]),
    "the context limit": ([(0, BASE + BASE[:14], greedy(5)), (0, BASE[:7], greedy(5))], False,
                          ["tight, recompute", "predictive"]),
}
# Each pool holds the longest request (38 prompt tokens + 1, or 16 + 6) and little more.
CONFIGS = {
    "roomy": dict(page_size=4, num_pages=40),
    "pages of 1, budget 1": dict(page_size=1, num_pages=40, max_num_batched_tokens=1),
    "tight, recompute": dict(page_size=4, num_pages=10, max_num_batched_tokens=6,
                             max_prefill_chunk=3, watermark=0.0),
    "tight, swap": dict(page_size=3, num_pages=14, max_num_batched_tokens=5,
                        preemption_mode="swap", num_host_pages=12, watermark=0.0),
    "one seq, no cache": dict(page_size=5, num_pages=8, max_num_seqs=1,
                              enable_prefix_caching=False),
    "predictive": dict(page_size=2, num_pages=20, allocation="predictive",
                       initial_output_guess=4, max_prefill_chunk=4),
}


def serve(engine: LLMEngine, workload) -> dict:
    """Adds each request at its step, runs to the end checking the books after every step;
    returns rid -> (prompt, params, output)."""
    arrivals, outputs, at, steps = sorted(workload, key=lambda a: a[0]), {}, {}, 0
    while arrivals or engine.has_unfinished():
        while arrivals and arrivals[0][0] <= steps:
            _, prompt, params = arrivals.pop(0)
            at[engine.add_request(prompt, params)] = (prompt, params)
        for out in engine.step():
            assert out.rid not in outputs, f"request {out.rid} finished twice"
            outputs[out.rid] = out
        check_books(engine)
        steps += 1
    check_drained(engine)
    assert sorted(outputs) == sorted(at)
    return {rid: (*at[rid], outputs[rid]) for rid in at}


@pytest.mark.parametrize("name, config", [(name, config) for name, (*_, configs)
                                          in WORKLOADS.items() for config in configs])
def test_every_request_gets_what_it_gets_alone(name, config):
    workload, eos, _ = WORKLOADS[name]
    engine = LLMEngine(model(eos), EngineConfig(**CONFIGS[config]))
    for rid, (prompt, params, out) in serve(engine, workload).items():
        assert (out.output_ids, out.finish_reason) == alone(prompt, params, eos), \
            f"request {rid} ({len(prompt)} prompt tokens)"
        if out.finish_reason == "length":
            assert len(out.output_ids) == min(params.max_tokens, 40 - len(prompt))


def test_the_grid_really_preempts_hits_and_stops():
    """The grid's cases reach what they are named for (else it tests nothing)."""
    def run(name, config):
        workload, eos, _ = WORKLOADS[name]
        engine = LLMEngine(model(eos), EngineConfig(**CONFIGS[config]))
        return engine, serve(engine, workload)

    engine, _ = run("long prompt while others decode", "tight, recompute")
    assert engine.summary()["preempted_recompute"] > 0
    engine, _ = run("long prompt while others decode", "tight, swap")
    assert engine.summary()["preempted_swap"] > 0
    engine, _ = run("a block, twice (then wholly cached)", "roomy")
    assert engine.summary()["cow_copies"] > 0   # the whole prompt cached: its last token copies
    _, outs = run("prefix of another", "roomy")
    assert max(out.num_cached_tokens for *_, out in outs.values()) >= 12
    _, outs = run("stop ids and end tokens", "roomy")
    reasons = Counter(out.finish_reason for *_, out in outs.values())
    assert reasons["stop"] >= 2 and reasons["length"] >= 1
    _, outs = run("the context limit", "roomy")
    assert [len(out.output_ids) for *_, out in outs.values()] == [2, 5]


def test_a_long_prompt_is_chunked_while_the_others_keep_decoding():
    """Chunked prefill: while the long prompt fills, every running decode gets its token in
    each step (they were admitted first, so the budget goes to them first)."""
    engine = LLMEngine(model(False), EngineConfig(page_size=4, num_pages=40,
                                                  max_num_batched_tokens=5))
    short = [engine.add_request(p, greedy(12)) for p in ([5, 77], [77])]
    for _ in range(2):
        engine.step()
    engine.add_request(BASE, greedy(3))
    chunks = 0
    while engine.scheduler.running[-1].num_computed_tokens < len(BASE):
        before = [len(r.output_ids) for r in engine.scheduler.running[:2]]
        engine.step()
        assert [len(r.output_ids) for r in engine.scheduler.running[:2]] == \
            [n + 1 for n in before]
        chunks += 1
    assert chunks == -(-len(BASE) // 3) and [r.rid for r in engine.scheduler.running[:2]] == short


# -- requests that cannot fit -----------------------------------------------------------------

@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("page_size, prompt, max_tokens", [
    (4, 3, 2), (4, 4, 1), (4, 7, 2), (1, 5, 3), (3, 2, 5), (4, 35, 9)])
def test_the_smallest_pool_that_add_request_accepts_serves_the_request(caching, page_size,
                                                                       prompt, max_tokens):
    """A request is refused exactly when it could not be served alone: its written tokens
    (all but the last: its K/V are never written) need more pages than the pool has, with
    one more with prefix caching (a wholly cached prompt copies its last page on write).
    Caching off, a prompt of 3 + 2 tokens in one page of 4 was refused ("may need 2
    pages"); it runs."""
    tokens = BASE[:prompt] if prompt <= len(BASE) else (BASE * 2)[:prompt]
    written = min(prompt + max_tokens, 40) - (0 if caching else 1)
    need = -(-written // page_size)
    params = greedy(max_tokens, ignore_eos=True)
    if need > 1:   # (a pool of no page is refused by EngineConfig)
        small = LLMEngine(model(False), EngineConfig(page_size=page_size, num_pages=need - 1,
                                                     enable_prefix_caching=caching))
        with pytest.raises(ValueError, match=rf"^prompt_ids: {prompt} prompt tokens \+ "
                                             rf"max_tokens {max_tokens} may need {need} pages, "
                                             rf"more than the whole pool of {need - 1}:"):
            small.add_request(tokens, params)
        assert not small.has_unfinished()
    engine = LLMEngine(model(False), EngineConfig(page_size=page_size, num_pages=need,
                                                  enable_prefix_caching=caching,
                                                  max_num_batched_tokens=3))
    # twice: the second finds the first's blocks cached (the copy on write's extra page)
    outs = engine.generate([tokens, tokens], params)
    assert [(o.output_ids, o.finish_reason) for o in outs] == [alone(tokens, params, False)] * 2
    check_drained(engine)


# -- the state machine ------------------------------------------------------------------------

def snapshot(engine: LLMEngine):
    """Everything a refused call must leave as it was."""
    sched, pool = engine.scheduler, engine.kv.pool
    queues = [[r.rid for r in q] for q in (sched.waiting, sched.running, sched.swapped)]
    reqs = {r.rid: r.save() for q in (sched.waiting, sched.running, sched.swapped) for r in q}
    host = engine.kv.host.state() if engine.kv.host is not None else None
    return (queues, reqs, list(pool.ref_cnt), list(pool.free_queue.items()), dict(pool.cached),
            host, engine.summary(), engine._next_rid)


prompts = st.builds(lambda cut, tail: (BASE[:cut] + tail) or [5],
                    st.sampled_from([0, 1, 3, 4, 5, 8, 9, 16]),
                    st.lists(st.sampled_from([5, 77]), max_size=2))
params = st.builds(lambda n, temp, seed, stop, ignore: SamplingParams(
    max_tokens=n, temperature=temp, seed=seed, top_k=5 if temp else 0,
    stop_token_ids=stop, ignore_eos=ignore),
    st.integers(1, 5), st.sampled_from([0.0, 0.0, 1.0]), st.integers(0, 3),
    st.sampled_from(STOPS), st.booleans())
BAD = {   # (prompt, params, the error's start)
    "empty": ([], None, r"prompt_ids: expected at least one token"),
    "past the vocabulary": ([1, 128], None, r"prompt_ids\[1\]: token id 128"),
    "negative id": ([3, -1], None, r"prompt_ids\[1\]: token id -1"),
    "float id": ([1, 2.0], None, r"prompt_ids\[1\]: expected an integer"),
    "bool id": ([True], None, r"prompt_ids\[0\]: expected an integer"),
    "a string": ("12", None, r"prompt_ids: expected a list"),
    "no room to generate": (BASE + BASE[:16], None, r"prompt_ids: 40 tokens leave no room"),
    "params not SamplingParams": ([1], {"max_tokens": 2}, r"params: expected a SamplingParams"),
    "stop id past the vocabulary": ([1], SamplingParams(stop_token_ids=[3, 300]),
                                    r"params.stop_token_ids\[1\]: token id 300"),
    "larger than the pool": (BASE, SamplingParams(max_tokens=16),
                             r"prompt_ids: 24 prompt tokens \+ max_tokens 16 may need"),
}
BAD_RIDS = {"ended": None, "unknown": 10**6, "negative": -1, "bool": True, "float": 0.0}


class ServingMachine(RuleBasedStateMachine):
    """add_request / step / abort_request on a small random pool; outputs against alone()."""

    @initialize(page_size=st.integers(1, 6), spare=st.integers(0, 2),
                budget=st.integers(1, 8), chunk=st.one_of(st.none(), st.integers(1, 3)),
                caching=st.booleans(), mode=st.sampled_from(["recompute", "swap"]),
                seqs=st.integers(1, 3), eos=st.booleans(), predictive=st.booleans())
    def build(self, page_size, spare, budget, chunk, caching, mode, seqs, eos, predictive):
        longest = 16 + 2 + 5   # the prompts' and max_tokens' most (within the context)
        num_pages = -(-longest // page_size) + spare
        self.eos = eos
        self.engine = LLMEngine(model(eos), EngineConfig(
            page_size=page_size, num_pages=num_pages, max_num_batched_tokens=budget,
            max_prefill_chunk=chunk, enable_prefix_caching=caching, preemption_mode=mode,
            num_host_pages=3 if mode == "swap" else 0, max_num_seqs=seqs, watermark=0.0,
            allocation="predictive" if predictive else "on_demand", initial_output_guess=2))
        self.added = {}      # rid -> (prompt, params)
        self.ended = {}      # rid -> RequestOutput (finished or aborted)

    @rule(batch=st.lists(st.tuples(prompts, params), min_size=1, max_size=3))
    def add(self, batch):
        for prompt, params in batch:
            rid = self.engine.add_request(prompt, params)
            assert rid not in self.added
            self.added[rid] = (prompt, params)

    @rule(bad=st.sampled_from(sorted(BAD) + ["abort " + k for k in BAD_RIDS]))
    def refused(self, bad):
        """A bad add_request or abort_request: refused by name, changing nothing."""
        before = snapshot(self.engine)
        if bad.startswith("abort "):
            ended = sorted(self.ended)
            rid = BAD_RIDS[bad[6:]] if bad != "abort ended" else (ended or [10**6])[0]
            with pytest.raises((ValueError, TypeError), match="^rid: "):
                self.engine.abort_request(rid)
        else:
            prompt, params, match = BAD[bad]
            with pytest.raises((ValueError, TypeError), match="^" + match):
                self.engine.add_request(prompt, params)
        assert snapshot(self.engine) == before, f"refusing {bad!r} changed the engine"

    @precondition(lambda self: self.engine.has_unfinished())
    @rule(steps=st.integers(1, 3))
    def step(self, steps):
        for _ in range(steps):
            for out in self.engine.step():
                assert out.rid not in self.ended, f"request {out.rid} ended twice"
                assert out.finish_reason in ("stop", "length")
                self.ended[out.rid] = out
            check_books(self.engine)

    @precondition(lambda self: self.engine.has_unfinished())
    @rule(data=st.data())
    def abort(self, data):
        sched = self.engine.scheduler   # running requests first: they hold the most
        live = [r.rid for queue in (sched.running, sched.swapped, sched.waiting) for r in queue]
        rid = data.draw(st.sampled_from(live))
        out = self.engine.abort_request(rid)
        assert out.finish_reason == "abort" and out.rid == rid
        prompt, params = self.added[rid]
        want, _ = alone(prompt, params, self.eos)
        assert out.output_ids == want[:len(out.output_ids)], "the output so far differs"
        self.ended[rid] = out

    @invariant()
    def books(self):
        check_books(self.engine)

    @invariant()
    def outputs(self):
        for rid, out in self.ended.items():
            if out.finish_reason != "abort":
                prompt, params = self.added[rid]
                assert (out.output_ids, out.finish_reason) == alone(prompt, params, self.eos)
        for req in self.engine.scheduler.running:   # so far, a prefix of its tokens alone
            want, _ = alone(*self.added[req.rid], self.eos)
            assert req.output_ids == want[:len(req.output_ids)], f"request {req.rid}"
            assert req.status is Status.RUNNING

    def teardown(self):
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        while engine.has_unfinished():
            for out in engine.step():
                self.ended[out.rid] = out
        self.outputs()
        check_drained(engine)
        assert sorted(self.ended) == sorted(self.added)


ServingMachine.TestCase.settings = settings(
    max_examples=12, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestServingMachine = ServingMachine.TestCase
