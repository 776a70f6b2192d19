"""BatchDecodeWrapper over compressed (int8 / fp8 e4m3) pages: the SIMT kernel
(kernels/decode.cu, -DKV_QUANT) on the CPU executor, and on the GPU under the gpu marker.

Two bounds, derived from the formats (the derivation is tests/test_prefill_quant.py's):
1. Against the float64 reference on the DEQUANTIZED cache (code * scale in float32): the
   kernel reads every code exactly and folds the scale into its arithmetic. With fp32
   arithmetic (-DHALF2_MATH=0; the default for float32 q) only q's and out's fp16 rounding
   and fp32 sums remain: ||out - ref|| / ||ref|| < 2e-3, the fp16 path's tolerance. With
   packed fp16 arithmetic (the default over codes for fp16 / bf16 q, kernels/decode_half2.cuh)
   and u = 2^-11, gamma_n = n u / (1 - n u): q is rounded to fp16 after an exact power-of-two scaling (u) and each lane sums n = VEC/2
   products per fp16 half (gamma_n), so a score moves by at most
   (gamma_n + u) softmax_scale sum_d |q_d k_d|: the K error e(K)_d = (gamma_n + u) |k_d|;
   with DOT_PACK (the default for blocks of 4+ heads, where |q.k| stays in fp16's range) the
   lane's two halves and then the TG lanes of a token are added in fp16 as well:
   n = VEC/2 + 1 + log2(TG) (a sum tree of that depth);
   with V in fp16 (static scales) each weight is rounded once (u), each fp16 sum holds
   U * PV_FLUSH products and takes up to PV_FLUSH rescales (one rounding each), so
   e(V)_d = gamma_{U * PV_FLUSH + PV_FLUSH + 1} |v_d|; and a weight (in units where the
   largest is >= 2^-PV_SHIFT) below fp16's normal range is off by up to 2^-25, which moves an
   output element by at most n 2^(PV_SHIFT - 24) max |v| over n tokens. The bound of 2. below
   with these e(K), e(V), plus the fp16 tolerance times max |ref|, bounds every output element.
2. Against the reference on the ORIGINAL cache, per element |dx| <= e(x) with
   int8: e = scale / 2 (the step is the scale; rounding to nearest is off by half a step);
   e4m3: e = |x| 2^-4 + scale 2^-10 (3 mantissa bits: half an ulp is 2^-4 of the value; the
   subnormal step is scale 2^-9). A logit moves by at most delta = softmax_scale *
   sum_d |q_d| e(K)_d, each softmax weight by a factor within exp(+-2 delta), so per output
   element |d out| <= max_j e(V)_j + (exp(2 delta) - 1) max_j |V_j|. With packed fp16
   arithmetic e(x) grows by the terms of 1. applied to |x| + e(x).
Unused slots hold the NaN codes 0x7f / 0xff (e4m3) or -128 (int8, never written), and NaN
per-token scales: a kernel that reads them, or weighs them by zero, fails.
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan, wrappers
from pagedattn_lab.kernels import expanded_source
from pagedattn_lab.reference import reference_decode
from pagedattn_lab.wrappers import BatchDecodeWrapper
from tests.decode_cases import decode_problem, np_dtype
from tests.test_prefill_quant import attention_error_bound, element_bound, quantize_cache

FP16_TOL = 2e-3
FORMATS = ["int8", "fp8_e4m3"]
SCHEMES = ["static", "per_token"]


def rel_err(out, ref):
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


def owned_slots(tables, lens, num_pages, page_size):
    """bool [num_pages, page_size]: the slots some sequence's tokens occupy."""
    owned = np.zeros((num_pages, page_size), bool)
    for row, n in zip(tables, lens):
        for t in range(int(n)):
            owned[row[t // page_size], t % page_size] = True
    return owned


def compressed_problem(rng, lens, kv_dtype, scheme, *, page_size=16, num_heads=4,
                       num_kv_heads=2, head_dim=64, shared_prefix=0, outliers=False,
                       q_dtype="float16"):
    q, k, v, tables, seq_lens = decode_problem(
        rng, lens, page_size=page_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, dtype="float32", shared_prefix=shared_prefix)
    if outliers:   # a few key channels 20x larger, as real keys have
        k[..., rng.choice(head_dim, 3, replace=False)] *= 20
    owned = owned_slots(tables, seq_lens, k.shape[0], page_size)
    k[~owned], v[~owned] = np.nan, np.nan
    p = dict(q=q.astype(np_dtype(q_dtype)), k=k, v=v, tables=tables, lens=seq_lens,
             page_size=page_size, kv_dtype=kv_dtype, scheme=scheme, q_dtype=q_dtype)
    for name, cache in (("k", k), ("v", v)):
        codes, scales, deq, per_slot = quantize_cache(cache, kv_dtype, scheme, owned)
        if kv_dtype == "fp8_e4m3":   # both NaN codes, by parity of the slot
            codes[~owned] = np.where(np.arange((~owned).sum()) % 2, 0xff, 0x7f)[:, None, None]
        else:
            codes[~owned] = -128
        if scheme == "per_token":
            scales = scales.copy()
            scales[~owned] = np.nan
        p.update({f"{name}c": codes, f"{name}s": scales, f"{name}d": deq,
                  f"{name}ps": per_slot})
    return p


def run_compressed(xp, p, **plan_kw):
    dev = xp.asarray
    q = p["q"]
    num_heads, head_dim = q.shape[1:]
    w = BatchDecodeWrapper().plan(dev(p["tables"]), dev(p["lens"]), num_heads,
                                  p["k"].shape[2], head_dim, p["page_size"], p["q_dtype"],
                                  kv_dtype=p["kv_dtype"], scale_scheme=p["scheme"], **plan_kw)
    out = xp.asarray(np.full(q.shape, np.nan, np.float32).astype(q.dtype))
    w.run(dev(q), dev(p["kc"]), dev(p["vc"]), out=out, k_scale=dev(p["ks"]),
          v_scale=dev(p["vs"]))
    return (out.get() if xp is not np else out).astype(np.float64)


U_ROUND = 2.0 ** -11   # fp16's unit roundoff


def gamma(n):
    return n * U_ROUND / (1 - n * U_ROUND)


def arithmetic_error(p, options=()):
    """(K, V, V_abs) error factors of the kernel's packed fp16 arithmetic (module docstring, 1.)
    for problem p compiled with the extra -D `options` of kernels/decode.cu: e(K) = K |k|,
    e(V) = V |v| + V_abs max |v|; (0, 0, 0) for fp32 arithmetic. The defaults mirror
    decode.cu's and decode_half2.cuh's."""
    opts = dict(o[2:].split("=", 1) for o in options)
    num_heads, head_dim = p["q"].shape[1:]
    if opts.get("HALF2_MATH", "0" if p["q_dtype"] == "float32" else "1") == "0":
        return 0.0, 0.0, 0.0
    gmax = decode_plan.group_kernel_size(num_heads // p["k"].shape[2])
    vec = 8 if gmax >= wrappers.QUANT_NARROW_GMAX else 16   # codes per load
    qmax = 127.0 if p["kv_dtype"] == "int8" else 448.0
    chunks = head_dim // vec
    cpt = -(-chunks // 32)
    tg = next(t for t in (1, 2, 4, 8, 16, 32) if chunks <= t * cpt)   # lanes per token
    dot_pack = opts.get("DOT_PACK", str(int(gmax >= 4 and head_dim * qmax < 65504))) == "1"
    # DOT_PACK: the lane's two halves and the tg lanes added in fp16 too
    k_err = gamma(vec // 2 + (1 + int(np.log2(tg)) if dot_pack else 0)) + U_ROUND
    pv_half = opts.get("PV_HALF2", "1" if p["scheme"] == "static" else "0") == "1"
    if not pv_half:
        return k_err, 0.0, 0.0
    acc_smem = opts.get("ACC_SMEM", str(int(gmax == 4 and head_dim <= 192))) == "1"
    if gmax >= 4:
        unroll = int(opts.get("DECODE_UNROLL_CODES", 4) if acc_smem else
                     opts.get("DECODE_UNROLL_GQA", 2))
    else:
        unroll = int(opts.get("DECODE_UNROLL", 4))
    flush = int(opts.get("PV_FLUSH", 4))
    slack = int(opts.get("RESCALE_SLACK", 8))
    shift = next(k for k in range(slack + 1)
                 if k == slack or unroll * flush * qmax * 2.0 ** (slack - k) < 60000)
    n = int(max(p["lens"]))
    return k_err, gamma(unroll * flush + flush + 1), n * 2.0 ** (shift - 24)


def check_against_references(p, got, options=()):
    assert np.isfinite(got).all(), "an output was not written, or an unused slot leaked in"
    q = p["q"].astype(np.float32)
    q64, batch = q.astype(np.float64), len(p["lens"])
    where = (np.arange(batch + 1), p["tables"], p["lens"], p["page_size"])
    k_arith, v_arith, v_abs = arithmetic_error(p, options)
    ref_deq = reference_decode(q, p["kd"], p["vd"], p["tables"], p["lens"])
    if k_arith == 0:
        assert rel_err(got, ref_deq) < FP16_TOL, f"vs dequantized: {rel_err(got, ref_deq):.2e}"
    else:
        kd, vd = np.nan_to_num(p["kd"]), np.nan_to_num(p["vd"])
        bound = attention_error_bound(q64, kd, vd, k_arith * np.abs(kd), v_arith * np.abs(vd),
                                      *where) + v_abs * np.abs(vd).max()
        worst = float((np.abs(got - ref_deq) - bound).max())
        assert worst <= FP16_TOL * np.abs(ref_deq).max(), \
            f"vs dequantized: beyond the fp16 arithmetic's bound by {worst:.3g}"
    ref = reference_decode(q, p["k"], p["v"], p["tables"], p["lens"])
    k0, v0 = np.nan_to_num(p["k"]), np.nan_to_num(p["v"])
    per_slot = [np.nan_to_num(p[x], nan=1.0) for x in ("kps", "vps")]
    ek = element_bound(k0, per_slot[0], p["kv_dtype"])
    ev = element_bound(v0, per_slot[1], p["kv_dtype"])
    bound = attention_error_bound(q64, k0, v0, ek + k_arith * (np.abs(k0) + ek),
                                  ev + v_arith * (np.abs(v0) + ev), *where) \
        + v_abs * (np.abs(v0) + ev).max()
    slack = FP16_TOL * np.abs(ref).max()
    worst = float((np.abs(got - ref) - bound).max())
    assert worst <= slack, f"error beyond the format's bound by {worst:.3g}"
    assert rel_err(got, ref) > 1e-5   # the cache really was quantized


CASES = [
    # lens, page, heads, kv heads, head_dim, shared pages
    ([1, 15, 16, 17], 16, 4, 2, 64, 0),    # lengths 1, page - 1, page, page + 1; GQA 2
    ([40, 37, 33], 16, 8, 1, 32, 2),       # MQA (group 8: 8-byte loads), two shared pages
    ([70, 9], 7, 2, 2, 128, 0),            # MHA, a page size that is no power of two
    ([23, 50], 8, 16, 2, 80, 0),           # group 8 per block, head_dim 80 (padded group)
    ([33], 32, 2, 1, 256, 0),              # head_dim 256
    ([5, 18], 4, 3, 3, 16, 0),             # head_dim 16: one chunk per row
    ([31, 64], 16, 8, 2, 96, 1),           # group 4 per block, a shared page
]


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"d{c[4]}-{c[2]}/{c[3]}-p{c[1]}")
def test_decode_on_compressed_pages(rng, kv_dtype, scheme, case):
    lens, page, heads, kv_heads, dim, shared = case
    p = compressed_problem(rng, lens, kv_dtype, scheme, page_size=page, num_heads=heads,
                           num_kv_heads=kv_heads, head_dim=dim, shared_prefix=shared,
                           outliers=dim >= 64)
    check_against_references(p, run_compressed(np, p))


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_split_sequences_merge_with_their_scales(rng, kv_dtype, scheme):
    p = compressed_problem(rng, [300, 129, 1], kv_dtype, scheme, num_heads=4, num_kv_heads=2)
    check_against_references(p, run_compressed(np, p, num_splits=3))


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_tensor_core_kernel_through_the_wrapper(rng, kv_dtype, scheme):
    """The wrapper launches kernels/decode_tc.cu over codes with the same arguments."""
    p = compressed_problem(rng, [1, 17, 70], kv_dtype, scheme, num_heads=8, num_kv_heads=2,
                           outliers=True)
    check_against_references(p, run_compressed(np, p, kernel="tensor_core", num_splits=2))


@pytest.mark.parametrize("q_dtype", ["float32", "bfloat16"])
def test_other_query_types_over_codes(rng, q_dtype):
    p = compressed_problem(rng, [50, 17], "fp8_e4m3", "per_token", q_dtype=q_dtype)
    check_against_references(p, run_compressed(np, p))


# ---- mistakes the checks above must catch ---------------------------------------------------

FP32 = ("-DHALF2_MATH=0",)   # the fp32 arithmetic path over codes
MISTAKES = [
    # (what the kernel gets wrong, text replaced, its replacement, kv_dtype, scheme, options)
    ("V's static scale forgotten", "v_mult = v_scale[kvh] * CODE_UNIT", "v_mult = CODE_UNIT",
     "int8", "static", ()),
    ("K's static scale forgotten", "q_mult = scale_log2 * k_scale[kvh] * CODE_UNIT",
     "q_mult = scale_log2 * CODE_UNIT", "fp8_e4m3", "static", ()),
    ("per-token K scale forgotten", "dot[j][u] * q_unit_own[j] * k_mult[u]",
     "dot[j][u] * q_unit_own[j]", "int8", "per_token", ()),
    ("per-token V scale forgotten", "p[j][u] *= p_mult[u];", "p[j][u] *= 1.0f;",
     "fp8_e4m3", "per_token", ()),
    ("per-token scale of the wrong KV head", "* num_kv_heads + kvh;", "* num_kv_heads;",
     "int8", "per_token", ()),
    ("e4m3 sign dropped", "(x & 0x80008000u) + ", "", "fp8_e4m3", "static", ()),
    ("fp32: e4m3 sign dropped", "(x & 0x80008000u) | ", "", "fp8_e4m3", "static", FP32),
    ("e4m3 exponent bias ignored", "__float2half2_rn(256.0f)", "__float2half2_rn(1.0f)",
     "fp8_e4m3", "static", ()),
    ("int8 offset off by 128", "__float2half2_rn(1152.0f)", "__float2half2_rn(1024.0f)",
     "int8", "static", ()),
    ("tokens past the end read", "return min(base + u * ngroups + grp, end - 1);",
     "return base + u * ngroups + grp;", "fp8_e4m3", "per_token", ()),
    ("q's power-of-two scaling not undone", "q_unit[g] = 1.0f / mult;", "q_unit[g] = 1.0f;",
     "int8", "static", ()),
    ("reduce-scatter sends the half it keeps", "const T send = upper ? v[j][u]",
     "const T send = upper ? v[j + half][u]", "fp8_e4m3", "static", ()),
    ("packed dots: the pair's tokens swapped",
     "u % 2 ? __high2float(dp[j][u / 2]) : __low2float(dp[j][u / 2])",
     "u % 2 ? __low2float(dp[j][u / 2]) : __high2float(dp[j][u / 2])", "int8", "static", ()),
    ("groups merged without their maxima", "const float c = exp2f(s_ml[w][g][0] - m_all);",
     "const float c = 1.0f;", "fp8_e4m3", "static", ()),
    ("weights taken from the wrong owner lane", "if (g & (GMAX >> (k + 1))) l += TG >> (k + 1);",
     "if (g & (GMAX >> (k + 1))) l += TG >> k;", "int8", "per_token", ()),
    # the fp32 path (-DHALF2_MATH=0)
    ("fp32: per-token K scale forgotten", "dot * k_mult[u]", "dot", "int8", "per_token", FP32),
    ("fp32: per-token V scale forgotten", "p * p_mult[u]", "p", "fp8_e4m3", "per_token", FP32),
    ("fp32: e4m3 exponent bias ignored", "#define CODE_UNIT 256.0f", "#define CODE_UNIT 1.0f",
     "fp8_e4m3", "static", FP32),
    ("fp32: int8 offset off by 128", "- 8388736.0f", "- 8388608.0f", "int8", "static", FP32),
]


def with_options(monkeypatch, options, old="", new=""):
    """Make the wrappers compile kernels/decode.cu with extra -D options (and a text edit)."""
    from pagedattn_lab.cpu import RawKernel as CpuRawKernel

    def load(filename, name, opts=()):
        return CpuRawKernel(expanded_source(filename).replace(old, new), name,
                            options=tuple(opts) + (tuple(options) if filename == "decode" else ()))
    monkeypatch.setattr(wrappers, "load_kernel", load)


@pytest.mark.parametrize("what, old, new, kv_dtype, scheme, options", MISTAKES,
                         ids=[m[0] for m in MISTAKES])
def test_a_planted_mistake_fails_the_checks(rng, monkeypatch, what, old, new, kv_dtype, scheme,
                                            options):
    assert expanded_source("decode").count(old) == 1, "the mistake's text is not in decode.cu"
    with_options(monkeypatch, options, old, new)
    p = compressed_problem(rng, [1, 15, 16, 17, 40], kv_dtype, scheme, num_heads=8,
                           num_kv_heads=2)
    # A wrong value or a NaN fails the checks; a read past the block table is the CPU
    # executor's out-of-bounds error, which names the buffer.
    with pytest.raises((AssertionError, IndexError, RuntimeError),
                       match="vs dequantized|not written|beyond|k_cache|v_cache|block_tables"):
        check_against_references(p, run_compressed(np, p), options)


# The kernel's variants (kernels/decode.cu -D options) against the same bounds.
VARIANTS = [FP32, ("-DPV_HALF2=0",), ("-DACC_SMEM=0",), ("-DRESCALE_SLACK=0",),
            ("-DDOT_PACK=0",),
            ("-DPV_FLUSH=1", "-DDECODE_UNROLL_CODES=2", "-DDECODE_UNROLL=2"),
            ("-DDECODE_PREFETCH_GROUP=8", "-DDECODE_MIN_BLOCKS=4", "-DCODE_L2_256=1")]
VARIANT_CASES = [
    ([1, 15, 16, 17, 300], 16, 8, 2, 96),   # group 4 per block, long enough for rescales
    ([70, 9], 7, 2, 2, 128),                # MHA
    ([23, 50], 8, 16, 2, 80),               # group 8 (8-byte loads)
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: " ".join(x[2:] for x in o))
@pytest.mark.parametrize("kv_dtype, scheme", [("int8", "static"), ("fp8_e4m3", "per_token")])
def test_kernel_variants_keep_the_bounds(rng, monkeypatch, options, kv_dtype, scheme):
    with_options(monkeypatch, options)
    for lens, page, heads, kv_heads, dim in VARIANT_CASES:
        p = compressed_problem(rng, lens, kv_dtype, scheme, page_size=page, num_heads=heads,
                               num_kv_heads=kv_heads, head_dim=dim, outliers=True)
        check_against_references(p, run_compressed(np, p, num_splits=2), options)


# ---- bad input: refused before anything launches, nothing changed ---------------------------

def planned_int8(rng, scheme="static"):
    p = compressed_problem(rng, [40, 9], "int8", scheme)
    w = BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float16",
                                  kv_dtype="int8", scale_scheme=scheme)
    return p, w


def refuse_launches(w, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("launched")
    monkeypatch.setattr(w, "_launches", [(refuse, 1, 1, lambda *a: (), 0)])


BAD_SCALES = [
    ("static", dict(k_scale=None), "k_scale: a quantized cache needs"),
    ("static", dict(v_scale=None), "v_scale: a quantized cache needs"),
    ("static", dict(v_scale=np.ones(3, np.float32)), r"v_scale: expected shape \(2,\)"),
    ("static", dict(k_scale=np.ones((1, 2), np.float32)), r"k_scale: expected shape \(2,\)"),
    ("static", dict(k_scale=np.array([1, np.inf], np.float32)), "k_scale: every scale must be finite"),
    ("static", dict(v_scale=np.array([np.nan, 1], np.float32)), "v_scale: every scale must be finite"),
    ("static", dict(v_scale=np.array([1, 0], np.float32)), r"v_scale.*> 0; v_scale\[1\] is 0"),
    ("static", dict(k_scale=np.array([-1, 1], np.float32)), r"k_scale.*> 0; k_scale\[0\] is -1"),
    ("static", dict(k_scale=np.array([1, 1e37], np.float32)), "k_scale: expected scales <="),
    ("static", dict(k_scale=np.ones(2, np.float64)), "k_scale: expected dtype float32"),
    ("static", dict(v_scale=[1.0, 1.0]), "v_scale: expected a NumPy or CuPy array"),
    ("per_token", dict(k_scale=None), "k_scale: a quantized cache needs per_token"),
    ("per_token", dict(v_scale=np.ones(2, np.float32)), r"v_scale: expected shape \(\d+, 16, 2\)"),
]


@pytest.mark.parametrize("scheme, change, match", BAD_SCALES)
def test_run_refuses_bad_scales_before_launching(rng, monkeypatch, scheme, change, match):
    p, w = planned_int8(rng, scheme)
    refuse_launches(w, monkeypatch)
    args = dict(k_scale=p["ks"], v_scale=p["vs"]) | change
    before = [a.copy() for a in (p["kc"], p["vc"], p["ks"], p["vs"])]
    out = np.full(p["q"].shape, np.nan, np.float16)
    with pytest.raises((ValueError, TypeError), match=match):
        w.run(p["q"], p["kc"], p["vc"], out=out, **args)
    assert np.isnan(out).all()
    for a, b in zip(before, (p["kc"], p["vc"], p["ks"], p["vs"])):
        np.testing.assert_array_equal(a, b)


def test_run_refuses_a_cache_of_another_format(rng, monkeypatch):
    p, w = planned_int8(rng)
    refuse_launches(w, monkeypatch)
    scales = dict(k_scale=p["ks"], v_scale=p["vs"])
    with pytest.raises(TypeError, match=r"k_cache: expected dtype int8 \(the codes of int8 pag"):
        w.run(p["q"], p["kc"].view(np.uint8), p["vc"], **scales)       # fp8 codes
    with pytest.raises(TypeError, match=r"v_cache: expected dtype int8 \(the codes of int8 pag"):
        w.run(p["q"], p["kc"], p["vd"].astype(np.float16), **scales)   # an fp16 cache
    plain = BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float16")
    refuse_launches(plain, monkeypatch)
    with pytest.raises(TypeError, match="k_cache: the plan is for float16"):
        plain.run(p["q"], p["kc"], p["vc"])
    with pytest.raises(ValueError, match="k_scale, v_scale: the plan has no kv_dtype"):
        plain.run(p["q"], p["kd"].astype(np.float16), p["vd"].astype(np.float16), **scales)


def test_plan_refuses_bad_formats_and_keeps_its_plan(rng, monkeypatch):
    p, w = planned_int8(rng)
    kept = (w.kernel, w.kv_format, w.grid)

    def refuse(*a, **k):
        raise AssertionError("a kernel was loaded for invalid input")
    monkeypatch.setattr(wrappers, "load_kernel", refuse)
    args = (p["tables"], p["lens"], 4, 2, 64, 16, "float16")
    with pytest.raises(ValueError, match="kv_dtype: expected one of"):
        w.plan(*args, kv_dtype="fp8_e5m2")
    with pytest.raises(ValueError, match="scale_scheme: expected one of"):
        w.plan(*args, kv_dtype="int8", scale_scheme="per_channel")
    with pytest.raises(ValueError, match="head_dim: 40 with int8 pages"):
        w.plan(p["tables"], p["lens"], 4, 2, 40, 16, "float16", kv_dtype="int8")
    assert (w.kernel, w.kv_format, w.grid) == kept


def test_describe_names_the_format(rng):
    _, w = planned_int8(rng, "per_token")
    assert "over int8 pages (per_token scales)" in w.describe()


# ---- GPU -------------------------------------------------------------------------------------

GPU_CASES = [
    # lens, page, heads, kv heads, head_dim
    ([2048, 1, 77, 300, 15, 16, 17, 1000], 16, 32, 8, 128),   # GQA 32/8
    ([1000, 333, 1, 4096], 16, 32, 32, 64),                   # MHA, head_dim 64
    ([129, 65, 1], 1, 16, 1, 96),                             # MQA, page 1
    ([500, 257], 256, 8, 2, 256),
]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["simt", "tensor_core"])
@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"d{c[4]}-{c[2]}/{c[3]}-p{c[1]}")
def test_decode_on_compressed_pages_on_the_gpu(rng, kernel, kv_dtype, scheme, case):
    import cupy
    lens, page, heads, kv_heads, dim = case
    p = compressed_problem(rng, lens, kv_dtype, scheme, page_size=page, num_heads=heads,
                           num_kv_heads=kv_heads, head_dim=dim, outliers=True)
    check_against_references(p, run_compressed(cupy, p, kernel=kernel))

