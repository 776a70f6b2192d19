"""Hunt 86: the serving engine driven by a state machine through its public API.

`EngineMachine` runs a real `LLMEngine` (the tiny model, on the CPU) on tiny pools (pages of
1..8 tokens, a few pages), prompts sharing prefixes, chunked prefill budgets, both
preemption modes, on-demand and predictive allocation, end tokens, and full or compressed
(int8 / fp8) pages, through random `add_request`, `step` (failing first at a random call of
its parts, hunt 22's `patch`, or after the forward), `abort_request`, and refused calls.
After every rule: the pool's invariants, ref counts = holders, no page twice in one table,
cached pages holding their tokens' K (full pages), a failed step changing nothing but its
victims, every request's tokens a prefix of the unpaged greedy decode, and `summary()`'s
counters recounted from the outside (requests, tokens, preemptions, recomputed tokens,
swapped pages).
"""
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from pagedattn_lab.engine import EngineConfig, LLMEngine, LlamaModel, SamplingParams
from pagedattn_lab.engine.dense import dense_generate
from pagedattn_lab.engine.prefix_cache import block_hashes
from pagedattn_lab.engine.request import Status
from pagedattn_lab.quant import dequantize

from .test_engine_quant import round_trip
from .test_engine_step_rollback_hunt22 import (BASE, CONFIG, WEIGHTS, check_engine,
                                               check_rolled_back, fail_after_forward, layer0_keys,
                                               patch, state, step_failing)

MAX_TOKENS = 5
_DENSE: dict = {}
_MODELS: dict = {}
EOS = (125, 20)   # two end tokens that the greedy decodes of these prompts meet often


def model(eos):
    """The tiny model, stopping at EOS or (eos False) at no token."""
    if eos not in _MODELS:
        config = dataclasses.replace(CONFIG, eos_token_id=EOS if eos else None)
        _MODELS[eos] = LlamaModel(config, WEIGHTS, device="cpu")
    return _MODELS[eos]


def dense(prompt, kv_dtype):
    """The unpaged greedy decode of MAX_TOKENS tokens (over the cache's codes if compressed):
    a request's output is a prefix of it."""
    key = (tuple(prompt), kv_dtype)
    if key not in _DENSE:
        _DENSE[key] = dense_generate(dataclasses.replace(CONFIG, eos_token_id=None), WEIGHTS,
                                     prompt, MAX_TOKENS,
                                     round_trip(kv_dtype) if kv_dtype else None)[0]
    return _DENSE[key]


def check_pages(engine, token_blocks):
    """hunt 22's `check_engine`; over int8 / fp8 codes, the keys dequantized, within about a
    code step of the largest."""
    if engine.store.kv_dtype is None:
        check_engine(engine, token_blocks)
        return
    store, ps = engine.store, engine.config.page_size
    step = 1 / 100 if store.kv_dtype == "int8" else 1 / 14   # (fp8: 3 mantissa bits)

    def near(pages, slots, tokens, positions, what):
        got = dequantize(store.k[0][pages, slots], store.kv_dtype,
                         store.k_scale[0][pages, slots])
        want = layer0_keys(engine.model, tokens, positions)
        assert np.abs(got - want).max() <= np.abs(want).max() * step, what

    pool, sched = engine.kv.pool, engine.scheduler   # (check_engine's structure checks)
    pool.check_invariants()
    owners = {}
    for req in sched.running:
        for page in req.pages:
            owners[page] = owners.get(page, 0) + 1
    assert {p: c for p, c in enumerate(pool.ref_cnt) if c} == owners, "ref counts != owners"
    for req in [*sched.waiting, *sched.swapped]:
        assert not req.pages and (req.status is Status.SWAPPED) == bool(req.host_pages)
    for req in engine.scheduler.running:
        pos = np.arange(req.num_computed_tokens)
        if pos.size:
            near(np.asarray(req.pages)[pos // ps], pos % ps, req.tokens(0, pos.size), pos,
                 f"request {req.rid}: its K/V were overwritten")
    for block_hash, page in engine.kv.pool.cached.items():
        i, tokens = token_blocks[block_hash]
        near(page, slice(None), tokens, np.arange(i * ps, (i + 1) * ps),
             f"cached page {page} holds other tokens")


prompts = st.builds(lambda cut, tail: BASE[:cut] + tail, st.sampled_from([0, 1, 3, 6, 9]),
                    st.lists(st.sampled_from([5, 77]), max_size=3)).filter(bool)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.engine = None

    @initialize(page_size=st.integers(1, 8), spare=st.integers(0, 1),
                budget=st.integers(1, 9), chunk=st.one_of(st.none(), st.integers(1, 4)),
                mode=st.sampled_from(["recompute", "swap"]), caching=st.booleans(),
                seqs=st.integers(1, 3),
                kv_dtype=st.sampled_from([None, None, "int8", "fp8_e4m3"]),
                predictive=st.booleans(), watermark=st.sampled_from([0.0, 0.0, 0.2]),
                eos=st.booleans())
    def build(self, page_size, spare, budget, chunk, mode, caching, seqs, kv_dtype, predictive,
              watermark, eos):
        # the longest request (12 prompt + 5 output tokens) must fit: the engine refuses more
        num_pages = -(-(len(BASE[:9]) + 3 + MAX_TOKENS) // page_size) + spare
        self.kv_dtype = kv_dtype
        self.eos = eos
        self.engine = LLMEngine(model(eos), EngineConfig(
            page_size=page_size, num_pages=num_pages, max_num_batched_tokens=budget,
            max_prefill_chunk=chunk, preemption_mode=mode, enable_prefix_caching=caching,
            num_host_pages=8 if mode == "swap" else 0, max_num_seqs=seqs, watermark=watermark,
            kv_dtype=kv_dtype, allocation="predictive" if predictive else "on_demand",
            initial_output_guess=3))
        self.reqs = {}          # rid -> Request (every one added)
        self.done = {}          # rid -> RequestOutput (finished or aborted)
        self.token_blocks = {}  # block hash -> (block index, its tokens)
        self.steps = 0
        self.recomputed = 0
        self.high = {}          # rid -> most tokens it ever had computed
        self.swapped_pages = 0
        self.scheduled = []     # the ScheduledStep of the latest step
        schedule = self.engine.scheduler.schedule

        def seen():
            self.scheduled[:] = [schedule()]
            return self.scheduled[0]
        self.engine.scheduler.schedule = seen

    def _note_blocks(self):
        ps = self.engine.config.page_size
        for req in self.reqs.values():
            tokens = req.tokens(0, req.num_tokens)
            for i, h in enumerate(block_hashes(tokens, ps)):
                self.token_blocks[h] = (i, tokens[i * ps:(i + 1) * ps])

    @rule(batch=st.lists(st.tuples(prompts, st.integers(1, MAX_TOKENS), st.booleans()),
                         min_size=1, max_size=3))
    def add(self, batch):
        for prompt, max_tokens, ignore_eos in batch:
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos)
            rid = self.engine.add_request(prompt, params)
            assert rid not in self.reqs
            self.reqs[rid] = self.engine.scheduler.waiting[-1]
            self.high[rid] = 0
        self._note_blocks()

    @rule(bad=st.sampled_from(["empty", "vocab", "negative", "float", "too_long", "params"]))
    def add_refused(self, bad):
        """Refused by name, before anything changes (the next id is not taken either)."""
        prompt, params, match = {
            "empty": ([], None, r"prompt_ids: expected at least one token"),
            "vocab": ([1, CONFIG.vocab_size], None, r"prompt_ids\[1\]: token id 128"),
            "negative": ([-1], None, r"prompt_ids\[0\]: token id -1"),
            "float": ([1, 2.0], None, r"prompt_ids"),
            "too_long": ([1] * 200, SamplingParams(max_tokens=MAX_TOKENS), r"prompt_ids: 200"),
            "params": ([1], {"max_tokens": 2}, r"params: expected a SamplingParams"),
        }[bad]
        before, summary, rid = state(self.engine), self.engine.summary(), self.engine._next_rid
        with pytest.raises((ValueError, TypeError), match=match):
            self.engine.add_request(prompt, params)
        assert state(self.engine) == before and self.engine.summary() == summary
        assert self.engine._next_rid == rid

    @precondition(lambda self: self.engine.has_unfinished())
    @rule(fail_at=st.one_of(st.none(), st.integers(1, 12), st.just("forward")),
          more=st.integers(0, 6))
    def step(self, fail_at, more):
        """A step failing at call `fail_at` of its parts ("forward": once the forward wrote
        every layer; None: not failing), then `more` steps that do not fail."""
        self._step(fail_at)
        for _ in range(more):
            if self.engine.has_unfinished():
                self._step(None)
            self.pages_and_tokens()
            self.summary_counts()

    def _step(self, fail_at):
        engine = self.engine
        if fail_at is not None:
            before, summary = state(engine), engine.summary()
            if fail_at == "forward":
                patched = pytest.MonkeyPatch()
                fail_after_forward(engine, patched)
                restore = patched.undo
            else:
                restore = patch(engine, fail_at)
            outs = step_failing(engine, restore)
            if outs is None:
                assert engine.scheduler._journal is None, "still inside the failed step"
                check_pages(engine, self.token_blocks)
                if check_rolled_back(engine, before) == "victims":
                    self._check_victims(before, summary)
                else:
                    self._check_summary_unchanged(summary)
                return
            self._record_step(outs, before)
            return
        before = state(engine)
        self._record_step(engine.step(), before)

    def _record_step(self, outs, before):
        """Recount what the step did from the requests' states before and after it."""
        self.steps += 1
        for rid, was in before["requests"].items():
            req = self.reqs[rid]
            status, computed_before, host_before = was[0], was[1], was[3]
            if status is Status.SWAPPED and req.status is not Status.SWAPPED:
                self.swapped_pages += len(host_before)   # swapped in
            if req.status is Status.SWAPPED and status is not Status.SWAPPED:
                self.swapped_pages += len(req.host_pages)   # swapped out
        (step,) = self.scheduled
        for req, n in zip(step.requests, step.num_new):   # run again below its high mark
            start = req.num_computed_tokens - n
            self.recomputed += max(0, min(start + n, self.high[req.rid]) - start)
        for req in self.reqs.values():
            self.high[req.rid] = max(self.high[req.rid], req.num_computed_tokens)
        for out in outs:
            assert out.rid not in self.done, "a request finished twice"
            assert (out.output_ids, out.finish_reason) == self._expected(self.reqs[out.rid])
            self.done[out.rid] = out
        self._note_blocks()

    def _expected(self, req):
        """(output, finish reason) of a finished request: the unpaged greedy decode, cut at
        max_tokens or after the first end token (unless ignored)."""
        out = dense(req.prompt_ids, self.kv_dtype)[:req.params.max_tokens]
        ends = [i for i, t in enumerate(out) if self.eos and not req.params.ignore_eos
                and t in EOS]
        return (out[:ends[0] + 1], "stop") if ends else (out, "length")

    def _check_victims(self, before, summary):
        now = self.engine.summary()
        victims = [self.reqs[rid] for rid in before["requests"]
                   if self.reqs[rid] in self.engine.scheduler._victims]
        swapped = [r for r in victims if r.status is Status.SWAPPED]
        assert now["preempted_swap"] == summary["preempted_swap"] + len(swapped)
        assert now["preempted_recompute"] == (summary["preempted_recompute"] + len(victims)
                                              - len(swapped))
        assert now["swapped_pages"] == (summary["swapped_pages"]
                                        + sum(len(r.host_pages) for r in swapped))
        self.swapped_pages += sum(len(r.host_pages) for r in swapped)

    def _check_summary_unchanged(self, summary):
        now = self.engine.summary()
        del now["evictions"], summary["evictions"]   # pages it wrote into forget their hash
        assert now == summary

    @precondition(lambda self: self.reqs)
    @rule(data=st.data(), unfinished=st.integers(0, 3))
    def abort(self, data, unfinished):
        """Mostly an unfinished request; else a finished, aborted or unknown id (refused)."""
        queued = [r.rid for r in self.reqs.values() if r.status is not Status.FINISHED]
        rid = data.draw(st.sampled_from(queued if unfinished and queued else
                                        sorted(self.reqs) + [max(self.reqs) + 1]))
        engine = self.engine
        if rid in self.done or rid not in self.reqs:
            before, summary = state(engine), engine.summary()
            with pytest.raises(ValueError, match=f"rid: no queued request has id {rid}"):
                engine.abort_request(rid)
            assert state(engine) == before and engine.summary() == summary
            return
        req = self.reqs[rid]
        out = engine.abort_request(rid)
        assert out.finish_reason == "abort" and req.status is Status.FINISHED
        assert req.pages == [] and req.host_pages == []
        self.done[rid] = out

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def pages_and_tokens(self):
        engine = self.engine
        check_pages(engine, self.token_blocks)
        for req in engine.scheduler.running:
            assert len(set(req.pages)) == len(req.pages), f"request {req.rid}: a page twice"
        for page in engine.kv.pool.cached.values():   # only full pages are cached
            assert engine.kv.pool.page_tokens[page] is not None
            assert len(engine.kv.pool.page_tokens[page]) == engine.config.page_size
        for rid, req in self.reqs.items():
            want = dense(req.prompt_ids, self.kv_dtype)
            assert req.output_ids == want[:len(req.output_ids)], f"request {rid}"
            if rid in self.done:
                assert self.done[rid].output_ids == req.output_ids

    @invariant()
    def summary_counts(self):
        s, reqs = self.engine.summary(), self.reqs.values()
        finished = [r for r in reqs if r.finish_reason in ("stop", "length")]
        assert s["steps"] == self.steps
        assert s["requests_finished"] == len(finished)
        assert s["requests_aborted"] == sum(r.finish_reason == "abort" for r in reqs)
        assert s["prompt_tokens"] == sum(len(r.prompt_ids) for r in reqs)
        assert s["output_tokens"] == sum(len(r.output_ids) for r in reqs)
        assert (s["preempted_recompute"] + s["preempted_swap"]
                == sum(r.num_preemptions for r in reqs))
        assert s["swapped_pages"] == self.swapped_pages
        assert s["recomputed_tokens"] == self.recomputed
        assert s["max_running"] <= self.engine.config.max_num_seqs
        series = self.engine.stats.series
        assert [p + d for p, d in zip(series["prefill_tokens"], series["decode_tokens"])] \
            == series["batch_tokens"]
        config = self.engine.config
        assert all(0 < b <= config.max_num_batched_tokens for b in series["batch_tokens"])
        assert all(t <= p * config.page_size and p <= config.num_pages
                   for t, p in zip(series["tokens_stored"], series["pages_used"]))
        assert 0 <= s["kv_waste_fraction"] <= 1 and 0 <= s["prefix_hit_rate"] <= 1


EngineMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestEngineMachine = EngineMachine.TestCase
