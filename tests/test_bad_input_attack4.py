"""Bad input, fourth round: each case here failed before its fix (an error naming no argument,
a silently wrong result, a run that spun without progress, or state changed by a call that
raised)."""
import copy

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import quant
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  load_checkpoint, random_weights, save_checkpoint, tiny_config)
from pagedattn_lab.engine.prefix_cache import BlockPool
from pagedattn_lab.paging import AllocatorState
from tests.test_paging import assert_same_state, cache_state


@pytest.fixture(scope="module")
def model():
    """On the CPU, where the device pages are host memory too (the messages below are the
    CPU's; on a GPU, device and host pages are each checked against their own memory)."""
    config = tiny_config()
    return LlamaModel(config, random_weights(config, seed=0), device="cpu")


def _cache_with_two_sequences():
    cache = pl.PagedKVCache(6, 2, 2, 8, device="cpu")
    rows = np.ones((3, 2, 8), np.float32)
    for _ in range(2):
        cache.append(cache.add_sequence(), rows, rows)
    return cache


# -- id lists: a 0-d array, a set, a mapping ----------------------------------------------------

@pytest.mark.parametrize("ids, match", [
    (np.array(1), r"^seq_ids: expected a list of sequence ids, got array\(1\) \(ndarray\); "
                  r"for one sequence id write \[1\]"),
    ({1, 0}, r"^seq_ids: expected a list of sequence ids in order, got a set"),
    (frozenset([0]), r"^seq_ids: expected a list of sequence ids in order, got a frozenset"),
    ({0: 1}, r"^seq_ids: expected a list of sequence ids in order, got a dict"),
], ids=["0d", "set", "frozenset", "dict"])
def test_id_lists_refuse_a_0d_array_a_set_and_a_mapping(ids, match):
    """A 0-d array failed with NumPy's "iteration over a 0-d array", naming nothing; a set
    was taken in hash order ({1, 0} gave the rows of 0 then 1), a dict as its keys."""
    cache = _cache_with_two_sequences()
    before = cache_state(cache)
    with pytest.raises(TypeError, match=match):
        cache.block_tables(ids)
    with pytest.raises(TypeError, match=match.replace("sequence id", "page id")
                       .replace("seq_ids", "pages")):
        cache.allocator.free(ids)
    assert_same_state(before, cache_state(cache))


def test_a_prompt_given_as_a_set_is_refused(model):
    """{5, 3, 1} was served as the prompt [1, 3, 5]: another prompt, silently."""
    engine = LLMEngine(model, EngineConfig(num_pages=16, page_size=4))
    with pytest.raises(TypeError, match=r"^prompt_ids: expected a list of token ids in order, "
                                        r"got a set"):
        engine.add_request({5, 3, 1})
    with pytest.raises(TypeError, match=r"^prompt_ids: expected a list of token ids, got "
                                        r"array\(7\)"):
        engine.add_request(np.array(7))
    assert not engine.has_unfinished()


@pytest.mark.parametrize("prompts, progress, exc, match", [
    (np.array(5), False, TypeError, r"^prompts: expected a list of prompts .*got ndarray"),
    ({(1, 2), (3, 4)}, False, TypeError, r"^prompts: expected a list of prompts .*got set"),
    ([[1, 2]], "no", TypeError, r"^progress: expected True or False, got 'no'"),
    ([[1, 2]], None, TypeError, r"^progress: expected True or False, got None"),
], ids=["0d", "set", "progress-str", "progress-none"])
def test_generate_refuses_before_queueing(model, prompts, progress, exc, match):
    """A 0-d array failed with NumPy's message; a set of prompts was served in an order the
    caller cannot know (the outputs come back in it); progress="no" showed a bar."""
    engine = LLMEngine(model, EngineConfig(num_pages=16, page_size=4))
    with pytest.raises(exc, match=match):
        engine.generate(prompts, SamplingParams(max_tokens=1), progress=progress)
    assert not engine.has_unfinished()


# -- BlockAllocator.restore --------------------------------------------------------------------

def _states():
    big = pl.BlockAllocator(8)
    big.allocate(6)
    return {
        "another-pool": (big.state(), r"^state: next_fresh 6 is not in 0\.\.4"),
        "duplicate": (AllocatorState(2, (0, 0), {}), r"^state: page 0 is listed twice"),
        "free-and-used": (AllocatorState(2, (1,), {1: 1, 0: 1}), r"^state: page 1 is listed "
                                                                 r"twice"),
        "lost-page": (AllocatorState(3, (0,), {1: 1}), r"^state: 3 pages were handed out but 2"),
        "never-handed-out": (AllocatorState(1, (3,), {}), r"^state: page 3 is not among the 1"),
        "zero-count": (AllocatorState(1, (), {0: 0}), r"^state: a reference count of 0"),
        "float-count": (AllocatorState(1, (), {0: 1.5}), r"^state: a reference count of 1\.5"),
        "negative": (AllocatorState(-1, (), {}), r"^state: next_fresh -1 is not in 0\.\.4"),
    }


@pytest.mark.parametrize("case", list(_states()))
def test_restore_refuses_a_state_the_allocator_cannot_have_been_in(case):
    """Restored as given, a state of a larger pool made num_free negative (-6 pages of 4
    'free'); an edited one handed a page out twice or lost one."""
    state, match = _states()[case]
    alloc = pl.BlockAllocator(4)
    alloc.allocate(2)
    before = copy.deepcopy(alloc.__dict__)
    with pytest.raises(ValueError, match=match):
        alloc.restore(state)
    assert alloc.__dict__ == before
    saved = alloc.state()   # a state of its own is still put back
    alloc.free([0])
    alloc.allocate(3)
    alloc.restore(saved)
    assert alloc.__dict__ == before
    alloc.check_invariants()


# -- PagedKVCache.decode_pages_needed --------------------------------------------------------

def test_decode_pages_needed_names_its_argument_and_refuses_a_sequence_twice():
    """A bare id failed with "'int' object is not iterable"; a sequence listed twice was
    priced twice (2 pages for a step that takes 1)."""
    cache = pl.PagedKVCache(6, 2, 2, 8, device="cpu")
    seq = cache.add_sequence()
    rows = np.ones((2, 2, 8), np.float32)
    cache.append(seq, rows, rows)
    with pytest.raises(TypeError, match=r"^seq_ids: expected a list of sequence ids, got 0 "
                                        r"\(int\); for one sequence id write \[0\]"):
        cache.decode_pages_needed(seq)
    with pytest.raises(ValueError,
                       match=r"^seq_ids\[1\]: sequence 0 appears twice \(entries 0 and 1\)"):
        cache.decode_pages_needed([seq, seq])
    assert cache.decode_pages_needed([seq]) == 1


# -- the engine's BlockPool -------------------------------------------------------------------

def _pool_state(pool):
    return list(pool.ref_cnt), list(pool.free_queue), dict(pool.cached), list(pool.page_hash)


@pytest.mark.parametrize("call, exc, match", [
    (lambda p: p.free([0, 1, 0]), ValueError, r"^pages\[2\]: page 0 is listed 2 times but has "
                                              r"only 1 owner\(s\) \(entries 0 and 2\)$"),
    (lambda p: p.free([1, 3]), ValueError, r"^pages\[1\]: page 3 is already free"),
    (lambda p: p.free([-1]), ValueError, r"^pages\[0\]: page id -1 is not in this pool"),
    (lambda p: p.free([4]), ValueError, r"^pages\[0\]: page id 4 is not in this pool"),
    (lambda p: p.free([1.0]), TypeError, r"^pages\[0\]: expected an integer page id"),
    (lambda p: p.touch([2, -1]), ValueError, r"^pages\[1\]: page id -1 is not in this pool"),
    (lambda p: p.touch([7]), ValueError, r"^pages\[0\]: page id 7 is not in this pool"),
    (lambda p: p.allocate(-1), ValueError, r"^n: expected an int >= 0, got -1"),
    (lambda p: p.allocate(1.0), TypeError, r"^n: expected an int, got 1\.0"),
], ids=["repeated", "free-after-used", "negative", "past-end", "float", "touch-negative",
        "touch-past-end", "allocate-negative", "allocate-float"])
def test_block_pool_refuses_and_changes_nothing(call, exc, match):
    """free([0, 1, 0]) freed pages 0 and 1, then raised on the second 0; free([1, 3]) freed
    1 then raised; page -1 was page 3 (Python's negative index); touch([7]) and allocate(1.0)
    failed with IndexError and range()'s TypeError; allocate(-1) returned []."""
    pool = BlockPool(4)
    pages = pool.allocate(3)
    pool.register(pages[2], b"h", [1])
    pool.free([pages[2]])
    before = _pool_state(pool)
    with pytest.raises(exc, match=match):
        call(pool)
    assert _pool_state(pool) == before
    pool.check_invariants()


# -- transactions: a failed call inside the caller's own transaction ------------------------

class Abort(Exception):
    pass


def test_a_manager_call_that_fails_inside_a_transaction_changes_nothing(monkeypatch):
    """The manager runs each call in a cache.transaction(); inside the caller's own, that
    was a no-op, so a prefill kernel that failed left the new sequence and its pages behind
    when the caller caught the error (the manager promises nothing changed)."""
    import pagedattn_lab.manager as manager_module
    rng = np.random.default_rng(0)
    mgr = pl.PagedAttentionManager(8, 4, 4, 2, 64, device="cpu")
    k = rng.standard_normal((5, 2, 64)).astype(np.float32)
    q = rng.standard_normal((5, 4, 64)).astype(np.float32)
    a = mgr.add_sequence(k, k).seq_id

    def failing_kernel(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(manager_module, "paged_attention_prefill", failing_kernel)
    monkeypatch.setattr(manager_module, "paged_attention_decode", failing_kernel)
    with mgr.cache.transaction():
        before = cache_state(mgr.cache)
        for call in (lambda: mgr.add_sequence(k, k, q),
                     lambda: mgr.decode_step([a], q[:1], k[:1], k[:1])):
            with pytest.raises(RuntimeError, match="kernel failed"):
                call()
            assert_same_state(before, cache_state(mgr.cache))
    mgr.cache.allocator.check_invariants()
    assert mgr.seq_ids == [a] and mgr.seq_len(a) == 5


def test_nested_transactions_are_savepoints():
    """An inner transaction that fails is undone (rows, tables, lengths, pages), what the outer
    did before it stays; the outer one failing later undoes everything, the inner's too."""
    cache = pl.PagedKVCache(6, 2, 1, 2, device="cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    ones, twos = np.ones((3, 1, 2), np.float32), np.full((3, 1, 2), 2, np.float32)
    cache.append(a, ones, ones)
    b_child = cache.fork_sequence(a)
    start = cache_state(cache)
    with pytest.raises(Abort):
        with cache.transaction():
            cache.append(b, twos, twos)
            kept = cache_state(cache)
            with pytest.raises(Abort):
                with cache.transaction():
                    cache.append(b_child, twos[:1], twos[:1])   # copy on write of the tail
                    cache.free_sequence(a)
                    cache.add_sequence()
                    raise Abort
            assert_same_state(kept, cache_state(cache))
            with cache.transaction():   # an inner one that succeeds stays until the outer ends
                cache.append(a, twos[:1], twos[:1])
            assert cache.seq_len(a) == 4
            raise Abort
    assert_same_state(start, cache_state(cache))
    cache.allocator.check_invariants()
    assert cache._undo is None


# -- the engine's KV pool against the machine's memory -----------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(num_pages=300), r"^num_pages: the KV pages of 2 layers \(device and host pages\) "
                          r"would take 1\.2 MiB, more than the 1\.0 MiB of memory this machine "
                          r"has; use fewer pages"),
    (dict(num_pages=64, num_host_pages=256, preemption_mode="swap"),
     r"^num_pages, num_host_pages: the KV pages of 2 layers \(device and host pages\)"),
], ids=["device", "host"])
def test_an_engine_pool_past_the_memory_is_refused(model, monkeypatch, kwargs, match):
    """PagedKVCache refuses a pool past the memory (check_cache_memory); the engine's KVStore
    allocated one array per layer, each fitting alone (lazily, as NumPy's zeros do) and all
    of them past the memory: built without a word, then killed by the out-of-memory killer
    as the pages fill, or at the first swap (host pages are allocated then, mid-step)."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**20)
    with pytest.raises(ValueError, match=match):
        LLMEngine(model, EngineConfig(page_size=8, **kwargs))
    LLMEngine(model, EngineConfig(page_size=8, num_pages=200))   # 800 KiB: fits


# -- quant.quantize ------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scale, match", [
    (np.array([0.0, 1.0]), r"scale\[0\] is 0\.0"),
    (np.array([1.0, -1.0]), r"scale\[1\] is -1\.0"),
    (np.array([np.nan, 1.0]), r"scale\[0\] is nan"),
    (np.array([np.inf, 1.0]), r"scale\[0\] is inf"),
    (np.array([[1.0, 1.0], [1.0, 0.0]]), r"scale\[1, 1\] is 0\.0"),
], ids=["zero", "negative", "nan", "inf", "per-token-zero"])
def test_quantize_refuses_a_scale_that_is_not_finite_and_positive(kv_dtype, scale, match):
    """quantize divided by the scale as given: 0 saturated every code (1.0 became 127, read
    back as 0), a negative scale flipped the signs (read back right, the codes wrong for any
    kernel), NaN and inf gave codes of 0 that read back as NaN."""
    x = np.ones((2, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"^scale: every scale must be finite and > 0; " + match):
        quant.quantize(x, kv_dtype, scale)


def test_a_per_token_cache_still_takes_a_row_holding_inf():
    """Its per-token scale is inf, as the kernel computes it: stored, read back as NaN."""
    cache = pl.PagedKVCache(2, 2, 2, 16, dtype=np.float16, device="cpu", kv_dtype="int8",
                            scale_scheme="per_token")
    seq = cache.add_sequence()
    rows = np.ones((2, 2, 16), np.float32)
    rows[1, 0, 3] = np.inf
    cache.append(seq, rows, rows)
    k, _ = cache.gather(seq)
    assert np.isnan(k[1, 0]).all() and np.allclose(k[0], 1) and np.allclose(k[1, 1], 1)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(seed=2.5), TypeError, r"^seed: expected an int, got 2\.5"),
    (dict(seed=-1), ValueError, r"^seed: expected an int >= 0, got -1"),
    (dict(dtype="int8"), TypeError, r"^dtype: expected a floating-point dtype, got 'int8'"),
    (dict(dtype="garbage"), TypeError, r"^dtype: expected a floating-point dtype, got 'garbage'"),
    (dict(config={"vocab_size": 8}), TypeError, r"^config: expected a ModelConfig, got dict"),
], ids=["seed-float", "seed-negative", "dtype-int8", "dtype-unknown", "config-dict"])
def test_random_weights_refuses(kwargs, exc, match):
    """A float or negative seed failed in NumPy's SeedSequence, naming nothing; int8 truncated
    every weight to -1, 0 or 1 (the norm weights 1 + N(0, 0.01) to 1 or 0); an unknown dtype
    failed with "data type not understood"; a dict failed with AttributeError."""
    kwargs = {"config": tiny_config(), **kwargs}
    with pytest.raises(exc, match=match):
        random_weights(kwargs.pop("config"), **kwargs)


def test_checkpoint_directories_are_named(tmp_path, model):
    """load_checkpoint(5) and save_checkpoint(5, ...) failed in Path() with "expected str,
    bytes or os.PathLike object, not int"."""
    with pytest.raises(TypeError, match=r"^directory: expected a path \(str or os\.PathLike\), "
                                        r"got int"):
        load_checkpoint(5)
    with pytest.raises(TypeError, match=r"^directory: expected a path"):
        save_checkpoint(5, model.config, random_weights(model.config, seed=0))
    save_checkpoint(str(tmp_path / "ck"), model.config, random_weights(model.config, seed=0))
    assert load_checkpoint(tmp_path / "ck")[0] == model.config
