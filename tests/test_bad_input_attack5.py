"""Bad input and failures halfway, fifth round: each case here failed before its fix (an error
naming no argument, a silently wrong value, or state left changed by a call that raised)."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import quant
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)


# -- from_csr: a padded table far larger than the CSR arrays ------------------------------------

def test_from_csr_refuses_a_padded_table_past_the_memory(monkeypatch):
    """One long sequence among many empty ones: the CSR arrays are small, the padded table
    [batch, longest] is not (2^17 x 2^17 pages: 64 GiB, NumPy's MemoryError naming nothing;
    just under the memory, the process was killed as the table was filled with -1)."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**20)
    n = 1024   # 1024 x 1024 int32 entries: 4 MiB, past the 1 MiB said to be there
    indptr = np.zeros(n + 1, np.int32)
    indptr[-1] = n
    last = np.zeros(n, np.int32)
    last[-1] = 1
    with pytest.raises(ValueError, match=r"indptr: the padded block tables \(1024 sequences "
                                         r"x 1024 pages"):
        pl.from_csr(indptr, np.arange(n, dtype=np.int32), last, 1)
    # a table that fits converts as before
    tables, lens = pl.from_csr(indptr[-3:] - indptr[-3], np.arange(n, dtype=np.int32),
                               last[-2:], 1)
    assert tables.shape == (2, n) and lens.tolist() == [0, n]


# -- quant.py: values that are not real numbers --------------------------------------------------

X = np.ones((2, 3, 4), np.float32)
S = np.ones(3, np.float32)


@pytest.mark.parametrize("call, name", [
    (lambda: quant.quantize(X + 1j, "int8", S), "x"),                 # imaginary part dropped
    (lambda: quant.quantize(X.astype(bool), "int8", S), "x"),         # True read as 1
    (lambda: quant.quantize(X.astype(str), "int8", S), "x"),          # NumPy's message
    (lambda: quant.quantize(X, "int8", ["a", "b", "c"]), "scale"),
    (lambda: quant.per_token_scales(X + 1j, "fp8_e4m3"), "x"),
    (lambda: quant.static_scales(X.astype(object), "int8"), "x"),
    (lambda: quant.encode(X + 1j, "int8"), "x"),
    (lambda: quant.dequantize(np.ones((2, 3, 4), np.int8), "int8", S + 0j), "scale"),
])
def test_quant_refuses_values_that_are_not_real_numbers(call, name):
    with pytest.raises(TypeError, match=rf"^{name}: expected real numbers"):
        call()


def test_quant_still_takes_lists_ints_and_bfloat16():
    import ml_dtypes
    codes = quant.quantize(X.tolist(), "int8", [1, 1, 1])
    assert np.array_equal(codes, quant.quantize(X.astype(ml_dtypes.bfloat16), "int8", S))
    assert np.array_equal(codes, quant.quantize(X.astype(np.int32), "int8", S))


# -- LLMEngine.generate: a failure halfway leaves no request queued ------------------------------

@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    return LlamaModel(config, random_weights(config, seed=0), device="cpu")


def _engine(model):
    return LLMEngine(model, EngineConfig(num_pages=64, page_size=8))


PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [4, 5, 6]]


@pytest.mark.parametrize("fail_at", [1, 3])   # the first step (admissions), a decode step
def test_generate_interrupted_halfway_leaves_no_request_holding_pages(model, monkeypatch,
                                                                      fail_at):
    """generate() raised (a kernel error, KeyboardInterrupt in a notebook) with its
    requests still queued and holding pages; the next generate() then refused to start,
    blaming add_request."""
    params = SamplingParams(max_tokens=6)
    expected = [o.output_ids for o in _engine(model).generate(PROMPTS, params)]
    engine = _engine(model)
    forward, calls = model.forward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        engine.generate(PROMPTS, params)
    monkeypatch.undo()
    assert not engine.has_unfinished()
    assert engine.kv.pool.num_used == 0
    assert engine.stats.prompt_tokens == 0
    engine.kv.pool.check_invariants()
    assert [o.output_ids for o in engine.generate(PROMPTS, params)] == expected


def test_generate_with_a_progress_bar_it_cannot_show_queues_nothing(model, monkeypatch):
    """progress=True without tqdm: the ImportError came after the prompts were queued."""
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    engine = _engine(model)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with pytest.raises(ImportError):
        engine.generate(PROMPTS, SamplingParams(max_tokens=2), progress=True)
    monkeypatch.undo()
    assert not engine.has_unfinished()


def test_generate_interrupted_while_requests_are_swapped_gives_back_host_pages(model,
                                                                              monkeypatch):
    engine = LLMEngine(model, EngineConfig(num_pages=6, page_size=4, num_host_pages=16,
                                           preemption_mode="swap", max_num_batched_tokens=64))
    prompts = [[1 + i, 2, 3, 4, 5, 6, 7] for i in range(3)]
    forward = model.forward

    def fail_once_swapped(*args, **kwargs):
        if engine.scheduler.swapped:
            raise RuntimeError("kernel failed")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fail_once_swapped)
    with pytest.raises(RuntimeError, match="kernel failed"):
        engine.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    monkeypatch.undo()
    assert not engine.has_unfinished()
    assert engine.kv.pool.num_used == 0 and engine.kv.host.num_free == 16


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("copy", ["swap_out", "swap_in"])
def test_generate_interrupted_in_a_swap_copy_gives_back_every_page(model, monkeypatch, copy):
    """The scheduler took the request out of `running` (swap out) or `swapped` (swap in)
    before the copy: when the copy failed, the request was in no queue, so generate's
    roll-back never found it and its device (or host) pages leaked."""
    engine = LLMEngine(model, EngineConfig(num_pages=6, page_size=4, num_host_pages=16,
                                           preemption_mode="swap", max_num_batched_tokens=64))
    monkeypatch.setattr(engine.store, copy, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine.generate([[1 + i, 2, 3, 4, 5, 6, 7] for i in range(3)],
                        SamplingParams(max_tokens=12, ignore_eos=True))
    assert not engine.has_unfinished()
    engine.kv.pool.check_invariants()
    assert engine.kv.pool.num_used == 0 and engine.kv.host.num_free == 16


def test_generate_interrupted_in_a_copy_on_write_gives_back_every_page(model, monkeypatch):
    """A prompt that is wholly a cached prefix copies its last page at admission: when that
    copy failed, the fresh page and the prefix hits it had taken leaked (the request had
    already left the waiting queue)."""
    engine = LLMEngine(model, EngineConfig(num_pages=16, page_size=4))
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    expected = engine.generate([prompt], SamplingParams(max_tokens=2))[0].output_ids
    monkeypatch.setattr(engine.store, "copy_page", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine.generate([prompt], SamplingParams(max_tokens=2))
    monkeypatch.undo()
    assert not engine.has_unfinished()
    engine.kv.pool.check_invariants()
    assert engine.kv.pool.num_used == 0
    assert engine.generate([prompt], SamplingParams(max_tokens=2))[0].output_ids == expected



def test_a_step_whose_admission_copy_fails_leaves_the_request_waiting_as_it_was(model,
                                                                                monkeypatch):
    """step() itself (not generate): the request stays first in the queue, holding no page,
    with none of its tokens counted as computed or looked up."""
    engine = LLMEngine(model, EngineConfig(num_pages=16, page_size=4))
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    engine.generate([prompt], SamplingParams(max_tokens=2))
    kv = engine.kv
    before = (kv.query_tokens, kv.hit_tokens, kv.pool.num_used)
    engine.add_request(prompt, SamplingParams(max_tokens=2))
    monkeypatch.setattr(engine.store, "copy_page", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    monkeypatch.undo()
    (req,) = engine.scheduler.waiting
    assert (req.pages, req.num_computed_tokens) == ([], 0)
    assert (kv.query_tokens, kv.hit_tokens, kv.pool.num_used) == before
    kv.pool.check_invariants()
    while engine.has_unfinished():
        engine.step()


# -- sim.compare_policies: every name checked before the first (seconds long) simulation -------

@pytest.mark.parametrize("policies, match", [
    (["paged", "reserve_max", "bogus"], r"policies\[2\]: expected one of"),
    (["paged", ["paged"]], r"policies\[1\]: expected one of"),
    (["paged", "reserve_pow2", "paged"], r"policies\[2\]: 'paged' is listed twice"),
])
def test_compare_policies_checks_every_name_before_simulating(monkeypatch, policies, match):
    from pagedattn_lab import sim
    monkeypatch.setattr(sim, "simulate", lambda *a, **k: pytest.fail("simulated first"))
    with pytest.raises(ValueError, match=match):
        sim.compare_policies(sim.Workload(num_requests=4), policies)


@pytest.mark.parametrize("kwargs, error, match", [
    # 2048 slots hold one page of 2000 tokens: too few for max_len, which only paged refuses
    ({"capacity_tokens": 2048, "page_size": 2000}, ValueError, r"^page_size: 2048 slots hold 1"),
    ({"watermark": 0.98}, ValueError, r"^watermark: 0.98 of 2048 pages"),
    ({"page_sise": 16}, TypeError, r"page_sise"),   # a misspelt keyword
])
def test_compare_policies_checks_every_setting_before_simulating(monkeypatch, kwargs, error,
                                                                 match):
    """Settings only the paged policy refuses were refused after the others had run."""
    from pagedattn_lab import sim
    real, runs = sim.simulate, []
    monkeypatch.setattr(sim, "simulate", lambda *a, **k: runs.append(a) or real(*a, **k))
    with pytest.raises(error, match=match):
        sim.compare_policies(sim.Workload(num_requests=4), ["reserve_max", "paged"], **kwargs)
    assert runs == []


# -- the engine's BlockPool: page ids of register / is_shared_or_cached, its size -----------------

@pytest.mark.parametrize("num_pages, error", [(-3, ValueError), (0, ValueError),
                                              (2.5, TypeError), (True, TypeError)])
def test_block_pool_refuses_a_size_that_is_not_a_positive_int(num_pages, error):
    """-3 made a pool with num_used -3, True a pool of one page, 2.5 a TypeError
    naming nothing."""
    from pagedattn_lab.engine.prefix_cache import BlockPool
    with pytest.raises(error, match="^num_pages: expected an int"):
        BlockPool(num_pages)


@pytest.mark.parametrize("page", [-1, 4])
def test_block_pool_register_refuses_a_page_outside_the_pool(page):
    """register(-1, h) cached the last page under the id -1, which lookup() then handed to a
    request as its page; is_shared_or_cached(-1) answered for the last page."""
    from pagedattn_lab.engine.prefix_cache import BlockPool
    pool = BlockPool(4)
    with pytest.raises(ValueError, match=rf"^page: page id {page} is not in this pool"):
        pool.register(page, b"h", [1])
    with pytest.raises(ValueError, match=rf"^page: page id {page} is not in this pool"):
        pool.is_shared_or_cached(page)
    assert pool.cached == {} and pool.page_hash == [None] * 4
    with pytest.raises(TypeError, match="^block_hash: expected the bytes"):
        pool.register(0, "h", [1])
    assert pool.cached == {}


# -- KVCacheManager's swaps: a copy that fails leaves the pages where they were -----------------

class _FailingStore:
    def swap_out(self, pages, host_pages):
        raise KeyboardInterrupt

    swap_in = swap_out


def test_a_swap_whose_copy_fails_leaves_every_page_where_it_was():
    """The host pages (swap out) or device pages (swap in) taken before the copy leaked."""
    from pagedattn_lab.engine.kv_manager import KVCacheManager
    from pagedattn_lab.engine.request import Request
    kv = KVCacheManager(8, 4, num_host_pages=8, store=_FailingStore())
    req = Request(0, list(range(10)), SamplingParams())
    req.pages, req.num_computed_tokens = kv.pool.allocate(3), 10
    with pytest.raises(KeyboardInterrupt):
        kv.swap_out(req)
    assert (req.pages, req.host_pages) == ([0, 1, 2], []) and kv.host.num_free == 8
    assert kv.pool.num_used == 3
    kv.store = None   # bookkeeping only: out goes through; then the copy back fails
    kv.swap_out(req)
    kv.store = _FailingStore()
    with pytest.raises(KeyboardInterrupt):
        kv.swap_in(req)
    assert req.pages == [] and len(req.host_pages) == 3 and kv.host.num_free == 5
    assert kv.pool.num_used == 0
    kv.pool.check_invariants()
