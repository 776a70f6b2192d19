"""Checks for lesson 11: per-token scales (NumPy), quantize on write and dequantize on read
(CUDA C, int8 pages).

kv_scales: amax over head_dim / qmax per (token, KV head), 1 for an all-zero row.
quantize_write: one warp per (token, KV head) stores int8 codes rint(x / scale), clamped to
+-127, at the token's slot; per-token scales are computed and written to
k_scale[slot][kv_head], static ones read from k_scale[kv_head].
dequant_decode: one thread per (query head, sequence) attends over int8 pages, reading
code * scale for K and for V.

The cases hold values that tell the classic mistakes apart: exact halves (rounding),
values far past 127 scales (saturation), rows whose largest magnitude is negative (abs),
an all-zero row, scattered slots and a -1 padding row, GQA, and V scales unlike K's.
"""
from __future__ import annotations

import numpy as np

from ..quant import per_token_scales
from ..reference import reference_decode
from .cases import paged_problem
from .checks_kernels import _Compiled
from .compare import describe_difference, diagnose
from .kernel_runner import poisoned
from .report import Case, CheckResult, Mismatch, NotAttempted, run_cases
from .seeds import case_rng

WARP = 32
FILL = 85   # what the check writes into k_cache first: an unwritten code shows as 85
NOTHING_WRITTEN = ("the kernel wrote nothing (its outputs still hold what the check filled "
                   "them with): write the kernel body where the // TODO is")


# -- task 1: the scales, in NumPy ----------------------------------------------------------

def _scale_variants(x, qmax):
    ax = np.abs(x)
    with np.errstate(all="ignore"):
        return [
            ("the scale comes from the largest MAGNITUDE: amax = max |x| (a row whose biggest "
             "value is negative, like here, needs abs).",
             np.where(x.max(-1) > 0, x.max(-1) / qmax, 1.0)),
            ("scale = amax / qmax (a code times the scale gives the value back), not amax * qmax.",
             np.where(ax.max(-1) > 0, ax.max(-1) * qmax, 1.0)),
            ("the range of int8 here is +-127 (symmetric: -128 is not used), of e4m3 +-448: "
             "divide by the qmax you are given.",
             np.where(ax.max(-1) > 0, ax.max(-1) / (qmax + 1), 1.0)),
            ("a row of zeros has amax 0 and would get scale 0 (then 0 / 0 = NaN codes): give "
             "it scale 1.", ax.max(-1) / qmax),
            ("one scale per (token, KV head): the amax over the whole token (all heads) mixes "
             "heads whose ranges differ.",
             np.broadcast_to(np.where(ax.max((-1, -2)) > 0, ax.max((-1, -2)) / qmax, 1.0)[:, None],
                             x.shape[:2])),
        ]


def _scales_case(fn, x, qmax) -> None:
    expected = per_token_scales(x, "int8" if qmax == 127 else "fp8_e4m3").astype(np.float64)
    got = fn(x.copy(), qmax)
    if got is None:
        raise Mismatch("returned None", "return the scales, shape [n_tokens, num_kv_heads].")
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        n, heads, dim = x.shape
        hint = {(heads, dim): "you reduced over the tokens (axis 0): that is one scale per "
                              "channel for the whole batch; reduce over head_dim (the last axis).",
                (n, dim): "you reduced over the heads (axis 1); reduce over head_dim (the last "
                          "axis): one scale per (token, KV head).",
                (): "one scale per (token, KV head), not one for everything: reduce over the "
                    "last axis only."}.get(got.shape, "one scale per (token, KV head): shape "
                                                      "[n_tokens, num_kv_heads].")
        raise Mismatch("wrong shape", hint, str(expected.shape), str(got.shape))
    diff = describe_difference(got, expected, ("token", "head"), atol=0, rtol=1e-6,
                               unwritten=False)   # a Python result: no poison to leave
    if diff is None:
        return
    hint = diagnose(got, expected, _scale_variants(x, qmax), atol=0, rtol=1e-6) or \
        "scale[t, h] = max over d of |x[t, h, d]| / qmax, and 1 when that max is 0."
    raise Mismatch(diff.message("scales"), hint)


def kv_scales(fn) -> CheckResult:
    """Check `fn(x, qmax)` -> per-token scales [n_tokens, num_kv_heads]."""
    rng = case_rng(11)

    def rows(n, heads, dim, spread=True):
        x = rng.standard_normal((n, heads, dim)).astype(np.float32)
        return x * rng.uniform(0.1, 10, (n, heads, 1)).astype(np.float32) if spread else x

    negative = rows(5, 2, 16)
    negative[:, :, 3] = -50.0                      # the largest magnitude is negative
    zero = rows(4, 3, 8)
    zero[2, 1] = 0.0
    cases = [("int8, heads with different ranges", rows(6, 3, 24), 127.0),
             ("fp8 e4m3 (qmax 448)", rows(7, 2, 40), 448.0),
             ("the largest magnitude is negative", negative, 127.0),
             ("an all-zero row", zero, 127.0),
             ("one KV head", rows(9, 1, 64), 127.0)]
    return run_cases("kv_scales", "kv_scales: one scale per (token, KV head)", [
        Case(name, {"shape": x.shape, "qmax": q}, lambda x=x, q=q: _scales_case(fn, x, q))
        for name, x, q in cases])


# -- task 2: quantize on write, in CUDA C --------------------------------------------------

def quantize_reference(k, slots, cache_shape, per_token, k_scale, bug=None):
    """(codes, scales) the kernel must leave, for `bug` None; else a known-wrong variant."""
    cache = np.full(cache_shape, FILL, np.int8)
    scales = k_scale.copy()
    n, heads, dim = k.shape
    live = np.flatnonzero(slots >= 0)
    if per_token:
        amax = (k.max(-1) if bug == "no_abs" else np.abs(k).max(-1))[live]
        s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
        where = live if bug == "token_index" else slots[live]
        scales.reshape(-1, heads)[where] = s
        per_row = s
    else:
        per_row = np.broadcast_to(k_scale, (live.size, heads))
    with np.errstate(all="ignore"):
        v = (k[live] * per_row[..., None] if bug == "multiply"
             else k[live] / per_row[..., None]).astype(np.float32)
        r = {"trunc": np.trunc(v), "half_away": np.sign(v) * np.floor(np.abs(v) + 0.5)}.get(
            bug, np.rint(v))
        codes = np.clip(r, -127, 127)
        if bug == "wrap":
            codes = ((r.astype(np.int64) + 128) % 256) - 128
    cache.reshape(-1, heads, dim)[slots[live]] = codes.astype(np.int8)
    return cache, scales


_WRITE_MISTAKES = [
    ("trunc", "a cast (int)(x / scale) truncates toward zero: round to nearest with rintf "
              "(ties to even) before converting."),
    ("half_away", "roundf rounds halves away from zero (2.5 -> 3); the format rounds halves to "
                  "even like rintf (2.5 -> 2), as the NumPy reference and vLLM do."),
    ("wrap", "saturate: clamp x / scale to [-127, 127] before the cast. Past the range the "
             "int8 conversion wraps (300 becomes 44) instead of stopping at 127."),
    ("multiply", "the code is x / scale (and the value comes back as code * scale), not "
                 "x * scale."),
    ("no_abs", "the scale comes from the largest magnitude: fmaxf of fabsf(x) (a row whose "
               "biggest value is negative needs the abs)."),
    ("token_index", "per-token scales are laid out like the pages: write k_scale[slot * "
                    "num_kv_heads + head] (the token's slot), not its row in k."),
]


def _write_case(comp, per_token, n, heads, dim, page_size, seed, ties=False, outliers=False):
    rng = case_rng(seed)
    num_pages = -(-n // page_size) + 2
    slots = rng.permutation(num_pages * page_size)[:n].astype(np.int64)
    slots[n // 2] = -1                                           # a padding row
    k = (rng.standard_normal((n, heads, dim)) * rng.uniform(0.2, 5, (n, heads, 1)))
    k = k.astype(np.float32)
    k[0, 0, 1] = -3 * np.abs(k[0, 0]).max()                      # negative largest magnitude
    static = np.full(heads, 0.03125, np.float32) * (1 + np.arange(heads, dtype=np.float32))
    if ties:   # exact halves of the (power of two) scale: rounding decides
        k = ((rng.integers(-60, 60, k.shape) + 0.5) * 0.03125).astype(np.float32)
    if outliers:
        k[1::3, :, 2] = 40.0                                     # 40 / 0.03125 = 1280 > 127
    cache_shape = (num_pages, page_size, heads, dim)
    k_scale = poisoned((num_pages, page_size, heads)) if per_token else static
    cache = np.full(cache_shape, FILL, np.int8)
    got_scale, got_cache = comp.get().launch(
        (n, heads), (WARP,), (k, slots, np.int32(heads), np.int32(dim), np.int32(per_token),
                              k_scale.copy(), cache), outputs=(5, 6))
    want_cache, want_scale = quantize_reference(k, slots, cache_shape, per_token, k_scale)
    if (got_cache == FILL).all() and (not per_token or np.isnan(got_scale).all()):
        if "TODO" in comp.source:
            raise NotAttempted(NOTHING_WRITTEN)
        raise Mismatch("nothing was written", "store every code at its slot: k_cache[(slot * "
                       "num_kv_heads + head) * head_dim + d].")
    variants = [(hint, lambda bug=bug: quantize_reference(k, slots, cache_shape, per_token,
                                                          k_scale, bug))
                for bug, hint in _WRITE_MISTAKES]
    if per_token:
        diff = describe_difference(got_scale, want_scale, ("page", "offset", "head"), atol=0,
                                   rtol=1e-6)
        if diff is not None:
            hint = diagnose(got_scale, want_scale, [(h, lambda f=f: f()[1]) for h, f in variants],
                            atol=0, rtol=1e-6)
            raise Mismatch("k_scale: " + diff.message("scales"), hint or (
                "scale = max |x| over the row's head_dim / 127 (1 for a zero row), written by "
                "one lane at k_scale[slot * num_kv_heads + head]."))
    diff = describe_difference(got_cache, want_cache, ("page", "offset", "head", "dim"), atol=0,
                               rtol=0)
    if diff is not None:
        hint = diagnose(got_cache, want_cache, [(h, lambda f=f: f()[0]) for h, f in variants],
                        atol=0, rtol=0)
        if hint is None and (got_cache == FILL).sum() > (want_cache == FILL).sum():
            hint = ("some codes were never written (they still hold the check's fill value "
                    f"{FILL}): the warp's lanes stride over head_dim, d += 32.")
        raise Mismatch("k_cache: " + diff.message("codes"), hint or (
            "code = rintf(x / scale) clamped to [-127, 127], at k_cache[(slot * num_kv_heads "
            "+ head) * head_dim + d]; a slot of -1 is skipped."))


def quantize_write(source: str, device: str = "auto") -> CheckResult:
    """Check the quantize-on-write kernel (grid (n_tokens, num_kv_heads), 32 threads)."""
    comp = _Compiled(source, "quantize_write", device)
    cases = [
        ("per-token scales, scattered slots, a padding row", dict(per_token=1, n=9, heads=2,
                                                                  dim=40, page_size=4, seed=1)),
        ("static scales, exact halves (rounding)", dict(per_token=0, n=6, heads=2, dim=32,
                                                        page_size=3, seed=2, ties=True)),
        ("static scales, values past the range (saturation)", dict(per_token=0, n=8, heads=3,
                                                                   dim=24, page_size=5, seed=3,
                                                                   outliers=True)),
        ("per-token scales, head_dim 80 (more than a warp)", dict(per_token=1, n=5, heads=3,
                                                                  dim=80, page_size=2, seed=4)),
    ]
    return run_cases("quantize_write", "quantize_write: int8 codes and scales on write", [
        Case(name, {k: v for k, v in p.items() if k not in ("seed", "ties", "outliers")},
             lambda p=p: _write_case(comp, **p)) for name, p in cases])


# -- task 3: dequantize on read, in CUDA C -------------------------------------------------

def dequantized(codes, scales, per_token, bug=None, which="k"):
    """float64 cache values: code * scale (per slot or per head), or a known-wrong variant."""
    heads = codes.shape[2]
    c = codes.astype(np.float64)
    if bug == "unsigned":
        c = codes.view(np.uint8).astype(np.float64)
    if bug == "no_v_scale" and which == "v":
        return c
    if per_token and bug != "static_index":
        s = scales.astype(np.float64)
    else:
        s = np.broadcast_to(scales.reshape(-1)[:heads].astype(np.float64), codes.shape[:3])
    return c * s[..., None]


_READ_MISTAKES = [
    ("no_v_scale", "the values are codes too: multiply each V code by its scale (v_scale), "
                   "as you did for K."),
    ("v_with_k_scale", "V has scales of its own: read v_scale for V, not k_scale."),
    ("static_index", "with per-token scales (per_token = 1) a row's scale is k_scale[slot * "
                     "num_kv_heads + kv_head], laid out like the pages, not k_scale[kv_head]."),
    ("unsigned", "the codes are signed (-127..127): read them as signed char, not unsigned."),
]


def _read_case(comp, per_token, seq_lens, heads, kv_heads, dim, page_size, seed):
    prob = paged_problem(seed, mode="decode", seq_lens=seq_lens, num_heads=heads,
                         num_kv_heads=kv_heads, head_dim=dim, page_size=page_size)
    rng = case_rng(seed)
    shape = prob.k_cache.shape
    k_codes = rng.integers(-127, 128, shape).astype(np.int8)
    v_codes = rng.integers(-127, 128, shape).astype(np.int8)
    sshape = shape[:3] if per_token else (kv_heads,)
    k_scale = rng.uniform(0.002, 0.01, sshape).astype(np.float32)
    v_scale = rng.uniform(0.02, 0.05, sshape).astype(np.float32)   # unlike K's
    out = poisoned(prob.q.shape)
    scale = np.float32(1 / np.sqrt(dim))
    (got,) = comp.get().launch(
        (heads, len(seq_lens)), (1,),
        (prob.q, k_codes, v_codes, k_scale, v_scale, prob.block_tables, prob.seq_lens, out,
         np.int32(heads), np.int32(kv_heads), np.int32(dim), np.int32(page_size),
         np.int32(prob.block_tables.shape[1]), np.int32(per_token), scale), outputs=(7,))

    def ref(bug=None):
        ks = dequantized(k_codes, k_scale, per_token, bug, "k")
        vs = dequantized(v_codes, k_scale if bug == "v_with_k_scale" else v_scale, per_token,
                         bug, "v")
        return reference_decode(prob.q, ks, vs, prob.block_tables, prob.seq_lens, scale)

    expected = ref()
    if np.isnan(got).all():
        if "TODO" in comp.source:
            raise NotAttempted(NOTHING_WRITTEN)
        raise Mismatch("every output is NaN", "each token adds exp(s - m) times its dequantized "
                       "V row to acc and exp(s - m) to l; out = acc / l.")
    diff = describe_difference(got, expected, ("sequence", "head", "dim"), atol=1e-4, rtol=1e-3)
    if diff is None:
        return
    hint = diagnose(got, expected, [(h, lambda bug=bug: ref(bug)) for bug, h in _READ_MISTAKES],
                    atol=1e-4, rtol=1e-3)
    raise Mismatch(diff.message(), hint or (
        "K element d of a token is k_cache[row + d] * its scale, V likewise with v_scale; the "
        "scale is k_scale[kv_head] (static) or k_scale[slot * num_kv_heads + kv_head]."))


def dequant_decode(source: str, device: str = "auto") -> CheckResult:
    """Check the decode kernel over int8 pages (grid (num_heads, batch), one thread)."""
    comp = _Compiled(source, "dequant_decode", device)
    cases = [
        ("static scales, GQA 4/2", dict(per_token=0, seq_lens=[13, 1, 6], heads=4, kv_heads=2,
                                        dim=16, page_size=4, seed=5)),
        ("per-token scales, MQA", dict(per_token=1, seq_lens=[9, 17], heads=3, kv_heads=1,
                                       dim=24, page_size=5, seed=6)),
        ("per-token scales, one token per page", dict(per_token=1, seq_lens=[5, 2], heads=2,
                                                      kv_heads=2, dim=8, page_size=1, seed=7)),
    ]
    return run_cases("dequant_decode", "dequant_decode: attention over int8 pages", [
        Case(name, {k: v for k, v in p.items() if k != "seed"}, lambda p=p: _read_case(comp, **p))
        for name, p in cases])
