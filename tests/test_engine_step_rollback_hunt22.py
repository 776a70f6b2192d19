"""A step() that raises is undone (Scheduler.rollback): the queues, requests, page counts and
cached hashes are what they were before it, except that requests it preempted stay
preempted and pages it handed out forget the prefix they cached; called again, the engine
serves every request the dense decode's tokens.

Failures are injected before, inside (after a layer's K/V writes) and after the forward,
in the copies (copy on write, swap in/out), in sampling, in the commit of the step
(registering pages, finishing a request, recording the stats) and in the pool itself.
After each: the pool's invariants, ref counts = block tables, every running request's and
every cached page's layer-0 keys recomputed from their tokens, and the state compared with
the one before the step.
"""
import dataclasses

import numpy as np
import pytest

import pagedattn_lab.engine.engine as engine_module
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.dense import dense_generate
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import block_hashes
from pagedattn_lab.engine.request import Request, Status

from .engine_fakes import FakeStore

CONFIG = tiny_config()
WEIGHTS = random_weights(CONFIG, seed=3)
_DENSE = {}


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CONFIG, WEIGHTS, device="cpu")


def dense(prompt, n):
    key = (tuple(prompt), n)
    if key not in _DENSE:
        _DENSE[key] = dense_generate(dataclasses.replace(CONFIG, eos_token_id=None), WEIGHTS,
                                     prompt, n)[0]
    return _DENSE[key]


class Boom(Exception):
    pass


# -- what the engine holds ------------------------------------------------------------------

def layer0_keys(model, tokens, positions):
    """The K a token at a position writes in layer 0: a function of the two only."""
    x = model.embed[np.asarray(tokens)]
    qkv = model.rms_norm(x, model.layers[0]["ln1"]) @ model.layers[0]["qkv"].T
    k = qkv[:, CONFIG.q_size:CONFIG.q_size + CONFIG.kv_size].reshape(
        len(tokens), CONFIG.num_key_value_heads, CONFIG.head_dim)
    pos = np.asarray(positions)
    return model.rope(k, model.cos[pos][:, None, :], model.sin[pos][:, None, :])


def check_engine(engine, token_blocks):
    """Invariants, and every computed token's K (running requests, cached pages) in place.
    token_blocks: block hash -> (block index, its tokens)."""
    kv, sched, pool, model = engine.kv, engine.scheduler, engine.kv.pool, engine.model
    ps = kv.page_size
    pool.check_invariants()
    owners = {}
    for req in sched.running:
        assert req.status is Status.RUNNING and not req.host_pages
        for page in req.pages:
            owners[page] = owners.get(page, 0) + 1
        n = req.num_computed_tokens
        if n:
            pos = np.arange(n)
            got = engine.store.k[0][np.asarray(req.pages)[pos // ps], pos % ps]
            assert np.abs(got - layer0_keys(model, req.tokens(0, n), pos)).max() < 1e-4, \
                f"request {req.rid}: its cached K/V were overwritten"
    assert {p: c for p, c in enumerate(pool.ref_cnt) if c} == owners, "ref counts != owners"
    assert len(owners) + pool.num_free == pool.num_pages
    for block_hash, page in pool.cached.items():
        i, tokens = token_blocks[block_hash]
        got = engine.store.k[0][page]
        want = layer0_keys(model, tokens, np.arange(i * ps, (i + 1) * ps))
        assert np.abs(got - want).max() < 1e-4, f"cached page {page} holds other tokens"
    for req in sched.waiting:
        assert req.status is Status.WAITING and not req.pages and not req.host_pages
        assert req.num_computed_tokens == 0
    for req in sched.swapped:
        assert req.status is Status.SWAPPED and not req.pages
        assert len(req.host_pages) == -(-req.num_computed_tokens // ps)
    if kv.host is not None:
        assert kv.host.num_used == sum(len(r.host_pages) for r in sched.swapped)


def state(engine):
    sched, kv, pool = engine.scheduler, engine.kv, engine.kv.pool
    return dict(
        queues=[[r.rid for r in q] for q in (sched.waiting, sched.running, sched.swapped)],
        requests={r.rid: (r.status, r.num_computed_tokens, list(r.pages), list(r.host_pages),
                          r.num_registered_blocks, r.num_preemptions, r.num_cached_tokens,
                          list(r.output_ids), len(r.logits), len(r.block_hashes))
                  for q in (sched.waiting, sched.running, sched.swapped) for r in q},
        ref_cnt=list(pool.ref_cnt), free_queue=list(pool.free_queue),
        host=None if kv.host is None else (kv.host.free_list(), kv.host.state().owners),
        counters=(kv.query_tokens, kv.hit_tokens, kv.cow_copies, sched.recomputed_tokens,
                  list(sched.finished_output_lens)),
        stats=({k: v for k, v in vars(engine.stats).items() if k != "series"},
               {k: len(v) for k, v in engine.stats.series.items()}),
        hashes=list(pool.page_hash), evictions=pool.evictions)


def check_rolled_back(engine, before):
    """As before the step, but for its victims (still preempted) and forgotten hashes."""
    now = state(engine)
    victims = {r.rid: r for r in getattr(engine.scheduler, "_victims", [])}
    if victims:
        for rid, was in before["requests"].items():
            if rid in victims:
                assert victims[rid].status in (Status.WAITING, Status.SWAPPED)
                assert victims[rid].num_preemptions == was[5] + 1
            else:
                assert now["requests"][rid] == was, f"request {rid} not restored"
        return "victims"
    for key in ("queues", "requests", "ref_cnt", "free_queue", "host", "counters", "stats"):
        assert now[key] == before[key], f"{key} not restored"
    lost = [p for p, (a, b) in enumerate(zip(before["hashes"], now["hashes"])) if a != b]
    assert all(now["hashes"][p] is None for p in lost), "a page cached under a new hash"
    assert now["evictions"] == before["evictions"] + len(lost)
    return "forgot" if lost else "exact"


# -- serving with a failure in steps --------------------------------------------------------

def patch(engine, k_fail):
    """Make the k-th call, in this step, of any of the step's parts raise Boom (a `post`
    part raises after doing its work: the forward, a layer's K/V write). Returns undo."""
    calls, undo = [0], []

    def wrap(owner, name, post=False):
        real = getattr(owner, name)

        def part(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k_fail and not post:
                raise Boom(name)
            out = real(*args, **kwargs)
            if calls[0] == k_fail:
                raise Boom(name)
            return out
        setattr(owner, name, part)
        undo.append((owner, name, real))

    for owner, name, post in (
            (engine.model, "forward", True), (engine.attention, "write_kv", True),
            (engine.attention, "run", False), (engine.attention, "plan", False),
            (engine.store, "copy_page", False), (engine.store, "swap_out", False),
            (engine.store, "swap_in", False), (engine.kv.pool, "allocate", False),
            (engine.kv.pool, "free", False), (engine.kv.pool, "touch", False),
            (engine.kv, "register_computed", False), (engine.scheduler, "finish", False),
            (engine.stats, "record", False), (engine_module, "sample", False)):
        wrap(owner, name, post)

    def restore():
        for owner, name, real in reversed(undo):
            if owner is engine_module:
                setattr(owner, name, real)
            else:
                delattr(owner, name)
    return restore


def step_failing(engine, restore):
    """engine.step() under a planted failure, undone by `restore` either way: the step's
    outputs, or None when it raised Boom."""
    try:
        return engine.step()
    except Boom:
        return None
    finally:
        restore()


def serve(model, config, prompts, params, arrivals, fail_at=None, seen=None):
    """Serve by add_request/step; every step first fails at call `fail_at(step)` (None: it
    does not), is checked, then runs again. Checks the invariants after every step and the
    tokens against the dense decode."""
    engine = LLMEngine(model, EngineConfig(**config))
    token_blocks, reqs, done, step = {}, {}, {}, 0
    pending = sorted(range(len(prompts)), key=lambda i: arrivals[i])

    def note():
        for req in reqs.values():
            tokens = req.tokens(0, req.num_tokens)
            for i, h in enumerate(block_hashes(tokens, config["page_size"])):
                token_blocks[h] = (i, tokens[i * config["page_size"]:][:config["page_size"]])

    while pending or engine.has_unfinished():
        while pending and arrivals[pending[0]] <= step:
            i = pending.pop(0)
            rid = engine.add_request(prompts[i], params[i])
            reqs[rid] = engine.scheduler.waiting[-1]
        note()
        k = fail_at(step) if fail_at else None
        if k is not None:
            before = state(engine)
            outs = step_failing(engine, patch(engine, k))
            if outs is None:
                check_engine(engine, token_blocks)
                kind = check_rolled_back(engine, before)
                if seen is not None:
                    seen[kind] = seen.get(kind, 0) + 1
                outs = engine.step()
        else:
            outs = engine.step()
        for out in outs:
            assert out.rid not in done, "a request finished twice"
            done[out.rid] = out
        note()
        check_engine(engine, token_blocks)
        step += 1
        assert step < 2000, "no end in sight"
    assert engine.kv.pool.num_used == 0
    for rid, req in reqs.items():
        assert done[rid].output_ids == dense(req.prompt_ids, req.params.max_tokens), rid
    return engine


BASE = [int(t) for t in np.random.default_rng(7).integers(0, 128, 24)]
PROMPTS = [BASE[:8], BASE[:8], BASE[:4] + [9, 9], [5], BASE[:13], [3, 1, 4, 1, 5, 9, 2]]
PARAMS = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (5, 8, 4, 1, 7, 9)]
ARRIVALS = [0, 2, 2, 3, 4, 4]   # the prefix cache is warm for the later ones
SWAP = dict(page_size=4, num_pages=7, max_num_batched_tokens=12, max_prefill_chunk=4,
            preemption_mode="swap", num_host_pages=16, watermark=0.0)
RECOMPUTE = dict(page_size=4, num_pages=7, max_num_batched_tokens=5, max_prefill_chunk=3,
                 watermark=0.0)
ROOMY = dict(page_size=4, num_pages=64, max_num_batched_tokens=7, max_prefill_chunk=3)


CONFIGS = {"roomy": ROOMY, "swap": SWAP, "recompute": RECOMPUTE}
FAIL_AT = (1, 2, 3, 5, 8, 13)
_SEEN: dict = {}   # (config, k) -> the kinds of rollback a grid run saw (see the last test)


def serve_failing(model, name, k):
    """The grid's run: every step fails once at call k; notes what its rollbacks restored."""
    seen = {}
    engine = serve(model, CONFIGS[name], PROMPTS, PARAMS, ARRIVALS, lambda step: k, seen)
    _SEEN[name, k] = seen
    return engine, seen


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("k", FAIL_AT)
def test_every_step_fails_once_then_serves_the_dense_tokens(model, name, k):
    """Failing before: a step that raised kept what it had admitted, grown and swapped in
    (state not restored); one that raised after the forward or halfway through its commit
    left requests with their tokens counted as computed but nothing sampled, and the retry
    scheduled them for 0 tokens (IndexError in the forward) or leaked their pages."""
    engine, seen = serve_failing(model, name, k)
    assert sum(seen.values()) > 0
    if name != "roomy":
        summary = engine.summary()
        assert summary["preempted_swap" if name == "swap" else "preempted_recompute"] > 0


def test_the_failures_cover_restores_victims_and_forgotten_prefixes(model):
    """Not vacuous: over the grid, failed steps that preempted and steps that overwrote a
    cached page both occur, besides exact restores. (The grid's runs, in this process, are
    reused; a run not made yet, as under -k, is made here.)"""
    seen = {}
    for name in ("swap", "recompute"):
        for k in FAIL_AT:
            runs = _SEEN[name, k] if (name, k) in _SEEN else serve_failing(model, name, k)[1]
            for kind, count in runs.items():
                seen[kind] = seen.get(kind, 0) + count
    assert seen.get("victims", 0) > 0 and seen.get("forgot", 0) > 0 and seen["exact"] > 0, seen


def fail_after_forward(engine, monkeypatch):
    forward = engine.model.forward

    def wrote_then_failed(*args, **kwargs):
        forward(*args, **kwargs)   # every layer's K/V written
        raise Boom("forward")
    monkeypatch.setattr(engine.model, "forward", wrote_then_failed)


def test_a_step_that_fails_after_its_forward_is_not_counted(model, monkeypatch):
    engine = LLMEngine(model, EngineConfig(page_size=4, num_pages=16))
    engine.add_request([1, 2, 3], SamplingParams(max_tokens=2))
    fail_after_forward(engine, monkeypatch)
    with pytest.raises(Boom, match="forward"):
        engine.step()
    monkeypatch.undo()
    (req,) = engine.scheduler.waiting
    assert (req.pages, req.num_computed_tokens, req.output_ids) == ([], 0, [])
    assert engine.stats.steps == 0 and engine.stats.output_tokens == 0
    assert engine.kv.pool.num_used == 0 and engine.kv.query_tokens == 0
    while engine.has_unfinished():
        done = engine.step()
    assert done[0].output_ids == dense([1, 2, 3], 2) and engine.stats.steps == 2


def test_a_failed_step_forgets_the_cached_prefix_it_overwrote(model, monkeypatch):
    """A step takes a free page that holds a cached prefix for a new prompt and fails after
    the forward wrote into it. Put back with its hash, the page would serve the next request
    with that prefix the new prompt's K/V."""
    engine = LLMEngine(model, EngineConfig(page_size=4, num_pages=4, watermark=0.0))
    prefix = BASE[:8]
    engine.generate([prefix], SamplingParams(max_tokens=1))
    pool = engine.kv.pool
    assert sorted(pool.cached.values()) == [0, 1] and list(pool.free_queue) == [2, 3, 1, 0]
    engine.add_request([7] * 11, SamplingParams(max_tokens=1))   # pages 2, 3 and 1
    fail_after_forward(engine, monkeypatch)
    with pytest.raises(Boom):
        engine.step()
    monkeypatch.undo()
    assert list(pool.cached.values()) == [0] and pool.num_used == 0
    engine.scheduler.drop_unfinished()
    out = engine.generate([prefix + [1]], SamplingParams(max_tokens=3))[0]
    assert out.num_cached_tokens == 4 and out.output_ids == dense(prefix + [1], 3)


@pytest.mark.parametrize("seed", range(4))
def test_random_workloads_with_a_failure_in_every_step(model, seed):
    """Random prompts (shared prefixes, duplicates, one token), arrivals, pools down to the
    smallest accepted, both preemption modes, chunks below a page; each step fails at a
    random one of its calls first."""
    rng = np.random.default_rng(500 + seed)
    ps = int(rng.choice([1, 2, 3, 4, 5]))
    prompts, params = [], []
    for _ in range(int(rng.integers(3, 8))):
        n = max(1, min(20, int(rng.choice([1, ps, ps + 1, 2 * ps, int(rng.integers(1, 20))]))))
        prompts.append(BASE[:n] if rng.random() < 0.6 else rng.integers(0, 128, n).tolist())
        params.append(SamplingParams(max_tokens=int(rng.choice([1, 2, 6])), ignore_eos=True))
    need = max(-(-(len(p) + sp.max_tokens) // ps) + 1 for p, sp in zip(prompts, params))
    config = dict(page_size=ps, num_pages=int(need + rng.integers(0, 3)),
                  max_num_batched_tokens=int(rng.choice([2, 5, 16])),
                  max_prefill_chunk=int(rng.integers(1, 4)), watermark=0.0,
                  preemption_mode=("swap", "recompute")[seed % 2], num_host_pages=40)
    arrivals = sorted(rng.integers(0, 5, len(prompts)).tolist())
    serve(model, config, prompts, params, arrivals, lambda step: int(rng.integers(1, 16)))


# -- KVCacheManager.swap_out: all or nothing ------------------------------------------------

def test_a_swap_out_whose_device_free_fails_gives_back_its_host_pages(monkeypatch):
    """The host copy done, freeing the device pages raised: the request kept its device
    pages AND was handed host pages that nothing would ever give back."""
    kv = KVCacheManager(8, 4, num_host_pages=8, store=FakeStore(8, 4, 8))
    req = Request(0, list(range(10)), SamplingParams())
    req.pages, req.num_computed_tokens = kv.pool.allocate(3), 10

    def fail(pages):
        raise Boom("free")
    monkeypatch.setattr(kv.pool, "free", fail)
    with pytest.raises(Boom):
        kv.swap_out(req)
    monkeypatch.undo()
    assert (req.pages, req.host_pages) == ([0, 1, 2], []) and kv.host.num_free == 8
    kv.swap_out(req)
    assert req.pages == [] and len(req.host_pages) == 3 and kv.pool.num_used == 0


def test_a_step_that_fails_halfway_through_its_commit_can_be_run_again(model, monkeypatch):
    """Failing before: the first request's tokens were counted as computed, the second's
    not, and nothing was sampled; the next step scheduled the first for 0 tokens and its
    forward raised IndexError (an empty batch of rows to sample)."""
    engine = LLMEngine(model, EngineConfig(page_size=4, num_pages=16))
    prompts = [[1, 2, 3], [4, 5]]
    for prompt in prompts:
        engine.add_request(prompt, SamplingParams(max_tokens=3))
    register, calls = engine.kv.register_computed, []

    def second_fails(req):
        calls.append(req)
        if len(calls) == 2:
            raise Boom("register_computed")
        register(req)
    monkeypatch.setattr(engine.kv, "register_computed", second_fails)
    with pytest.raises(Boom):
        engine.step()
    monkeypatch.undo()
    assert [r.num_computed_tokens for r in engine.scheduler.waiting] == [0, 0]
    done = {}
    while engine.has_unfinished():
        done.update((o.rid, o.output_ids) for o in engine.step())
    assert [done[0], done[1]] == [dense(p, 3) for p in prompts]
