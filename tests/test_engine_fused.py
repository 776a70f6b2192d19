"""The model's fused kernels (`kernels/llama_ops.cu`, `engine/fused.py`) against the array-op
forward they replace.

Each kernel runs on the CPU executor here (and on the GPU under the `gpu` marker) on awkward
sizes: one token, odd token counts, hidden sizes that are not a multiple of the block's 256
threads, fewer elements than a warp. What is exact and what is not:
  - the residual add, RoPE (q, and k/v in their cache slots) and SiLU-times-up in float16:
    bit-exact against `LlamaModel.rope` and the NumPy expression (same ops, each rounded);
  - RMSNorm: bit-exact against a NumPy oracle that sums the squares in the kernel's order
    (each thread's stride, then the butterfly within and across warps). Against NumPy's or
    CuPy's own reductions the sum is in another order: the last bits of the variance differ;
  - float32 SiLU: within 4 ulp (the host's expf against NumPy's float32 exp); on the GPU,
    float16 SiLU within 1 ulp of CuPy's (should CuPy's exp be another than expf);
  - whole forwards (fused against array ops, same weights): greedy tokens identical, logits
    within FP16_LOGIT_TOL / FP32_LOGIT_TOL (the reduction order above, through the layers).
"""
import numpy as np
import pytest

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.fused import LlamaOps

FP16_LOGIT_TOL = 0.02   # relative to the largest |logit|; measured 4.5e-4 (CPU)
FP32_LOGIT_TOL = 1e-4   # absolute, as the dense check; measured ~1.5e-5
DTYPES = (np.float16, np.float32)
CONFIGS = [
    tiny_config(),   # head_dim 16, GQA 4/2
    tiny_config(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                tie_word_embeddings=True),   # MQA, head_dim 64 (the 1B model's)
]


def _model(config, dtype, fused, device="cpu"):
    return LlamaModel(config, random_weights(config, seed=1), dtype=dtype, device=device,
                      fused=fused)


def _xp(device):
    if device == "gpu":
        import cupy  # noqa: PLC0415 - GPU runs only
        return cupy
    return np


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def kernel_order_norm(x, weight, eps, dtype):
    """RMSNorm with the sum of squares in llama_ops.cu's order (256 threads, 8 warps)."""
    v = x.astype(np.float32)
    sq = v * v
    rows, hidden = sq.shape
    part = np.zeros((rows, 256), np.float32)
    for start in range(0, hidden, 256):          # each thread's strided partial sum
        chunk = sq[:, start:start + 256]
        part[:, :chunk.shape[1]] += chunk
    def butterfly(lanes):                        # __shfl_xor_sync over 32 lanes
        for offset in (16, 8, 4, 2, 1):
            lanes = lanes + lanes[..., np.arange(32) ^ offset]
        return lanes[..., 0]
    warp_sums = butterfly(part.reshape(rows, 8, 32))
    total = butterfly(np.concatenate([warp_sums, np.zeros((rows, 24), np.float32)], axis=1))
    var = total[:, None] / np.float32(hidden)
    normed = v / np.sqrt(var + np.float32(eps))
    return weight * normed.astype(dtype)


def _ulps(a, b):
    """Distance in units of the last place (same-sign finite values)."""
    ints = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    return np.abs(a.view(ints).astype(np.int64) - b.view(ints).astype(np.int64))


# -- the kernels, one by one --------------------------------------------------------------

def check_rms_norm(xp, dtype, rows, hidden, residual):
    rng = np.random.default_rng(rows * 1000 + hidden)
    x = (3 * rng.standard_normal((rows, hidden))).astype(dtype)
    delta = rng.standard_normal((rows, hidden)).astype(dtype)
    weight = (1 + 0.1 * rng.standard_normal(hidden)).astype(dtype)
    x_dev = xp.array(x)   # a copy: the add updates it in place
    got_x, got = LlamaOps(dtype).rms_norm(x_dev, xp.asarray(weight), 1e-5,
                                          xp.asarray(delta) if residual else None)
    want_x = x + delta if residual else x
    assert got_x is x_dev, "the residual add must update x in place"
    np.testing.assert_array_equal(_host(got_x), want_x)
    np.testing.assert_array_equal(_host(got), kernel_order_norm(want_x, weight, 1e-5, dtype))


def check_silu_mul(xp, dtype, n, inter, fp16_ulps=0):
    """Against the array-op expression where the arrays live (NumPy: the host's exp; CuPy:
    the device's). fp16_ulps: the float16 tolerance (0 on the CPU, where it is measured)."""
    rng = np.random.default_rng(n * 1000 + inter)
    gate_up = xp.asarray((4 * rng.standard_normal((n, 2 * inter))).astype(dtype))
    gate, up = gate_up[:, :inter], gate_up[:, inter:]
    with np.errstate(over="ignore"):
        want = _host(gate / (1 + xp.exp(-gate)) * up)
    got = _host(LlamaOps(dtype).silu_mul(gate_up))
    if dtype == np.float16 and not fp16_ulps:
        np.testing.assert_array_equal(got, want)
    elif dtype == np.float16:
        finite = np.isfinite(want) & (want != 0)
        assert _ulps(got[finite], want[finite]).max() <= fp16_ulps
        np.testing.assert_array_equal(got[~finite], want[~finite])
    else:
        finite = np.isfinite(want) & (want != 0)
        assert _ulps(got[finite], want[finite]).max() <= 4
        np.testing.assert_array_equal(got[~finite], want[~finite])


def check_rope_qkv(device, dtype, config, n):
    xp = _xp(device)
    model = _model(config, dtype, fused=False, device=device)
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    rng = np.random.default_rng(n)
    qkv = rng.standard_normal((n, (heads + 2 * kv_heads) * d)).astype(dtype)
    positions = rng.integers(0, config.max_position_embeddings, n).astype(np.int64)
    pages, page_size = 4, 5
    slots = rng.permutation(pages * page_size)[:n].astype(np.int64)
    slots[n // 2] = -1   # an already cached token: nothing may be written for it
    k_cache = np.full((pages, page_size, kv_heads, d), np.nan, dtype)
    v_cache = k_cache.copy()
    k_dev, v_dev = xp.asarray(k_cache), xp.asarray(v_cache)
    q = LlamaOps(dtype).rope_qkv(xp.asarray(qkv), xp.asarray(positions), model.cos, model.sin,
                                 xp.asarray(slots), k_dev, v_dev, heads, kv_heads)
    pos = xp.asarray(positions)
    cos = model.cos[pos][:, None, :].astype(dtype)
    sin = model.sin[pos][:, None, :].astype(dtype)
    qkv_dev = xp.asarray(qkv)
    want_q = model.rope(qkv_dev[:, :heads * d].reshape(n, heads, d), cos, sin)
    want_k = model.rope(qkv_dev[:, heads * d:(heads + kv_heads) * d].reshape(n, kv_heads, d),
                        cos, sin)
    want_v = qkv[:, (heads + kv_heads) * d:].reshape(n, kv_heads, d)
    np.testing.assert_array_equal(_host(q), _host(want_q))
    written = slots >= 0
    k_rows = _host(k_dev).reshape(-1, kv_heads, d)
    v_rows = _host(v_dev).reshape(-1, kv_heads, d)
    np.testing.assert_array_equal(k_rows[slots[written]], _host(want_k)[written])
    np.testing.assert_array_equal(v_rows[slots[written]], want_v[written])
    untouched = np.setdiff1d(np.arange(pages * page_size), slots[written])
    assert np.isnan(k_rows[untouched]).all() and np.isnan(v_rows[untouched]).all(), \
        "a slot that no token writes (or a skipped token's) changed"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, hidden", [(1, 64), (3, 300), (2, 24), (5, 2048)])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm(dtype, rows, hidden, residual):
    check_rms_norm(np, dtype, rows, hidden, residual)


def test_kernel_order_oracle_is_not_numpys_mean():
    """The oracle's summation order matters: against NumPy's own mean some bits differ (so
    the exact checks above compare like with like, and could fail on a reordered sum)."""
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((64, 300))).astype(np.float32)
    w = np.ones(300, np.float32)
    model_way = w * (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(1e-5)))
    assert not np.array_equal(kernel_order_norm(x, w, 1e-5, np.float32), model_way)
    assert np.allclose(kernel_order_norm(x, w, 1e-5, np.float32), model_way, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, inter", [(1, 5), (3, 200), (7, 33)])
def test_silu_mul(dtype, n, inter):
    check_silu_mul(np, dtype, n, inter)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=["gqa16", "mqa64"])
@pytest.mark.parametrize("n", [1, 7])
def test_rope_qkv(dtype, config, n):
    check_rope_qkv("cpu", dtype, config, n)


def test_bad_arguments_are_refused():
    ops = LlamaOps(np.float16)
    x = np.zeros((2, 8), np.float16)
    with pytest.raises(TypeError, match="x: expected a 2-d float16"):
        ops.rms_norm(x.astype(np.float32), np.ones(8, np.float16), 1e-5)
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        ops.rms_norm(x, np.ones(7, np.float16), 1e-5)
    with pytest.raises(ValueError, match="gate_up: expected an even number"):
        ops.silu_mul(np.zeros((2, 7), np.float16))
    with pytest.raises(TypeError, match="fused: expected True, False or None"):
        _model(tiny_config(), np.float32, fused="yes")


# -- whole forwards: fused against array ops ---------------------------------------------

def compare_engines(device, dtype, config, max_tokens=8):
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (1, 3, 8, 17, 30)]
    outs = {}
    for fused in (False, True):
        # a budget of 20 tokens: prompts chunked, decodes and prefills in the same steps
        engine = LLMEngine(_model(config, dtype, fused, device),
                           EngineConfig(num_pages=64, page_size=5, max_num_batched_tokens=20))
        outs[fused] = engine.generate(prompts, SamplingParams(max_tokens=max_tokens,
                                                              return_logits=True))
    for plain, fused in zip(outs[False], outs[True]):
        assert fused.output_ids == plain.output_ids, f"prompt of {len(plain.prompt_ids)} tokens"
        diff = np.abs(fused.logits - plain.logits).max()
        if dtype == np.float16:
            assert diff <= FP16_LOGIT_TOL * np.abs(plain.logits).max()
        else:
            assert diff <= FP32_LOGIT_TOL


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=["gqa16", "mqa64"])
def test_fused_forward_matches_array_ops(dtype, config):
    compare_engines("cpu", dtype, config)


def test_fused_is_the_gpu_default_only():
    assert _model(tiny_config(), np.float32, fused=None).fused is False
    assert _model(tiny_config(), np.float32, fused=True).ops is not None


# -- the same on the GPU (NVRTC's build of the kernels, CuPy's array ops) --------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_on_gpu(dtype):
    import cupy  # noqa: PLC0415
    for rows, hidden in [(1, 64), (3, 300), (5, 2048)]:
        for residual in (False, True):
            check_rms_norm(cupy, dtype, rows, hidden, residual)
    for n, inter in [(1, 5), (7, 33), (64, 8192)]:
        check_silu_mul(cupy, dtype, n, inter, fp16_ulps=1)   # CuPy's exp may not be expf
    for config in CONFIGS:
        for n in (1, 7):
            check_rope_qkv("gpu", dtype, config, n)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS + [
    tiny_config(hidden_size=2048, intermediate_size=1024, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, num_hidden_layers=2, vocab_size=512)],
    ids=["gqa16", "mqa64", "1b-width"])
def test_fused_forward_matches_array_ops_on_gpu(dtype, config):
    compare_engines("gpu", dtype, config)


def test_compressed_cache_takes_the_array_op_forward():
    """An int8 cache's write quantizes, which the fused RoPE kernel does not: a fused model
    serves it through the array-op forward, with the same tokens and logits."""
    config = tiny_config()
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (4, 13)]
    outs = []
    for fused in (False, True):
        engine = LLMEngine(_model(config, np.float32, fused),
                           EngineConfig(num_pages=32, page_size=8, kv_dtype="int8"))
        outs.append(engine.generate(prompts, SamplingParams(max_tokens=4, return_logits=True)))
    for plain, fused in zip(*outs):
        assert fused.output_ids == plain.output_ids
        np.testing.assert_array_equal(fused.logits, plain.logits)
