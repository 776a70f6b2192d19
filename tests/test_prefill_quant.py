"""BatchPrefillWrapper over compressed (int8 / fp8 e4m3) pages, on the CPU executor.

Two bounds, both stated here:
1. Against the float64 reference on the DEQUANTIZED cache (code * scale), the kernel is an
   fp16 kernel: code * scale is rounded to fp16 once as it is staged, like an fp16 cache, so
   the fp16 path's tolerance holds: ||out - ref|| / ||ref|| < 2e-3.
2. Against the reference on the ORIGINAL (unquantized) cache, the error is the format's:
   per element |dK| <= e(K), |dV| <= e(V) with e = scale / 2 (int8: half a step) or
   |x| 2^-4 + scale 2^-10 (e4m3: half an ulp of a 3-bit mantissa, or half the subnormal
   step). A logit moves by at most delta = softmax_scale * sum_d |q_d| e(K)_d, so every
   softmax weight moves by a factor within exp(+-2 delta) and, per output element,
   |d out| <= max_j e(V)_j + (exp(2 delta) - 1) max_j |V_j| (`attention_error_bound`).
"""
import numpy as np
import pytest

from pagedattn_lab import quant
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.reference import reference_prefill_packed
from tests.test_prefill_wrapper import packed_problem, rel_err

FP16_TOL = 2e-3


def quantize_cache(cache, kv_dtype, scheme, live):
    """(codes, scales, dequantized float64 cache) of a float32 cache; `live` marks the slots
    sequences own (static scales are calibrated on those; NaN elsewhere stays as the codes
    the format gives it)."""
    heads = cache.shape[2]
    if scheme == "static":
        scales = quant.static_scales(cache[live], kv_dtype)
        per_slot = np.broadcast_to(scales, cache.shape[:3])
    else:
        scales = quant.per_token_scales(cache, kv_dtype)
        per_slot = scales
    codes = quant.quantize(cache, kv_dtype, per_slot)
    deq = quant.dequantize(codes, kv_dtype, per_slot).astype(np.float64)
    assert scales.shape in ((heads,), cache.shape[:3])
    return codes, scales, deq, per_slot


def element_bound(x, per_slot, kv_dtype):
    s = np.asarray(per_slot, np.float64)[..., None]
    if kv_dtype == "int8":
        return np.broadcast_to(s / 2, x.shape)
    return np.abs(x) * 2.0 ** -4 + s * 2.0 ** -10


def attention_error_bound(q, k, v, ek, ev, indptr, tables, lens, page_size):
    """Per output element bound of the module docstring, for causal packed queries."""
    num_heads, dim = q.shape[1:]
    group = num_heads // k.shape[2]
    out = np.zeros(q.shape)
    sm = 1 / np.sqrt(dim)
    for b in range(len(lens)):
        n, q_len = int(lens[b]), int(indptr[b + 1] - indptr[b])
        slots = [tables[b, t // page_size] * page_size + t % page_size for t in range(n)]
        flat = lambda a: a.reshape(-1, *a.shape[2:])[slots]  # noqa: E731
        K_e, V, V_e = flat(ek), flat(v), flat(ev)
        for i in range(q_len):
            seen = n - q_len + i + 1
            for h in range(num_heads):
                kv = h // group
                delta = sm * (np.abs(q[indptr[b] + i, h]) @ K_e[:seen, kv].T).max()
                out[indptr[b] + i, h] = (V_e[:seen, kv].max(0) + np.expm1(2 * delta)
                                         * np.abs(V[:seen, kv]).max(0))
    return out


CASES = [
    # lens, q_lens, page, heads, kv heads, head_dim
    ([70, 9], [70, 9], 16, 2, 1, 32),        # all-new prompts, more than one K/V tile
    ([40, 23], [5, 1], 7, 4, 2, 64),         # a chunk over a prefix and a decode token
]


def check_quantized(xp, rng, case, kv_dtype, scheme, outliers):
    lens, q_lens, page_size, num_heads, num_kv_heads, head_dim = case
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, page_size, num_heads,
                                                       num_kv_heads, head_dim, np.float32)
    if outliers:   # a few key channels 20x larger, as real keys have
        k[..., rng.choice(head_dim, 3, replace=False)] *= 20
    live = ~np.isnan(k[..., 0, 0])
    q16 = q.astype(np.float16)
    (kc, ks, kd, kps), (vc, vs, vd, vps) = (quantize_cache(c, kv_dtype, scheme, live)
                                            for c in (k, v))
    dev = xp.asarray
    w = BatchPrefillWrapper().plan(dev(indptr), dev(tables), dev(seq_lens), num_heads,
                                   num_kv_heads, head_dim, page_size, np.float16,
                                   kv_dtype=kv_dtype, scale_scheme=scheme)
    out = xp.full(q.shape, np.nan, np.float16)
    w.run(dev(q16), dev(kc), dev(vc), out=out, k_scale=dev(ks), v_scale=dev(vs))
    got = (out.get() if xp is not np else out).astype(np.float64)
    assert np.isfinite(got).all(), "an output was not written, or a NaN slot leaked in"
    ref_deq = reference_prefill_packed(q16, kd, vd, indptr, tables, seq_lens)
    assert rel_err(got, ref_deq) < FP16_TOL, f"vs dequantized: {rel_err(got, ref_deq):.2e}"
    ref = reference_prefill_packed(q16, k, v, indptr, tables, seq_lens)
    k0, v0 = np.nan_to_num(k), np.nan_to_num(v)
    bound = attention_error_bound(q16.astype(np.float64), k0, v0,
                                  element_bound(k0, kps, kv_dtype),
                                  element_bound(v0, vps, kv_dtype), indptr, tables, seq_lens,
                                  page_size)
    slack = FP16_TOL * np.abs(ref).max()
    assert np.all(np.abs(got - ref) <= bound + slack), "error beyond the format's bound"
    assert rel_err(got, ref) > 1e-5   # the cache really was quantized


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("outliers", [False, True])
def test_prefill_on_compressed_pages(rng, kv_dtype, scheme, case, outliers):
    check_quantized(np, rng, case, kv_dtype, scheme, outliers)


GPU_CASES = [
    ([2048, 1, 77] + [300] * 5, [2048, 1, 77] + [1] * 5, 16, 32, 8, 128),   # mixed, GQA 32/8
    ([129, 65, 1], [129, 65, 1], 1, 16, 1, 96),                            # MQA, page 1
    ([500, 257], [300, 257], 256, 8, 2, 256),
    ([1000] * 4, [1] * 4, 16, 64, 64, 64),                                 # decode, D64 MHA
]


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("case", GPU_CASES)
def test_prefill_on_compressed_pages_on_the_gpu(rng, kv_dtype, scheme, case):
    import cupy
    check_quantized(cupy, rng, case, kv_dtype, scheme, outliers=True)


def test_forgetting_a_scale_is_caught(rng):
    """The tests can see a missing scale: v_scale of ones instead of the real ones."""
    lens, q_lens, page_size, num_heads, num_kv_heads, head_dim = CASES[1]
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, page_size, num_heads,
                                                       num_kv_heads, head_dim, np.float32)
    live = ~np.isnan(k[..., 0, 0])
    (kc, ks, kd, _), (vc, vs, vd, _) = (quantize_cache(c, "int8", "static", live)
                                        for c in (k, v))
    w = BatchPrefillWrapper().plan(indptr, tables, seq_lens, num_heads, num_kv_heads, head_dim,
                                   page_size, np.float16, kv_dtype="int8")
    out = w.run(q.astype(np.float16), kc, vc, k_scale=ks, v_scale=np.ones_like(vs))
    ref = reference_prefill_packed(q.astype(np.float16), kd, vd, indptr, tables, seq_lens)
    assert rel_err(out, ref) > 1.0


@pytest.mark.parametrize("change, match", [
    (dict(k_scale=None), "k_scale: a quantized cache needs"),
    (dict(v_scale=np.ones(3, np.float32)), r"v_scale: expected shape \(2,\)"),
    (dict(k_scale=np.array([1, np.inf], np.float32)), "finite"),
    (dict(v_scale=np.array([1, -1], np.float32)), "> 0"),
    (dict(k_scale=np.ones(2, np.float64)), "float32"),
    (dict(k_cache="fp16"), "k_cache: expected dtype int8"),
])
def test_run_refuses_bad_scales_before_launching(rng, change, match):
    lens, q_lens, page_size, num_heads, num_kv_heads, head_dim = CASES[1]
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, page_size, num_heads,
                                                       num_kv_heads, head_dim, np.float32)
    live = ~np.isnan(k[..., 0, 0])
    kc, ks, _, _ = quantize_cache(k, "int8", "static", live)
    w = BatchPrefillWrapper().plan(indptr, tables, seq_lens, num_heads, num_kv_heads, head_dim,
                                   page_size, np.float16, kv_dtype="int8")
    args = dict(k_cache=kc, k_scale=ks, v_scale=ks.copy())
    args.update(change)
    if isinstance(args["k_cache"], str):
        args["k_cache"] = k.astype(np.float16)
    out = np.full(q.shape, np.nan, np.float16)
    with pytest.raises((ValueError, TypeError), match=match):
        w.run(q.astype(np.float16), args["k_cache"], kc, out=out, k_scale=args["k_scale"],
              v_scale=args["v_scale"])
    assert np.isnan(out).all()   # nothing launched


def test_plan_refuses_unknown_formats_and_fp16_plans_refuse_scales(rng):
    lens, q_lens, page_size, num_heads, num_kv_heads, head_dim = CASES[1]
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, page_size, num_heads,
                                                       num_kv_heads, head_dim, np.float16)
    w = BatchPrefillWrapper()
    with pytest.raises(ValueError, match="kv_dtype"):
        w.plan(indptr, tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
               np.float16, kv_dtype="fp8_e5m2")
    with pytest.raises(ValueError, match="scale_scheme"):
        w.plan(indptr, tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
               np.float16, kv_dtype="int8", scale_scheme="per_channel")
    assert not w.planned
    w.plan(indptr, tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size, np.float16)
    with pytest.raises(ValueError, match="no kv_dtype"):
        w.run(q, k, v, k_scale=np.ones(2, np.float32), v_scale=np.ones(2, np.float32))
