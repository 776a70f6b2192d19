"""Helper 196: the serving engine against a plain model, as a vLLM engineer would test it.

`ReadBackModel` is a stand-in for the Llama forward, in pure Python (no kernel): it writes
each new token's id and position into its K/V slot of the engine's real `KVStore` (layer 0),
and "predicts" the next token from what it then reads back through the request's block
table. So the tokens it gives depend on the page contents: a prefix hit on the wrong page, a
page evicted and rewritten while still taken as a hit, a copy on write or a swap that moved
the wrong slots, a chunk written at the wrong position, all change the tokens. The plain
model (`plain_generate`) runs the same rule over the sequence itself, with no pages.

`PlainModelMachine` drives a real `LLMEngine` (its scheduler, KV manager, prefix cache and
store) on small pools through add_request (a prompt the whole pool cannot hold refused by
name), step and abort_request, over random configs: page sizes 1..5, chunks from 1 token,
budgets from 1 token, max_num_seqs, prefix caching on/off, recompute or swap, on-demand or
predictive allocation, watermarks. After every rule: every finished or aborted request's
tokens are the plain model's (a prefix of them when aborted), the pool's books balance, each
running request reads its own tokens back, each cached page holds its hash entry's tokens
(full blocks only), each step stays within its token budget, max_num_seqs and chunk limit,
requests start in arrival order (FCFS). At the end every page, device and host, is free and
every request finished the plain model's way within a bounded number of steps (no hang).
Sampled requests (seeded) are checked against the same request served alone in a roomy
engine instead (their draws are their own stream, whatever else runs).

`test_prefix_hits_exactly_...` counts the hits themselves, which the machine cannot (a cache
that never hits gives the plain model's tokens too).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.request import Status
from tests.test_engine_grid_hunt162 import check_books as check_page_books

VOCAB, EOS, MAX_LEN = 16, 3, 24
CONFIG = tiny_config(vocab_size=VOCAB, num_hidden_layers=1, eos_token_id=EOS,
                     max_position_embeddings=MAX_LEN)
WEIGHTS = random_weights(CONFIG, seed=196)
BASE = [int(t) for t in np.random.default_rng(196).integers(0, VOCAB, 16)]
ROOMY = dict(page_size=16, num_pages=8, max_num_batched_tokens=64, enable_prefix_caching=False)
_ALONE: dict = {}


def next_token(pairs) -> int:
    """The plain model: the next token from the (token id, position) pairs before it."""
    h = 0
    for token, position in pairs:
        h = (h * 1_000_003 + int(token) * 7_919 + int(position) * 31 + 1) % (1 << 61)
    return (h >> 7) % VOCAB


def expected(prompt, params: SamplingParams) -> tuple[list[int], str]:
    """(output, finish reason) of the request: greedy, the plain model's; sampled (seeded),
    the same request's served alone in a roomy engine (its draws are its own stream)."""
    if params.temperature == 0:
        return plain_generate(prompt, params)
    key = (tuple(prompt), params)
    if key not in _ALONE:
        out = make_engine(**ROOMY).generate([prompt], params)[0]
        _ALONE[key] = out.output_ids, out.finish_reason
    return _ALONE[key]


def plain_generate(prompt, params: SamplingParams) -> tuple[list[int], str]:
    """(output, finish reason) of the plain model, greedy, unpaged, one request alone."""
    seq, out = list(prompt), []
    while True:
        token = next_token((t, p) for p, t in enumerate(seq))
        out.append(token)
        seq.append(token)
        if token in params.stop_token_ids or (not params.ignore_eos and token == EOS):
            return out, "stop"
        if len(out) >= params.max_tokens or len(seq) >= MAX_LEN:
            return out, "length"


class RecordingAttention:
    """The engine's `StepAttention.plan`, kept for the model to read (nothing launched)."""

    def plan(self, q_lens, kv_lens, block_tables, slot_mapping) -> None:
        self.q_lens = [int(n) for n in q_lens]
        self.kv_lens = [int(n) for n in kv_lens]
        self.tables = [list(t) for t in block_tables]
        self.slots = np.asarray(slot_mapping, np.int64)


class ReadBackModel(LlamaModel):
    """Writes (token, position) into layer 0's K slots; predicts from what it reads back."""

    def forward(self, token_ids, positions, attention, kv, sample_rows):
        flat = kv.k[0].reshape(kv.num_pages * kv.page_size, -1)
        flat[attention.slots, 0] = np.asarray(token_ids)
        flat[attention.slots, 1] = np.asarray(positions)
        ends = np.cumsum(attention.q_lens)
        logits = np.zeros((len(sample_rows), VOCAB), np.float32)
        for out_row, row in enumerate(np.asarray(sample_rows).tolist()):
            i = int(np.searchsorted(ends, row, side="right"))   # the request of this row
            assert row == ends[i] - 1, "a row that is not its request's last new token sampled"
            pairs = flat[slots_of(attention.tables[i], attention.kv_lens[i], kv.page_size), :2]
            logits[out_row, next_token(pairs.tolist())] = 1.0
        return logits


def slots_of(pages, length: int, page_size: int) -> np.ndarray:
    """The cache slots of tokens 0..length-1 of a sequence with these pages."""
    positions = np.arange(length)
    return np.asarray(pages, np.int64)[positions // page_size] * page_size + positions % page_size


def make_engine(**config) -> LLMEngine:
    engine = LLMEngine(ReadBackModel(CONFIG, WEIGHTS, device="cpu"), EngineConfig(**config))
    engine.attention = RecordingAttention()
    return engine


def read_back(engine: LLMEngine, req) -> list[int]:
    """The token ids the request's pages hold for its computed tokens."""
    flat = engine.store.k[0].reshape(engine.config.num_pages * engine.config.page_size, -1)
    slots = slots_of(req.pages, req.num_computed_tokens, engine.config.page_size)
    return [int(t) for t in flat[slots, 0]]


def check_books(engine: LLMEngine) -> None:
    """Hunt 162's books (ref counts = holders, held + free = total, device and host; pages
    only where they belong), and what the pages hold: each running request its own tokens,
    each cached page its hash entry's."""
    check_page_books(engine)
    pool, ps = engine.kv.pool, engine.config.page_size
    for req in engine.scheduler.running:
        assert read_back(engine, req) == req.tokens(0, req.num_computed_tokens), \
            f"request {req.rid} reads back other tokens than its own"
    flat = engine.store.k[0].reshape(pool.num_pages * ps, -1)
    for page in pool.cached.values():   # (a full block: hunt 162's books)
        held = [int(t) for t in flat[page * ps:(page + 1) * ps, 0]]
        assert held == list(pool.page_tokens[page]), \
            f"cached page {page} holds other tokens than its hash entry's"


class PlainModelMachine(RuleBasedStateMachine):
    """The engine through its public API, every request checked against the plain model."""

    @initialize(page_size=st.integers(1, 5), num_pages=st.integers(3, 14),
                budget=st.integers(1, 12), chunk=st.one_of(st.none(), st.integers(1, 5)),
                max_num_seqs=st.integers(1, 4), caching=st.booleans(),
                swap=st.booleans(), host=st.integers(0, 6), predictive=st.booleans(),
                watermark=st.sampled_from([0.0, 0.2, 0.6]))
    def setup(self, page_size, num_pages, budget, chunk, max_num_seqs, caching, swap, host,
              predictive, watermark):
        self.engine = make_engine(
            page_size=page_size, num_pages=num_pages, max_num_batched_tokens=budget,
            max_prefill_chunk=chunk, max_num_seqs=max_num_seqs,
            enable_prefix_caching=caching, preemption_mode="swap" if swap else "recompute",
            num_host_pages=host, allocation="predictive" if predictive else "on_demand",
            expected_output_len=None, initial_output_guess=3, watermark=watermark)
        self.requests = {}   # rid -> (Request, prompt, params), in arrival order
        self.done = set()
        self.started = set()   # requests seen running (or past it), ever

    @rule(shared=st.integers(0, 12), tail=st.lists(st.integers(0, VOCAB - 1), max_size=4),
          repeat=st.integers(1, 3), max_tokens=st.integers(1, 8), ignore_eos=st.booleans(),
          stop=st.sampled_from([(), (5,), (7, 11)]), sampled=st.booleans())
    def add(self, shared, tail, repeat, max_tokens, ignore_eos, stop, sampled):
        # (repeated: equal blocks at two places of one prompt, which only their parents and
        # positions tell apart)
        prompt = ((BASE[:shared] + tail) * repeat)[:MAX_LEN - 1] or [BASE[0]]
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos,
                                stop_token_ids=stop, temperature=0.8 if sampled else 0.0,
                                seed=shared if sampled else None)
        config = self.engine.config
        need = config.pages_to_finish(min(len(prompt) + max_tokens, MAX_LEN))
        queued = len(self.engine.scheduler._queued)
        if need > config.num_pages:   # refused at once, by name: it could never finish
            with pytest.raises(ValueError, match="more than the whole pool"):
                self.engine.add_request(prompt, params)
            assert len(self.engine.scheduler._queued) == queued
            return
        rid = self.engine.add_request(prompt, params)
        self.requests[rid] = (self.engine.scheduler._queued[rid], prompt, params)

    @precondition(lambda self: self.engine.has_unfinished())
    @rule()
    def step(self):
        self.finish(self.engine.step())
        self.check_step()

    @precondition(lambda self: self.engine.has_unfinished())
    @rule(pick=st.integers(0, 50))
    def abort(self, pick):
        live = sorted(self.engine.scheduler._queued)
        rid = live[pick % len(live)]
        self.first_come_first_served()   # (what it was before the abort hides it)
        out = self.engine.abort_request(rid)
        want, _ = expected(self.requests[rid][1], self.requests[rid][2])
        assert out.finish_reason == "abort"
        assert out.output_ids == want[:len(out.output_ids)], f"request {rid} before its abort"
        self.done.add(rid)

    def finish(self, outputs):
        for out in outputs:
            _, prompt, params = self.requests[out.rid]
            assert (out.output_ids, out.finish_reason) == expected(prompt, params), \
                f"request {out.rid}: not the tokens it gets alone"
            self.done.add(out.rid)

    def check_step(self):
        """The step's batch within the budget, max_num_seqs and the chunk limit."""
        config, plan = self.engine.config, self.engine.attention
        assert sum(plan.q_lens) <= config.max_num_batched_tokens
        assert len(plan.q_lens) <= config.max_num_seqs
        assert max(plan.q_lens) <= config.chunk_limit

    @invariant()
    def books(self):
        if hasattr(self, "engine"):
            check_books(self.engine)

    @invariant()
    def first_come_first_served(self):
        """A request starts only after every request that arrived before it started (those
        aborted before they started aside)."""
        if not hasattr(self, "engine"):
            return
        for rid, (req, _, _) in self.requests.items():
            if (req.status in (Status.RUNNING, Status.SWAPPED) or req.num_preemptions
                    or req.output_ids or req.finish_reason in ("stop", "length")):
                self.started.add(rid)
        order = [rid in self.started for rid, (req, _, _) in self.requests.items()
                 if rid in self.started or req.finish_reason != "abort"]
        assert order == sorted(order, reverse=True), f"not first come first served: {order}"

    def teardown(self):
        if not hasattr(self, "engine"):
            return
        for _ in range(2000):   # (a hang shows as running out of steps)
            if not self.engine.has_unfinished():
                break
            self.step()
            self.books()
        assert not self.engine.has_unfinished(), "the engine stopped making progress"
        pool, host = self.engine.kv.pool, self.engine.kv.host
        assert pool.num_free == pool.num_pages and not any(pool.ref_cnt), "pages leaked"
        assert host is None or host.num_free == host.num_pages, "host pages leaked"
        assert self.done == set(self.requests)


PlainModelMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestPlainModelMachine = PlainModelMachine.TestCase


def serve(engine: LLMEngine, prompt, max_tokens=2):
    """One request served to its end: its output, checked against the plain model."""
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    (out,) = engine.generate([prompt], params)
    assert (out.output_ids, out.finish_reason) == plain_generate(prompt, params)
    return out


@pytest.mark.parametrize("page_size", [1, 3, 4])
def test_prefix_hits_exactly_the_equal_full_blocks_of_equal_prefixes(page_size):
    """A hit for every full block whose prefix (parent hashes) equals, none for the last
    partial block, none for an equal block after a different one, and none once the page
    that held it was evicted and written with other tokens."""
    ps = page_size
    engine = make_engine(page_size=ps, num_pages=-(-(3 * ps + 3) // ps) + 1)
    first = [(7 * i + 1) % VOCAB for i in range(2 * ps + 1)]
    assert serve(engine, first).num_cached_tokens == 0
    assert serve(engine, first).num_cached_tokens == 2 * ps   # the partial block never
    same_head = first[:ps] + [(t + 1) % VOCAB for t in first[ps:]]
    assert serve(engine, same_head).num_cached_tokens == ps
    other_head = [(t + 1) % VOCAB for t in first[:ps]] + first[ps:]
    assert serve(engine, other_head).num_cached_tokens == 0   # block 1 equal, parent not
    twice = first[:ps] * 2 + first[2 * ps:]   # block 1 holds block 0's tokens, after it
    assert serve(engine, twice).num_cached_tokens == ps
    # two prompts of the pool's length evict every page that held `first` and rewrite it
    # (one leaves its most recently freed page cached)
    for step in (5, 3):
        filler = [(step * i + 2) % VOCAB for i in range(engine.config.num_pages * ps - 2)]
        serve(engine, filler, max_tokens=1)
    assert serve(engine, first).num_cached_tokens == 0
    engine.kv.pool.check_invariants()
    assert engine.kv.pool.num_free == engine.kv.pool.num_pages


class AbortingModel(ReadBackModel):
    """Calls `abort_request` from inside the forward, once (a client hanging up while a
    step runs, in a server whose callbacks run in the loop)."""
    abort = None   # the request id to abort at the next forward

    def forward(self, *args):
        if self.abort is not None:
            rid, self.abort = self.abort, None
            self.engine.abort_request(rid)
        return super().forward(*args)


def test_abort_inside_a_step_is_refused_and_the_step_undone_then_served_right():
    model = AbortingModel(CONFIG, WEIGHTS, device="cpu")
    engine = LLMEngine(model, EngineConfig(page_size=2, num_pages=8, max_num_batched_tokens=3))
    engine.attention = RecordingAttention()
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    prompts = [BASE[:5], BASE[:3] + [1, 2]]
    rids = [engine.add_request(p, params) for p in prompts]
    engine.step()
    model.engine, model.abort = engine, rids[0]
    before = [(r.rid, r.num_computed_tokens, list(r.pages)) for r in engine.scheduler.running]
    with pytest.raises(RuntimeError, match=r"^abort: a step is running"):
        engine.step()
    assert [(r.rid, r.num_computed_tokens, list(r.pages))
            for r in engine.scheduler.running] == before, "the failed step was not undone"
    outputs = {}
    while engine.has_unfinished():
        outputs.update((out.rid, out) for out in engine.step())
    for rid, prompt in zip(rids, prompts):
        assert (outputs[rid].output_ids, outputs[rid].finish_reason) == \
            plain_generate(prompt, params)
    assert engine.stats.aborted == 0 and engine.kv.pool.num_free == engine.kv.pool.num_pages
