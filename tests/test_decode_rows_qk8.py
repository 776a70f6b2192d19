"""kernels/decode_mma_rows.cu with -DQK_MMA8 (S^T = K Q^T on 8-bit tensor cores straight from
the K codes, q split into two 8-bit codes: kernels/decode_mma_ops.cuh) against the float64
reference, on the CPU executor and (marked `gpu`) on the GPU.

The split, per query head: f = the largest power of two with max|q| f <= top (int8 127, e4m3
448), q' = q f, hi = Q8(q'), lo = Q8((q' - hi) / unit) (unit 2^-7, 2^-4), and the kernel's
scores are K . (hi + unit lo) / f. Per element (BOUND below):
    int8: |q' - hi - unit lo| <= unit / 2 = 2^-8          (max|q'| >= 63.5: 2^-14 of it)
    e4m3: |q' - hi - unit lo| <= 2^-8 |q'| + 2^-14        (two roundings of 2^-4 relative;
                                                           subnormal steps 2^-9 x unit / 2)
so the q the kernel uses, q_eff, is checked two ways: the kernel against the reference on
q_eff (the dequantized cache; the fp16 tolerance of every other kernel: nothing else may
differ) and against the reference on q itself within that tolerance plus the bound's effect
on the output (each logit moves by at most scale sum_i |k_i| bound_i = D, so each softmax
weight by a factor e^(+-2D), the output row by at most (e^(2D) - 1) max_j |v_j|). And, in
NumPy alone: the split's error is far below the cache's own rounding (normal data and
outlier channels), so issue 12's accuracy bounds per format still hold.
"""
import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp

from .decode_cases import TOL, check_close, cpu_executor_has, decode_problem, poisoned, reference
from .test_decode_tc_quant import launch, planned, quantized

E4M3 = ml_dtypes.float8_e4m3fn
TOP = {"int8": 127.0, "fp8_e4m3": 448.0}
UNIT = {"int8": 2.0**-7, "fp8_e4m3": 2.0**-4}


def q8(x, kv_dtype):
    """The format's rounding of already scaled values (no saturation needed: |x| <= top)."""
    if kv_dtype == "int8":
        return np.rint(x)
    return x.astype(E4M3).astype(np.float64)


def split_q(q, kv_dtype):
    """(q_eff, f): the q the kernel's scores use, per query head, and the heads' f."""
    q = np.asarray(q).astype(np.float32).astype(np.float64)
    m = np.abs(q).max(-1, keepdims=True)
    f = np.where(m > 0, 2.0 ** np.floor(np.log2(TOP[kv_dtype] / np.where(m > 0, m, 1))), 1.0)
    x = q * f
    hi = q8(x, kv_dtype)
    lo = q8((x - hi) / UNIT[kv_dtype], kv_dtype)
    return (hi + UNIT[kv_dtype] * lo) / f, f


def bound(q, f, kv_dtype):
    """|q_eff - q| per element, at most (the module's docstring)."""
    q = np.asarray(q).astype(np.float32).astype(np.float64)
    if kv_dtype == "int8":
        return np.broadcast_to(2.0**-8 / f, q.shape)
    return 2.0**-8 * np.abs(q) + 2.0**-14 / f


def output_bound(q, f, kd, vd, tables, lens, kv_dtype, scale):
    """Relative (Frobenius) output error the bound allows: per (sequence, head) D = scale max_j
    sum_i |k_ji| bound_i, the row within (e^(2D) - 1) max_j |v_j|."""
    b_q = bound(q, f, kv_dtype)
    heads, kv, page = q.shape[1], kd.shape[2], kd.shape[1]
    sq = 0.0
    for b, n in enumerate(lens):
        slots = tables[b, np.arange(n) // page], np.arange(n) % page
        for h in range(heads):
            k, v = kd[slots][:, h // (heads // kv)], vd[slots][:, h // (heads // kv)]
            d = scale * (np.abs(k.astype(np.float64)) @ b_q[b, h]).max()
            sq += ((np.exp(2 * d) - 1) * np.linalg.norm(v, axis=1).max()) ** 2
    return np.sqrt(sq) / np.linalg.norm(reference((q, kd, vd, tables, lens)))


def run_qk8(xp, rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape, prefix=0,
            qk8=True):
    """The kernel with QK_MMA8 on a problem of head_dim 128, checked both ways (qk8 False:
    HEAD_PAIRS alone, against the reference on q within the fp16 tolerance)."""
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=128, dtype=dtype, shared_prefix=prefix)
    q, k, v, tables, seq_lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    cfg = dp.tc_config(dtype, 128, heads // kv, dp.KV_QUANT_IDS[kv_dtype], scheme == "per_token",
                       impl="rows", qk_mma8=qk8, head_pairs=True, **shape)
    assert ("-DQK_MMA8=1" if qk8 else "-DHEAD_PAIRS=1") in cfg.options
    raw = (lambda a: a.view(np.uint16)) if xp is not np and dtype == "bfloat16" else np.asarray
    dev = [xp.asarray(a) for a in (raw(q), kc, vc, ks, vs, tables, seq_lens)]
    w = planned((dev[0], None, None, dev[5], dev[6]), heads, kv, 128, page, dtype, splits, cfg)
    out = launch(w, *dev[:5], xp.asarray(raw(poisoned(q.shape, dtype))))
    out = (out if xp is np else xp.asnumpy(out)).view(q.dtype)
    if not qk8:
        check_close(out, reference((q, kd, vd, tables, seq_lens)), dtype)
        return
    q_eff, f = split_q(q, kv_dtype)
    check_close(out, reference((q_eff, kd, vd, tables, seq_lens)), dtype)
    tol = TOL[dtype] + output_bound(q, f, kd, vd, tables, seq_lens, kv_dtype, 128**-0.5)
    ref = reference((q, kd, vd, tables, seq_lens))
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err < tol, f"relative error {err:.2e} against q itself (tolerance {tol:.2e})"


CASES = [
    # dtype, heads, kv, lens, page, splits, shape
    ("float16", 8, 2, [1, 6, 7, 8, 127, 129], 7, 3, {}),        # the planner's shape; page 7
    ("float16", 6, 2, [1, 15, 16, 17, 200], 16, None,          # group 3, warp pipes, 2 chains
     {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True, "s_chains": 2}),
    ("bfloat16", 2, 2, [33, 2], 12, 2, {}),                    # MHA, bf16 queries
]


@pytest.mark.skipif(not cpu_executor_has("mma.h"), reason="no WMMA in the CPU executor's shim")
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,lens,page,splits,shape", CASES)
def test_qk8_kernel(rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape):
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    run_qk8(np, rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape)


def test_qk8_kernel_shared_pages(rng):
    run_qk8(np, rng, "int8", "static", "float16", 4, 1, [40, 50, 37], 16, 2, {}, prefix=2)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,lens,page,splits,shape", CASES)
def test_head_pairs_without_qk8(rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits,
                                shape):
    """-DHEAD_PAIRS alone (S on fp16 tensor cores from converted codes, head h in column 2h,
    2h + 1 unused): the reference on q itself, the fp16 tolerance."""
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    run_qk8(np, rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape, qk8=False)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("outliers", [False, True], ids=["normal", "outlier_channels"])
def test_the_split_is_within_its_bound_and_far_below_the_cache_rounding(rng, kv_dtype, outliers):
    """NumPy alone: |q_eff - q| within BOUND (which q's hi code alone exceeds: the bound is not
    vacuous), and the split's effect on the output far below the cache's own rounding's."""
    args = list(decode_problem(rng, [300, 77, 1], num_heads=16, num_kv_heads=4, head_dim=128))
    if outliers:   # a few channels 20x larger, in q and K (as real keys have)
        for i in (0, 1):
            x = args[i].astype(np.float32)
            x[..., [3, 70, 101]] *= 20
            args[i] = x.astype(np.float16)
    q, k, v, tables, lens = args
    q_eff, f = split_q(q, kv_dtype)
    q64 = q.astype(np.float64)
    b_q = bound(q, f, kv_dtype)
    assert (np.abs(q_eff - q64) <= b_q).all()
    hi_only = q8(q64 * f, kv_dtype) / f
    assert (np.abs(hi_only - q64) > b_q).any()
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, "static")
    exact, cache = reference(args), reference((q, kd, vd, tables, lens))
    split = reference((q_eff, kd, vd, tables, lens))

    def err(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    e_cache, e_split = err(cache, exact), err(split, cache)
    print(f"{kv_dtype}: cache rounding {e_cache:.2e}, q split {e_split:.2e} "
          f"({e_cache / e_split:.0f}x smaller)")
    assert e_split < e_cache / 8


def test_the_planner_takes_qk8_only_where_it_can():
    int8, fp8 = dp.KV_QUANT_IDS["int8"], dp.KV_QUANT_IDS["fp8_e4m3"]
    assert "-DQK_MMA8=1" in dp.tc_config("float16", 128, 4, int8, impl="rows", qk_mma8=True).options
    assert "-DQK_MMA8=1" not in dp.tc_config("float16", 128, 4, fp8, impl="rows",
                                              qk_mma8=False).options
    assert "-DHEAD_PAIRS=1" in dp.tc_config("float16", 128, 2, fp8, impl="rows",
                                            head_pairs=True).options
    for name in ("qk_mma8", "head_pairs"):
        for kw in [dict(group=5, kv_quant=int8), dict(group=4, kv_quant=0),
                   dict(group=4, kv_quant=fp8, impl="mma")]:
            with pytest.raises(ValueError, match=name):
                dp.tc_config("float16", 128, kw.pop("group"), kw.pop("kv_quant"),
                             **{name: True, "impl": "rows", **kw})
    with pytest.raises(ValueError, match="head_pairs"):
        dp.tc_config("float16", 128, 4, int8, impl="rows", qk_mma8=True, head_pairs=False)
    auto = dp.tc_config("float16", 128, 4, int8, impl="rows").options
    assert ("-DQK_MMA8=1" in auto) == (int8 in dp.QK_MMA8_AUTO)
    assert ("-DHEAD_PAIRS=1" in auto) == (int8 in dp.HEAD_PAIRS_AUTO - dp.QK_MMA8_AUTO)
    for opt in ("-DQK_MMA8=1", "-DHEAD_PAIRS=1"):
        assert opt not in dp.tc_config("float16", 128, 8, int8, impl="rows").options


# ---- the GPU ----------------------------------------------------------------------------------

GPU_CASES = CASES + [
    ("float16", 16, 4, [1, 15, 16, 17, 127, 129, 700, 2000], 16, None, {}),   # planner, auto split
    ("float16", 4, 2, [1, 300, 33], 16, 2, {"warps": 8, "tile_t": 128, "stages": 2,
                                            "d_split": 1, "s_chains": 2}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,lens,page,splits,shape", GPU_CASES)
def test_gpu_qk8_kernel(rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape):
    cp = pytest.importorskip("cupy")
    run_qk8(cp, rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,lens,page,splits,shape", [CASES[0], GPU_CASES[3]])
def test_gpu_head_pairs_without_qk8(rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits,
                                    shape):
    cp = pytest.importorskip("cupy")
    run_qk8(cp, rng, kv_dtype, scheme, dtype, heads, kv, lens, page, splits, shape, qk8=False)


@pytest.mark.gpu
def test_gpu_qk8_kernel_shared_pages(rng):
    cp = pytest.importorskip("cupy")
    run_qk8(cp, rng, "int8", "per_token", "float16", 8, 2, [40, 50, 37], 16, 2, {}, prefix=2)
