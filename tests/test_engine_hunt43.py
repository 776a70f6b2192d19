"""Hunt 43: the serving engine's scheduler and prefix cache against vLLM's and nano-vllm's rules.

- swapped-out requests go before waiting ones (vLLM's rule), and nothing starves or stalls;
- with one-token pages, a fully cached prompt does not copy (on write) the page of the token
  it recomputes: that page holds nothing else;
- a request resumed after preemption by recompute prefills prompt + outputs: its chunks count
  as prefill in the engine's series, a last chunk of one token too;
- a prefix hit compares the block's token ids, not only its hash (nano-vllm's check).
"""
import pytest

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine import kv_manager as kv_manager_module
from pagedattn_lab.engine.dense import dense_generate
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import BlockPool, hash_block
from pagedattn_lab.engine.request import Request, Status
from pagedattn_lab.engine.scheduler import Scheduler

from .engine_fakes import FakeStore

CONFIG = tiny_config()
WEIGHTS = random_weights(CONFIG, seed=3)


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CONFIG, WEIGHTS, device="cpu")


def dense(prompt, n):
    return dense_generate(CONFIG, WEIGHTS, prompt, n)[0]


def fake_step(sched, store):
    """One scheduled step with the model replaced by FakeStore writes; returns it."""
    step = sched.schedule()
    for req, n in zip(step.requests, step.num_new):
        store.write(req, req.num_computed_tokens, req.num_computed_tokens + n)
        req.num_computed_tokens += n
        sched.kv.register_computed(req)
    for req in list(step.requests):
        if req.num_computed_tokens == req.num_tokens:
            req.output_ids.append(7)
            if len(req.output_ids) >= req.params.max_tokens:
                sched.finish(req, "length")
    return step


# -- 1. swapped requests go before waiting ones ------------------------------------------------

def test_a_waiting_request_that_fits_is_not_admitted_while_one_is_swapped_out():
    """Two 4-token prompts fill 4 of 5 two-token pages; the first one's decode takes the
    last page and swaps the second out. Its 3 pages do not fit back yet (2 are free), a
    1-page newcomer would: it still waits, until the swapped request is back."""
    config = EngineConfig(page_size=2, num_pages=5, max_num_batched_tokens=64, max_num_seqs=2,
                          preemption_mode="swap", num_host_pages=8, watermark=0.0,
                          enable_prefix_caching=False)
    store = FakeStore(5, 2, 8)
    kv = KVCacheManager(5, 2, enable_caching=False, num_host_pages=8, store=store)
    sched = Scheduler(config, kv)
    a, b, c = (Request(rid, prompt, SamplingParams(max_tokens=n)) for rid, prompt, n in
               ((0, [1, 2, 3, 4], 3), (1, [5, 6, 7, 8], 3), (2, [9, 9], 1)))
    for req in (a, b, c):
        sched.add(req)
    assert fake_step(sched, store).requests == [a, b]          # c: max_num_seqs
    step = fake_step(sched, store)
    assert step.requests == [a] and step.swapped_out == [b]
    assert kv.swap_in_cost(b, 1) == 3 and kv.pool.num_free == 2 and len(sched.running) == 1
    step = fake_step(sched, store)       # a finishes; c would fit, but b goes first
    assert step.requests == [a] and c.status is Status.WAITING and list(sched.swapped) == [b]
    step = fake_step(sched, store)
    assert step.requests == [b, c] and step.swapped_in == [b]
    while sched.has_unfinished():
        assert fake_step(sched, store).requests, "no progress although requests wait"
    assert kv.pool.num_used == 0 and kv.host.num_used == 0


# -- 2. copy on write with one-token pages -----------------------------------------------------

def test_a_fully_cached_prompt_on_one_token_pages_copies_no_page():
    """With one-token pages the last prompt token's page holds only that token, which is
    computed again: taking the cached page and copying it (on write) was a copy of a slot
    about to be overwritten, and priced two pages (the hit, the copy) instead of one."""
    store = FakeStore(8, 1)
    kv = KVCacheManager(8, 1, store=store)
    first = Request(0, [5, 6, 7], SamplingParams())
    kv.admit(first, [], 0, 3)
    store.write(first, 0, 3)
    first.num_computed_tokens = 3
    kv.register_computed(first)
    pages = list(first.pages)
    kv.free(first)                       # finished: its 3 pages free, still cached
    second = Request(1, [5, 6, 7], SamplingParams())
    hits, computed = kv.cached_prefix(second)
    assert computed == 2 and hits == pages[:2]
    assert kv.admission_cost(hits, computed, 1) == 3, "2 cached pages + 1 fresh one"
    kv.admit(second, hits, computed, 1)
    assert kv.cow_copies == 0 and kv.pool.num_used == 3
    store.write(second, 2, 3)
    second.num_computed_tokens = 3
    assert store.read(second) == [5, 6, 7]
    kv.pool.check_invariants()


def test_a_fully_cached_one_token_prompt_takes_a_fresh_page(model):
    """A 1-token prompt cached on one-token pages: nothing of it is reused (the token is
    computed again), so its page is neither held nor copied; tokens still the dense ones."""
    engine = LLMEngine(model, EngineConfig(page_size=1, num_pages=16))
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    first, = engine.generate([[7]], params)
    again, = engine.generate([[7]], params)
    assert first.output_ids == again.output_ids == dense([7], 3)
    assert engine.kv.cow_copies == 0 and again.num_cached_tokens == 0


# -- 3. a resumed request's re-prefill counts as prefill ---------------------------------------

@pytest.mark.parametrize("caching, chunk, prefill, decode", [
    (True, None, [8, 0, 0, 1, 0], [0, 1, 1, 0, 1]),
    (False, 2, [4, 4, 0, 2, 2, 1, 0], [0, 0, 1, 1, 0, 0, 1])],
    ids=["prefix-hits-leave-one-token", "chunks-of-two-leave-one"])
def test_a_resumed_requests_last_one_token_chunk_counts_as_prefill(model, caching, chunk,
                                                                    prefill, decode):
    """Two 4-token prompts on 5 two-token pages: at the first decode the second is preempted
    (recompute) and comes back with 5 tokens to prefill. With the prefix cache its first 4
    are hits, without it they go in chunks of 2: either way its last chunk is one token,
    which counted as a decode (picked out as "one token, and outputs already")."""
    engine = LLMEngine(model, EngineConfig(page_size=2, num_pages=5, max_num_seqs=2,
                                           enable_prefix_caching=caching,
                                           max_prefill_chunk=chunk))
    prompts = [[11, 12, 13, 14], [21, 22, 23, 24]]
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    outs = engine.generate(prompts, params)
    assert [o.output_ids for o in outs] == [dense(p, 3) for p in prompts]
    assert [o.num_preemptions for o in outs] == [0, 1]
    s = engine.stats.series
    assert (s["prefill_tokens"], s["decode_tokens"]) == (prefill, decode)


# -- 4. a prefix hit compares token ids ------------------------------------------------------------

def test_a_hash_collision_is_a_miss_not_another_prompts_page(model, monkeypatch):
    """Block i of every prompt hashed alike (a forced collision): the second prompt found
    the first prompt's pages under its blocks' hashes and was served their K/V. A cached
    page now keeps its token ids and a hit must match them (nano-vllm's check)."""
    monkeypatch.setattr(kv_manager_module, "hash_block",   # block i of any prompt alike
                        lambda parent, tokens: hash_block(parent, [0] * len(tokens)))
    engine = LLMEngine(model, EngineConfig(page_size=4, num_pages=16))
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [8, 7, 6, 5, 4, 3, 2, 1, 9]]
    outs = [engine.generate([p], params)[0] for p in prompts]
    assert [o.output_ids for o in outs] == [dense(p, 4) for p in prompts]
    assert outs[1].num_cached_tokens == 0
    again, = engine.generate([prompts[0]], params)   # the true owner still hits
    assert again.num_cached_tokens == 8 and again.output_ids == outs[0].output_ids


def test_block_pool_lookup_compares_tokens_and_register_checks_them():
    pool = BlockPool(4)
    page, = pool.allocate(1)
    h = hash_block(None, [1, 2])
    with pytest.raises(TypeError, match="^token_ids: expected a list of token ids"):
        pool.register(page, h, 5)
    assert pool.cached == {} and pool.page_tokens == [None] * 4
    assert pool.register(page, h, [1, 2])
    assert pool.lookup(h, [1, 2]) == page and pool.lookup(h, (1, 2)) == page
    assert pool.lookup(h, [2, 1]) is None
    assert pool.lookup(hash_block(None, [2, 1]), [2, 1]) is None
    pool.free([page])
    pool.allocate(4)                     # evicts it: the tokens go with the hash
    assert pool.page_tokens == [None] * 4
    pool.check_invariants()
