"""Hunt 127: the serving side as a whole.

* `sim.simulate` and the engine's `Scheduler` preempt the most recently admitted sequence
  (their docstrings, and lesson 00: "the newest sequence is preempted ... as vLLM does"): no
  test looked at WHICH one.
* An empty request is refused with one sentence by the scheduler and the KV manager alike.
* The whole `LLMEngine` stepped with random arrivals, chunked prefill budgets, prompts that
  share prefixes (one a prefix of another, identical ones arriving together), both
  preemption modes, aborts in every state, max_tokens 1, end tokens and sampling (greedy,
  temperatures, seeds): after every step no page is leaked or held twice, ref counts equal
  the block tables, the hash table names only pages holding exactly its tokens, and every
  finished request's tokens equal the same request served alone: the output does not
  depend on what else is in the batch.
* Sampling streams: no two (request, output position) draw the same numbers.
"""
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedattn_lab.engine import EngineConfig, LLMEngine, SamplingParams
from pagedattn_lab.engine.dense import dense_generate
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import block_hashes
from pagedattn_lab.engine.request import Request, Status
from pagedattn_lab.engine.sampling import request_rng
from pagedattn_lab.engine.scheduler import Scheduler
from pagedattn_lab.sim import Workload, simulate

from .test_engine_machine_hunt86 import EOS, model
from .test_engine_step_rollback_hunt22 import BASE, CONFIG, WEIGHTS, check_engine


# -- sim: which sequence is preempted ------------------------------------------------------

def fixed(prompts, outputs, **fields):
    """A workload of these prompt and output lengths, every request waiting at step 0."""
    class Fixed(Workload):
        def sample(self):
            return np.array(prompts), np.array(outputs)
    return Fixed(num_requests=len(prompts), min_len=1, **fields)


def test_sim_preempts_the_most_recently_admitted_sequence():
    # mutant: `victim = running.pop()` -> `running.pop(0)`: the OLDEST sequence was
    # preempted, and every earlier test still passed.
    # 10 pages of 1 token. Step 1 admits A (4 pages) and B (2); steps 2-3 grow both to 10
    # pages. Step 4: A needs a page, none is free: B, the newest, is preempted (its 4 tokens
    # requeued) and A grows to 7 tokens (preempting A would leave B's 5). A finishes at step
    # 6, which admits B again (4 tokens), and B runs to its 7.
    res = simulate("paged", fixed([4, 2], [5, 5], prompt_max=4, max_len=10),
                   capacity_tokens=10, page_size=1, watermark=0.0)
    assert res.series["tokens"].tolist() == [6, 8, 10, 7, 8, 4, 5, 6, 0]
    assert res.series["running"].tolist() == [2, 2, 2, 1, 1, 1, 1, 1, 0]
    assert res.series["waiting"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert (res.preemptions, res.finished) == (1, 2)


def test_sim_watermark_zero_keeps_no_page_free():
    # `max(1, int(watermark * pages))` kept a page free whatever the watermark (the engine
    # and vLLM round down): with watermark 0, B (6 pages) waited beside A (4 of 10 pages),
    # and one page of 8 tokens was refused for prompts of 7 ("0.0 of 1 pages kept free
    # leaves too few"), though with nothing running a request is admitted whole.
    res = simulate("paged", fixed([4, 6], [1, 1], prompt_max=6, max_len=10),
                   capacity_tokens=10, page_size=1, watermark=0.0)
    assert res.series["running"].tolist()[0] == 2
    res = simulate("paged", fixed([7, 7], [1, 1], prompt_max=7, max_len=8),
                   capacity_tokens=8, page_size=8, watermark=0.0)
    assert res.finished == 2 and res.series["running"].max() == 1


# -- an empty request: one error, whoever meets it --------------------------------------------

EMPTY = r"^req\.prompt_ids: request 7 has no token; expected a prompt of at least one token$"


def test_an_empty_request_is_refused_in_one_sentence_by_scheduler_and_kv_manager():
    config = EngineConfig(num_pages=4, page_size=2)
    kv = KVCacheManager(4, 2)
    with pytest.raises(ValueError, match=EMPTY):
        Scheduler(config, kv).add(Request(7, [], SamplingParams()))
    with pytest.raises(ValueError, match=EMPTY):
        kv.cached_prefix(Request(7, [], SamplingParams()))


# -- the whole engine, stepped -----------------------------------------------------------------

MAX_TOKENS = 6
_ALONE: dict = {}
_DENSE: dict = {}

# prompts sharing prefixes: BASE[:4] is a prefix of BASE[:8] and of BASE[:9] + [5]
PROMPTS = [BASE[:4], BASE[:8], BASE[:8], BASE[:9] + [5], BASE[:3] + [77, 5], [5], BASE[:1]]
SAMPLING = [dict(temperature=0.0), dict(temperature=0.0), dict(temperature=0.8, seed=11),
            dict(temperature=0.8, seed=11), dict(temperature=1e-310, seed=3),
            dict(temperature=3.0), dict(temperature=0.5)]


def alone(prompt, params, rid, eos):
    """The request's output served alone on a roomy engine; a request without a seed samples
    from (engine seed, rid): it gets the same id there (ids taken by aborted requests)."""
    key = (tuple(prompt), params, rid if params.seed is None and params.temperature else None,
           eos)
    if key not in _ALONE:
        engine = LLMEngine(model(eos), EngineConfig(num_pages=32, page_size=4))
        for _ in range(key[2] or 0):
            engine.abort_request(engine.add_request([1], SamplingParams(max_tokens=1)))
        (out,) = engine.generate([prompt], params)
        _ALONE[key] = (out.output_ids, out.finish_reason)
    return _ALONE[key]


def greedy(prompt, params, eos):
    """The unpaged greedy decode: what `alone` must give at temperature 0."""
    key = (tuple(prompt), params.max_tokens, eos and not params.ignore_eos)
    if key not in _DENSE:
        config = dataclasses.replace(CONFIG, eos_token_id=EOS if key[2] else None)
        _DENSE[key] = dense_generate(config, WEIGHTS, prompt, params.max_tokens)[0]
    out = _DENSE[key]
    return out, ("stop" if key[2] and out[-1] in EOS else "length")


def check_step(engine, reqs):
    """After a step: hunt 22's checks (pool invariants, ref counts = block tables, no page
    leaked, every computed and every cached page's K from its own tokens), and the hash
    table names a page only under the hash of the very tokens it records."""
    ps = engine.config.page_size
    blocks = {}
    for req in reqs.values():
        tokens = req.tokens(0, req.num_tokens)
        for i, h in enumerate(block_hashes(tokens, ps)):
            blocks[h] = (i, tokens[i * ps:(i + 1) * ps])
    check_engine(engine, blocks)
    pool = engine.kv.pool
    for h, page in pool.cached.items():
        assert pool.page_tokens[page] == tuple(blocks[h][1]), f"page {page}: other tokens"
    for req in reqs.values():
        if req.status is Status.FINISHED:
            assert not req.pages and not req.host_pages, f"request {req.rid} holds pages"


QUEUES = ("waiting", "running", "swapped")
arrivals = st.lists(st.tuples(st.integers(0, 4), st.integers(0, len(PROMPTS) - 1),
                              st.integers(0, len(SAMPLING) - 1), st.integers(1, MAX_TOKENS),
                              st.booleans()), min_size=3, max_size=7)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(page_size=st.integers(1, 4), spare=st.integers(0, 1), budget=st.integers(1, 8),
       chunk=st.one_of(st.none(), st.integers(1, 3)), seqs=st.integers(1, 4),
       mode=st.sampled_from(["recompute", "swap"]), caching=st.sampled_from([True, True, False]),
       eos=st.booleans(), predictive=st.booleans(), arrivals=arrivals,
       aborts=st.lists(st.tuples(st.integers(1, 12), st.sampled_from(list(QUEUES)),
                                 st.integers(0, 5)), max_size=3))
def test_every_request_gets_what_it_gets_alone(page_size, spare, budget, chunk, seqs, mode,
                                               caching, eos, predictive, arrivals, aborts):
    # a pool that holds the longest request and little more: others must be preempted
    longest = max(len(PROMPTS[p]) + max_tokens for _, p, _, max_tokens, _ in arrivals)
    engine = LLMEngine(model(eos), EngineConfig(
        page_size=page_size, num_pages=-(-longest // page_size) + spare,
        max_num_batched_tokens=budget, max_prefill_chunk=chunk, max_num_seqs=seqs,
        preemption_mode=mode, num_host_pages=16 if mode == "swap" else 0,
        enable_prefix_caching=caching, watermark=0.0, initial_output_guess=2,
        allocation="predictive" if predictive else "on_demand"))
    reqs, done = {}, {}
    for step in range(200):
        for when, p, s, max_tokens, ignore_eos in arrivals:
            if when == step:
                params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos,
                                        **SAMPLING[s])
                rid = engine.add_request(PROMPTS[p], params)
                reqs[rid] = engine.scheduler.waiting[-1]
        for when, queue, i in aborts:   # a request waiting, running or swapped out
            queued = list(getattr(engine.scheduler, queue))
            if when == step and queued:
                req = queued[i % len(queued)]
                done[req.rid] = out = engine.abort_request(req.rid)
                assert out.finish_reason == "abort" and out.output_ids == req.output_ids
        if step > 5 and not engine.has_unfinished():
            break
        for out in engine.step():
            assert out.rid not in done, "a request finished twice"
            done[out.rid] = out
        check_step(engine, reqs)
    assert not engine.has_unfinished() and sorted(done) == sorted(reqs)
    for rid, out in done.items():
        req = reqs[rid]
        if out.finish_reason == "abort":
            continue
        want = alone(req.prompt_ids, req.params, rid, eos)
        assert (out.output_ids, out.finish_reason) == want, f"request {rid} ({req.params})"
        if req.params.temperature < 1e-300:   # (1e-310: logits / t overflow, greedy's limit)
            assert want == greedy(req.prompt_ids, req.params, eos)


# -- sampling streams ------------------------------------------------------------------------

def test_requests_sampling_streams_never_coincide():
    """One draw per (stream, output position): a seed's stream or (no seed) the request's own.
    The seed list [seed, position] (padded with zeros by NumPy) gave seed 0 at position 3 the
    draw of request 3 without a seed at position 0, and seed 2**32 at position 5 that of
    request 1 without a seed at position 5 (engine seed 0)."""
    draws = {}
    for seed in (None, 0, 1, 3, 2**32, 2**32 + 3):
        for rid in range(5):
            for pos in range(6):
                req = Request(rid, [1], SamplingParams(seed=seed), output_ids=[0] * pos)
                key = ("seed", seed, pos) if seed is not None else ("rid", rid, pos)
                u = request_rng(req, 0).random()
                assert draws.setdefault(key, u) == u   # one stream per seed, whatever the id
    assert len(set(draws.values())) == len(draws), "two streams drew the same numbers"


def test_the_engine_scheduler_preempts_the_most_recently_admitted_request():
    # mutant: `victim = self.running[-1]` -> the request after the one growing: every
    # earlier engine test still passed. vLLM (and `sim`) preempt the newest running request.
    config = EngineConfig(page_size=1, num_pages=6, max_num_batched_tokens=16, watermark=0.0,
                          enable_prefix_caching=False)
    sched = Scheduler(config, KVCacheManager(6, 1, enable_caching=False))
    a, b, c = (Request(rid, [rid + 1, 7], SamplingParams(max_tokens=8)) for rid in range(3))
    for req in (a, b, c):
        sched.add(req)

    def step():
        scheduled = sched.schedule()
        for req, n in zip(scheduled.requests, scheduled.num_new):
            req.num_computed_tokens += n
            req.output_ids.append(0)   # every request here is caught up after its step
        return scheduled

    assert step().requests == [a, b, c]   # 2 pages each: the pool is full
    second = step()   # a needs a page: c, the newest, goes; a and b take its two pages
    assert second.preempted == [c] and second.requests == [a, b]
    assert sched.running == [a, b] and list(sched.waiting) == [c]
