"""The scheduler: budgets and the pool are never exceeded, every request finishes, and the
engine's tokens do not depend on how it scheduled them."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.dense import dense_generate
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, Status
from pagedattn_lab.engine.scheduler import Scheduler

from .engine_fakes import FakeStore, assert_private

VOCAB = 50


def _fake_token(req):
    """What the fake model 'samples': a function of the request and position only."""
    return (req.rid * 31 + len(req.output_ids) * 7) % VOCAB


def serve_without_model(config, prompts, output_lens, max_steps=3000):
    """The engine's loop with the model replaced by FakeStore writes; checks every step."""
    store = FakeStore(config.num_pages, config.page_size, config.num_host_pages)
    kv = KVCacheManager(config.num_pages, config.page_size,
                        enable_caching=config.enable_prefix_caching,
                        num_host_pages=config.num_host_pages, store=store)
    sched = Scheduler(config, kv)
    reqs = [Request(i, list(p), SamplingParams(max_tokens=64)) for i, p in enumerate(prompts)]
    for req in reqs:
        sched.add(req)
    preemptions = 0
    for _ in range(max_steps):
        if not sched.has_unfinished():
            break
        step = sched.schedule()
        preemptions += len(step.preempted) + len(step.swapped_out)
        assert step.requests, "no progress although requests wait"
        assert step.num_tokens <= config.max_num_batched_tokens
        assert len(sched.running) <= config.max_num_seqs
        assert len(set(map(id, step.requests))) == len(step.requests)
        assert all(r.status is Status.RUNNING for r in step.requests)
        assert kv.pool.num_used <= config.num_pages
        for req, n in zip(step.requests, step.num_new):
            assert 1 <= n <= config.chunk_limit
            start = req.num_computed_tokens
            assert start + n <= req.num_tokens
            assert len(req.pages) * config.page_size >= start + n, "pages for every new token"
            assert_private(kv, req, start, start + n)
            store.write(req, start, start + n)
            req.num_computed_tokens += n
            kv.register_computed(req)
        for req in list(step.requests):
            if req.num_computed_tokens == req.num_tokens:
                req.output_ids.append(_fake_token(req))
                if len(req.output_ids) == output_lens[req.rid]:
                    sched.finish(req, "stop")
        kv.pool.check_invariants()
        for req in sched.running:
            assert store.read(req) == req.tokens(0, req.num_computed_tokens)
    else:
        pytest.fail(f"not finished after {max_steps} steps")
    assert kv.pool.num_used == 0 and (kv.host is None or kv.host.num_used == 0)
    for req in reqs:
        expected = []
        for _ in range(output_lens[req.rid]):
            expected.append((req.rid * 31 + len(expected) * 7) % VOCAB)
        assert req.output_ids == expected
    return preemptions


configs = st.builds(
    EngineConfig, page_size=st.sampled_from([1, 2, 4, 5]), num_pages=st.integers(12, 40),
    max_num_batched_tokens=st.integers(1, 24), max_num_seqs=st.integers(1, 6),
    max_prefill_chunk=st.one_of(st.none(), st.integers(1, 8)),
    enable_prefix_caching=st.booleans(), watermark=st.sampled_from([0.0, 0.05, 0.2]),
    preemption_mode=st.sampled_from(["recompute", "swap"]),
    num_host_pages=st.sampled_from([0, 4, 40]), allocation=st.sampled_from(
        ["on_demand", "predictive"]), initial_output_guess=st.integers(0, 12))
workloads = st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=14),
                               st.integers(1, 10)), min_size=1, max_size=8)


@given(config=configs, workload=workloads)
def test_scheduler_keeps_its_budgets_and_finishes_everything(config, workload):
    # Prompts over a 4-token alphabet share prefixes often; each must fit the pool alone.
    longest = max(len(p) + n for p, n in workload)
    if -(-longest // config.page_size) + 1 > config.num_pages:
        return
    serve_without_model(config, [p for p, _ in workload], [n for _, n in workload])


def test_swap_in_prices_the_whole_next_chunk():
    """Found by the property above: with one-token pages, a request swapped out mid-prompt
    comes back needing a page for every token of its next chunk, not just one more."""
    config = EngineConfig(page_size=1, num_pages=19, max_num_batched_tokens=14, max_num_seqs=3,
                          max_prefill_chunk=None, enable_prefix_caching=False, watermark=0.0,
                          preemption_mode="swap", num_host_pages=4, allocation="on_demand")
    serve_without_model(config, [[0, 0], [0] * 11, [0] * 5], [3, 3, 1])


def test_a_predicted_output_larger_than_the_pool_does_not_stall():
    """Found by the property above: predictive allocation reserving more pages than the pool
    has must still admit a request when nothing else runs."""
    config = EngineConfig(page_size=1, num_pages=12, allocation="predictive",
                          initial_output_guess=12)
    serve_without_model(config, [[0]], [1])


def test_a_small_pool_preempts_and_still_finishes():
    prompts = [[1, 2, 3, 4, 5, 6]] * 6
    for mode in ("recompute", "swap"):
        config = EngineConfig(page_size=2, num_pages=12, max_num_batched_tokens=16,
                              preemption_mode=mode, num_host_pages=30)
        assert serve_without_model(config, prompts, [8] * 6) > 0


def test_watermark_holds_back_admission():
    kv = KVCacheManager(10, 4)
    sched = Scheduler(EngineConfig(page_size=4, num_pages=10, watermark=0.3,
                                   max_num_batched_tokens=64), kv)
    for rid, n in enumerate((12, 12, 4)):
        sched.add(Request(rid, list(range(n)), SamplingParams()))
    step = sched.schedule()
    # 3 + 3 + 1 pages leave 3 free: exactly the watermark (0.3 of 10 pages).
    assert [r.rid for r in step.requests] == [0, 1, 2] and kv.pool.num_free == 3
    sched.add(Request(3, list(range(4)), SamplingParams()))
    assert not sched.schedule().requests[3:], "admitting would eat into the watermark"


# -- the real model: tokens whatever the scheduler does ------------------------------------------

@pytest.fixture(scope="module")
def model_and_prompts():
    config = tiny_config()
    weights = random_weights(config, seed=0)
    rng = np.random.default_rng(1)
    shared = rng.integers(0, 128, 24).tolist()
    prompts = ([rng.integers(0, 128, n).tolist() for n in (5, 17, 1, 33, 9)] +
               [shared + rng.integers(0, 128, n).tolist() for n in (0, 3, 8, 0)] + [shared[:16]])
    lens = rng.integers(4, 20, len(prompts))
    # Even requests greedy, odd ones sampled at temperature 0.8 (seeded per request).
    params = [SamplingParams(max_tokens=int(n), temperature=0.8 * (i % 2), ignore_eos=True)
              for i, n in enumerate(lens)]
    return config, weights, LlamaModel(config, weights, device="cpu"), prompts, params


BASE = dict(page_size=8, num_pages=64, max_num_batched_tokens=32)
SCHEDULES = {
    "no prefix cache": dict(enable_prefix_caching=False),
    "small pool, recompute": dict(num_pages=12, max_num_batched_tokens=16),
    "small pool, swap": dict(num_pages=12, preemption_mode="swap", num_host_pages=40,
                             max_num_batched_tokens=7),
    "tiny budget, 3 sequences": dict(num_pages=10, max_num_batched_tokens=5, max_num_seqs=3),
    "predictive": dict(allocation="predictive", num_pages=14),
    "page 4, swap space full": dict(page_size=4, num_pages=30, preemption_mode="swap",
                                    num_host_pages=5, max_prefill_chunk=3),
    # A request swapped out mid-prefill comes back needing several pages for its next chunk.
    "page 4, swapped mid-prefill": dict(page_size=4, num_pages=14, max_num_batched_tokens=16,
                                        preemption_mode="swap", num_host_pages=64),
}
EXPECT = {  # what each schedule must have exercised, so the comparison is not vacuous
    "no prefix cache": lambda s: s["prefix_hit_rate"] == 0,
    "small pool, recompute": lambda s: s["preempted_recompute"] > 0,
    "small pool, swap": lambda s: s["preempted_swap"] > 0 and s["swap_bytes"] > 0,
    "tiny budget, 3 sequences": lambda s: s["max_running"] == 3,
    "predictive": lambda s: s["evictions"] > 0,
    "page 4, swap space full": lambda s: s["preempted_recompute"] > 0,
    "page 4, swapped mid-prefill": lambda s: s["preempted_swap"] > 0,
}


@pytest.fixture(scope="module")
def baseline(model_and_prompts):
    _, _, model, prompts, params = model_and_prompts
    engine = LLMEngine(model, EngineConfig(**BASE))
    outs = engine.generate(prompts, params)
    summary = engine.summary()
    assert summary["prefix_hit_rate"] > 0.3 and summary["cow_copies"] > 0
    # Shared prefix pages hold their tokens once: never more tokens than slots held.
    s = engine.stats.arrays()
    assert (s["tokens_stored"] <= s["pages_used"] * BASE["page_size"]).all()
    assert 0 < summary["kv_waste_fraction"] < 0.5
    return [o.output_ids for o in outs]


def test_greedy_baseline_matches_dense(model_and_prompts, baseline):
    config, weights, _, prompts, params = model_and_prompts
    for prompt, sp, got in zip(prompts, params, baseline):
        if sp.temperature == 0:
            assert got == dense_generate(config, weights, prompt, sp.max_tokens)[0]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_tokens_do_not_depend_on_the_schedule(model_and_prompts, baseline, name):
    _, _, model, prompts, params = model_and_prompts
    engine = LLMEngine(model, EngineConfig(**(BASE | SCHEDULES[name])))
    outs = engine.generate(prompts, params)
    assert [o.output_ids for o in outs] == baseline
    assert EXPECT[name](engine.summary()), engine.summary()
    assert engine.kv.pool.num_used == 0


def test_a_prompt_that_is_entirely_cached(model_and_prompts):
    config, weights, model, _, _ = model_and_prompts
    prompt = list(range(16))       # two full pages of 8
    engine = LLMEngine(model, EngineConfig(page_size=8, num_pages=8))
    first, = engine.generate([prompt], SamplingParams(max_tokens=3))
    again, = engine.generate([prompt], SamplingParams(max_tokens=3))
    assert again.num_cached_tokens == 15 and engine.kv.cow_copies == 1
    assert engine.summary()["prompt_hit_rate"] == round(15 / 32, 4)
    assert first.output_ids == again.output_ids == dense_generate(config, weights, prompt, 3)[0]


@pytest.mark.parametrize("prompt, params, match", [
    ([], None, "at least one token"),
    ([1, 128], None, "token id 128 is outside the vocabulary"),
    (list(range(100)), SamplingParams(max_tokens=200), "more than the whole pool"),
])
def test_add_request_refuses(model_and_prompts, prompt, params, match):
    engine = LLMEngine(model_and_prompts[2], EngineConfig(page_size=8, num_pages=16))
    with pytest.raises(ValueError, match=match):
        engine.add_request(prompt, params)
    assert not engine.has_unfinished()


@pytest.mark.parametrize("kwargs, match", [
    (dict(watermark=1.0), "watermark"),
    (dict(preemption_mode="drop"), "preemption_mode"),
    (dict(allocation="eager"), "allocation"),
    (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
])
def test_engine_config_refuses(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EngineConfig(**kwargs)


def test_a_prompt_as_long_as_the_context_is_refused(model_and_prompts):
    engine = LLMEngine(model_and_prompts[2], EngineConfig(page_size=8, num_pages=16))
    with pytest.raises(ValueError, match=r"^prompt_ids: 2048 tokens leave no room to generate "
                                         r"within max_position_embeddings=2048$"):
        engine.add_request([1] * 2048)
    with pytest.raises(ValueError, match=r"^prompts\[1\]: 2049 tokens leave no room"):
        engine.generate([[1, 2], [1] * 2049])
    assert not engine.has_unfinished() and engine.stats.prompt_tokens == 0


def test_generate_refuses_a_params_list_of_another_length(model_and_prompts):
    engine = LLMEngine(model_and_prompts[2], EngineConfig(page_size=8, num_pages=16))
    with pytest.raises(ValueError, match=r"^params: expected 2 SamplingParams, got 3$"):
        engine.generate([[1, 2], [3]], [SamplingParams(max_tokens=1)] * 3)
    with pytest.raises(ValueError, match=r"^params: expected 2 SamplingParams, got 0$"):
        engine.generate([[1, 2], [3]], [])
    assert not engine.has_unfinished() and engine.stats.prompt_tokens == 0


def test_generate_refuses_while_add_request_requests_wait(model_and_prompts):
    """generate() serves to the end and returns only its own prompts' outputs: a request
    queued by add_request would be served and its output lost."""
    engine = LLMEngine(model_and_prompts[2], EngineConfig(page_size=8, num_pages=16))
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(RuntimeError, match=r"^generate: requests added with add_request are "
                                           r"still unfinished; serve them with step\(\)"):
        engine.generate([[4, 5]], SamplingParams(max_tokens=1))
    assert engine.stats.prompt_tokens == 3 and engine._next_rid == rid + 1   # nothing queued
    done = []
    while engine.has_unfinished():
        done += engine.step()
    assert [o.rid for o in done] == [rid] and len(done[0].output_ids) == 2
    out, = engine.generate([[4, 5]], SamplingParams(max_tokens=1))   # now it serves
    assert len(out.output_ids) == 1


# -- abort_request: a client gone mid-stream ---------------------------------------------------

@pytest.mark.parametrize("name, plan", [
    ("small pool, swap", ("waiting", "swapped", "running", "waiting")),
    ("small pool, recompute", ("running", "waiting", "running")),
])
def test_aborted_requests_give_their_pages_back_and_change_no_other_output(
        model_and_prompts, baseline, name, plan):
    """Requests aborted while waiting, running or swapped out (`plan`: one each, in that
    order, the newest of its queue): each returns its tokens so far (a prefix of what it would
    have made), holds nothing after, and every other request makes exactly its tokens of the
    full run."""
    _, _, model, prompts, params = model_and_prompts
    engine = LLMEngine(model, EngineConfig(**(BASE | SCHEDULES[name])))
    rids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    outputs, aborted, plan = {}, {}, list(plan)
    while engine.has_unfinished():
        outputs.update((o.rid, o) for o in engine.step())
        queue = getattr(engine.scheduler, plan[0]) if plan else None
        if queue:
            req = queue[-1]
            out = engine.abort_request(req.rid)
            assert (out.finish_reason, req.status, req.pages, req.host_pages) == \
                ("abort", Status.FINISHED, [], [])
            aborted[req.rid] = out
            plan.pop(0)
    assert not plan, f"never found a request {plan[0]} to abort"
    host = engine.kv.host
    assert engine.kv.pool.num_used == 0 and engine.stats.aborted == len(aborted)
    assert host is None or host.num_free == host.num_pages
    assert engine.summary()["requests_aborted"] == len(aborted)
    for rid in rids:
        if rid in aborted:
            got = aborted[rid].output_ids
            assert got == baseline[rid][:len(got)] and rid not in outputs
        else:
            assert outputs[rid].output_ids == baseline[rid]


def test_abort_request_refuses_an_id_not_queued_and_changes_nothing(model_and_prompts):
    engine = LLMEngine(model_and_prompts[2], EngineConfig(page_size=8, num_pages=16))
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=2, return_logits=True))
    for bad, error, match in ((rid + 1, ValueError, r"^rid: no queued request has id 1 "),
                              (-1, ValueError, r"^rid: "), ("0", TypeError, r"^rid: ")):
        with pytest.raises(error, match=match):
            engine.abort_request(bad)
    assert [r.rid for r in engine.scheduler.waiting] == [rid] and engine.stats.aborted == 0
    out = engine.abort_request(rid)   # still waiting: no token, an empty logits array
    assert out.output_ids == [] and out.logits.shape == (0, model_and_prompts[0].vocab_size)
    with pytest.raises(ValueError, match=r"already finished or aborted"):
        engine.abort_request(rid)
    assert not engine.has_unfinished()
    engine.scheduler.begin()
    with pytest.raises(RuntimeError, match=r"^abort: a step is running"):
        engine.scheduler.abort(rid)
    engine.scheduler.commit()
