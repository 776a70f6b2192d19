"""Bad input, third round: each case here failed before its fix (a deep NumPy error, an error
naming no argument or the wrong one, a silently wrong result, or state changed by a call that
raised)."""

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import cache as cache_module
from pagedattn_lab import quant
from pagedattn_lab.cache_write_quant import write_kv_quant
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from tests.test_paging import assert_same_state, cache_state


def no_memory(*args):
    raise MemoryError("the conversion's copy")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_append_whose_conversion_raises_changes_nothing(dtype, monkeypatch):
    """Rows whose conversion to the cache's dtype raises (out of memory, an interrupt): the
    pages were taken and the table grown before the write raised, so the sequence kept
    pages past its length (and the next append asked the allocator for -1 pages). (Rows
    past the dtype's range do not raise: they are stored as inf.)"""
    cache = pl.PagedKVCache(4, 4, 2, 8, dtype=dtype, device="cpu")
    seq = cache.add_sequence()
    ok = np.ones((3, 2, 8), np.float32)
    cache.append(seq, ok, ok)
    before = cache_state(cache)
    with monkeypatch.context() as patched:
        patched.setattr(cache_module, "to_elements", no_memory)
        with pytest.raises(MemoryError):
            cache.append(seq, ok, ok)
    assert_same_state(before, cache_state(cache))
    cache.append(seq, ok[:1], ok[:1])   # still usable
    assert cache.seq_len(seq) == 4 and cache.block_table(seq) == [0]


@pytest.mark.parametrize("call", ["to_csr", "from_csr", "slot_mapping"])
@pytest.mark.parametrize("page_size", [2**31, 2**62, 2**63])
def test_page_size_past_int32_is_refused_by_name(call, page_size):
    """2**63 failed with NumPy's OverflowError; 2**62 in slot_mapping returned a wrapped,
    negative slot for page 2."""
    tables, lens = np.array([[0, 1], [2, 3]], np.int32), np.array([5, 8], np.int32)
    calls = {
        "to_csr": lambda: pl.to_csr(tables, lens, page_size),
        "from_csr": lambda: pl.from_csr(*pl.to_csr(tables, lens, 4), page_size),
        "slot_mapping": lambda: pl.slot_mapping(tables, lens, np.array([1, 1], np.int32),
                                                page_size),
    }
    with pytest.raises(ValueError, match=r"^page_size: expected an int <= 2147483647"):
        calls[call]()


@pytest.mark.parametrize("shape", [(4, 4, 0, 16), (4, 4, 2, 0), (0, 4, 2, 16), (4, 0, 2, 16)])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_write_kv_quant_refuses_a_cache_with_a_zero_dimension(shape, scheme):
    """num_kv_heads 0 reached the launch ('block: every dimension must be at least 1');
    the others were accepted, unlike write_kv."""
    pages, page_size, heads, dim = shape
    k_cache, v_cache = np.zeros(shape, np.int8), np.zeros(shape, np.int8)
    scale_shape = (heads,) if scheme == "static" else (pages, page_size, heads)
    scales = [np.ones(scale_shape, np.float32) for _ in range(2)]
    n = 1 if pages * page_size else 0
    rows = np.ones((n, heads, dim), np.float32)
    with pytest.raises(ValueError, match=r"^k_cache: expected shape \[num_pages, page_size, "
                                         r"num_kv_heads, head_dim\] with every size >= 1"):
        write_kv_quant(rows, rows.copy(), k_cache, v_cache, np.arange(n, dtype=np.int64),
                       "int8", scheme, k_scale=scales[0], v_scale=scales[1])


@pytest.mark.parametrize("call", ["quantize", "dequantize"])
@pytest.mark.parametrize("scale_shape", [(3,), (2, 3), (8,), (4, 1)])
def test_quantize_refuses_a_scale_of_another_shape(call, scale_shape):
    """(3,) and (2, 3) failed in NumPy's broadcasting; (8,) (head_dim, not heads) and
    (4, 1) broadcast silently over the wrong axis."""
    x = np.ones((4, 2, 8), np.float32)
    scale = np.ones(scale_shape, np.float32)
    with pytest.raises(ValueError, match=r"^scale: expected shape \(2,\) \(static"):
        if call == "quantize":
            quant.quantize(x, "int8", scale)
        else:
            quant.dequantize(x.astype(np.int8), "int8", scale)
    x = np.random.default_rng(0).standard_normal((4, 2, 8)).astype(np.float32)
    for scale in (quant.static_scales(x, "int8"), quant.per_token_scales(x, "int8")):
        back = quant.dequantize(quant.quantize(x, "int8", scale), "int8", scale)
        assert np.abs(back - x).max() < 0.05


@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    return LlamaModel(config, random_weights(config, seed=0))


@pytest.mark.parametrize("temperature", [1e-320, 5e-324])
def test_a_tiny_temperature_samples_the_greedy_token(model, temperature):
    """logits / 1e-320 overflows to inf, inf - inf is NaN, and the NaN cdf picked the last
    token of the vocabulary at every step."""
    def run(t):
        engine = LLMEngine(model, EngineConfig(num_pages=64, page_size=8))
        return engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=t))[0]
    assert run(temperature).output_ids == run(0.0).output_ids


@pytest.mark.parametrize("temperature", [np.float32(0.5), np.float16(2), np.int64(1)])
def test_numpy_scalar_temperatures_are_taken(temperature):
    assert SamplingParams(temperature=temperature).temperature == temperature


def test_a_temperature_past_float64_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^temperature: expected a finite number"):
        SamplingParams(temperature=10**400)


@pytest.mark.parametrize("kv_scales, match", [
    (None, r"^kv_scales: static scales need \(k_scales, v_scales\)"),
    (3, r"^kv_scales: static scales need \(k_scales, v_scales\).*got int"),
    ((np.ones(2, np.float32), np.ones((2, 2), np.float32)), r"^kv_scales\[0\]: expected shape"),
], ids=["none", "int", "shape"])
def test_engine_names_its_kv_scales_argument(model, kv_scales, match):
    """The errors named KVStore's `static_scales`, which LLMEngine has no argument of; an
    int failed with "object of type 'int' has no len()"."""
    config = EngineConfig(num_pages=64, page_size=8, kv_dtype="int8", kv_scale_scheme="static")
    with pytest.raises(ValueError, match=match):
        LLMEngine(model, config, kv_scales=kv_scales)


def test_decode_step_over_forked_sequences_takes_the_pages_it_needs():
    """Three sequences sharing a partly filled page need two copies, not three: the last one
    left on the page owns it alone. The manager summed pages_needed per sequence and refused
    the step with OutOfPagesError although it fit."""
    rng = np.random.default_rng(0)
    mgr = pl.PagedAttentionManager(3, 4, 4, 2, 64, device="cpu")
    k = rng.standard_normal((3, 2, 64)).astype(np.float32)
    q = rng.standard_normal((3, 4, 64)).astype(np.float32)
    a = mgr.add_sequence(k[:2], k[:2]).seq_id
    b, c = mgr.cache.fork_sequence(a), mgr.cache.fork_sequence(a)
    out = mgr.decode_step([a, b, c], q, k, k)
    assert out.shape == (3, 4, 64)
    assert sorted(mgr.cache.block_table(s)[0] for s in (a, b, c)) == [0, 1, 2]
    assert [mgr.seq_len(s) for s in (a, b, c)] == [3, 3, 3]
    mgr.cache.allocator.check_invariants()
    for i, s in enumerate((a, b, c)):   # each holds the prefix and its own new token
        np.testing.assert_array_equal(mgr.cache.gather(s)[0], np.concatenate([k[:2], k[i:i + 1]]))
    before = cache_state(mgr.cache)   # what really does not fit is still refused
    with pytest.raises(pl.OutOfPagesError):
        mgr.add_sequence(k, k)
    assert_same_state(before, cache_state(mgr.cache))
