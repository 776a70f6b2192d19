"""Checks for lesson 11's Tasks 1 and 2: per-token scales (NumPy) and quantize on write
(CUDA C, int8 pages). Task 3, dequantize on read, is in checks_dequant.py.

kv_scales: amax over head_dim / qmax per (token, KV head), 1 for an all-zero row.
quantize_write: one warp per (token, KV head) stores int8 codes rint(x / scale), clamped to
+-127 (a NaN input as 0), at the token's slot; per-token scales are computed and written to
k_scale[slot][kv_head], static ones read from k_scale[kv_head].

The cases hold values that tell the classic mistakes apart: exact halves (rounding),
values far past 127 scales of either sign (saturation, symmetric range), rows whose largest
magnitude is negative (abs), all-zero rows, rows down to 6e-8 (no threshold or floor on the
scale, in both tasks), NaN inputs, scattered slots and a -1 padding row. A row of zeros is
stored exactly whatever its scale, so any finite positive scale passes there (1, or an epsilon
floor as vLLM's).
"""
from __future__ import annotations

import numpy as np

from ..quant import per_token_scales
from ..words import ranges
from .checks_kernels import _Compiled
from .compare import call_on_copies, describe_difference, diagnose, fmt
from .faults import kernel_message
from .kernel_runner import OutOfBoundsWrite, poisoned
from .quant_variants import FILL, WARP, nan_at, quantize_reference
from .quant_write_hints import WRITE_MISTAKES, with_constant_factor
from .report import Case, CheckResult, Mismatch, NotAttempted, run_cases
from .seeds import case_rng
from .small_rows import small_rows, small_rows_hint
from .stub_params import stub_buffer
from .write_layout_hints import codes_by_head_offset_hint, scale_at_head_hint, slot_only_hint

NOTHING_WRITTEN = ("the kernel wrote nothing (its outputs still hold what the check filled "
                   "them with): write the kernel body where the // TODO is")


def _any_scale_for_zeros(got, expected, zero):
    """`expected` with the learner's own scale where the row is all zeros, if finite and > 0."""
    return np.where(zero & np.isfinite(got) & (got > 0), got, expected)


# -- task 1: the scales, in NumPy ----------------------------------------------------------

def _scale_variants(x, qmax):
    ax = np.abs(x)
    amax = ax.max(-1)
    fp8 = qmax == 448

    def per_row(a, q=qmax):
        return np.broadcast_to(np.where(a > 0, a / q, 1.0), x.shape[:2])

    with np.errstate(all="ignore"):
        return [
            ("the scale comes from the largest MAGNITUDE: amax = max |x| (a row whose biggest "
             "value is negative, like here, needs abs).",
             np.where(x.max(-1) > 0, x.max(-1) / qmax, 1.0)),
            ("scale = amax / qmax (a code times the scale gives the value back), not amax * qmax.",
             np.where(amax > 0, amax * qmax, 1.0)),
            ("scale = amax / qmax (x = code * scale), not its inverse qmax / amax.",
             np.where(amax > 0, qmax / amax, 1.0)),
            ("the range of int8 here is +-127 (symmetric: -128 is not used), of e4m3 +-448: "
             "divide by the qmax you are given.", per_row(amax, qmax + 1)),
            ("divide by the qmax you are given: 448 for fp8 e4m3 here, not int8's 127.",
             per_row(amax, 127) if fp8 else None),
            ("e4m3fn (the format here) reaches 448; 240 is the largest e4m3fnuz value: divide "
             "by the qmax you are given.", per_row(amax, 240) if fp8 else None),
            ("57344 is the largest e5m2 value; this cache is e4m3 (448): divide by the qmax "
             "you are given.", per_row(amax, 57344) if fp8 else None),
            ("a row of zeros has amax 0 and would get scale 0 (then 0 / 0 = NaN codes): give "
             "it scale 1.", amax / qmax),
            ("a row of zeros needs a finite scale: yours is NaN there (0 / 0); give it scale 1.",
             np.where(amax > 0, amax / qmax, np.nan)),
            ("scale = amax / qmax: the largest magnitude becomes code qmax (the codes run from "
             "-qmax to qmax), not the number of levels 2 * qmax + 1.",
             per_row(amax, 2 * qmax + 1)),
            *[("scale = max |x| / qmax, not the range (max - min) over the levels: that is an "
               "asymmetric format's scale, which needs a zero point; these codes are "
               "symmetric around 0 (x = code * scale).", per_row(x.max(-1) - x.min(-1), n))
              for n in (2 * qmax, 2 * qmax + 1)],
            ("one scale per (token, KV head): the amax over the whole token (all heads) mixes "
             "heads whose ranges differ.", per_row(ax.max((-1, -2))[:, None])),
            ("one scale per (token, KV head): these are one amax per head over every token (a "
             "static scale); reduce over head_dim only.", per_row(ax.max((0, 2))[None, :])),
            ("one scale per (token, KV head): this is the amax of the whole tensor for every "
             "row; reduce over head_dim only.", per_row(ax.max())),
            ("return float32 scales: float16 keeps only 11 significant bits of each.",
             per_token_scales(x, "fp8_e4m3" if fp8 else "int8").astype(np.float16)),
        ]


def _scales_case(fn, x, qmax) -> None:
    expected = per_token_scales(x, "int8" if qmax == 127 else "fp8_e4m3").astype(np.float64)
    got = call_on_copies("kv_scales", fn, {"x": x}, qmax)
    if got is None:
        raise Mismatch("returned None", "return the scales, shape [n_tokens, num_kv_heads].")
    returned = str(got.dtype) if isinstance(got, np.ndarray) else f"a {type(got).__name__}"
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        n, heads, dim = x.shape
        hint = {(heads, dim): "you reduced over the tokens (axis 0): that is one scale per "
                              "channel for the whole batch; reduce over head_dim (the last axis).",
                (n, dim): "you reduced over the heads (axis 1); reduce over head_dim (the last "
                          "axis): one scale per (token, KV head).",
                (n, heads, 1): "keepdims=True leaves an axis of 1 at the end: return "
                               "[n_tokens, num_kv_heads].",
                (): "one scale per (token, KV head), not one for everything: reduce over the "
                    "last axis only."}.get(got.shape, "one scale per (token, KV head): shape "
                                                      "[n_tokens, num_kv_heads].")
        raise Mismatch("wrong shape", hint, str(expected.shape), str(got.shape))
    expected = _any_scale_for_zeros(got, expected, np.abs(x).max(-1) == 0)
    diff = describe_difference(got, expected, ("token", "head"), atol=0, rtol=1e-6,
                               unwritten=False)   # a Python result: no poison to leave
    if diff is None and returned != "float32":
        # the right numbers, but the kernels read k_scale through a float*: float64 bytes
        # there are read as pairs of wrong floats
        raise Mismatch(f"the scales are right but {returned}", "return float32 scales, as "
                       "the spec asks (an array, .astype(np.float32)): the kernels read them "
                       "through a float*, where another dtype's bytes are other numbers.",
                       "a float32 array", returned)
    if diff is None:
        return
    hint = diagnose(got, expected, _scale_variants(x, qmax), atol=0, rtol=1e-6) or \
        small_rows_hint(got, expected, np.abs(x).max(-1)) or \
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
    small = small_rows(rows(8, 3, 20, spread=False))
    cases.append(("rows from 6e-8 to 10 in magnitude", small, 448.0))
    return run_cases("kv_scales", "kv_scales: one scale per (token, KV head)", [
        Case(name, {"shape": x.shape, "qmax": q}, lambda x=x, q=q: _scales_case(fn, x, q))
        for name, x, q in cases])


# -- task 2: quantize on write, in CUDA C --------------------------------------------------

def _write_fault_hint(slots, block, buffer, index) -> str | None:
    """The hint for a write outside k_scale or k_cache, keyed on where it landed: in a
    padding row's block, or before the array's start while padding rows exist (the executor
    found the write only after the launch, so no block is known; slot -1 is the one negative
    index this kernel computes), or elsewhere in k_scale (its layout)."""
    padding = np.flatnonzero(slots < 0).tolist()
    if isinstance(block, (tuple, list)) and block and block[0] in padding:
        return _padding_hint(int(block[0]))
    if not block and padding and buffer in ("k_scale", "k_cache") and \
            index is not None and index < 0:
        return _padding_hint(padding[0])
    return K_SCALE_LAYOUT if buffer == "k_scale" else None


def _launch_write(comp, k, slots, heads, dim, per_token, k_scale, cache):
    """(k_scale, k_cache) after the launch; a fault in a padding row's block, or in k_scale,
    gets its own hint."""
    try:
        return comp.get().launch((len(slots), heads), (WARP,), (
            k, slots, np.int32(heads), np.int32(dim), np.int32(per_token), k_scale.copy(),
            cache), outputs=(5, 6))
    except OutOfBoundsWrite as exc:   # (the GPU: a write into the bands around an argument)
        buffer = {5: "k_scale", 6: "k_cache"}.get(exc.arg_index)
        hint = _write_fault_hint(slots, None, buffer, exc.index)
        if hint is None:
            raise
        raise Mismatch(exc.message, hint) from exc
    except Exception as exc:
        if type(exc).__name__ != "KernelFault":
            raise
        message = kernel_message(exc)
        hint = _write_fault_hint(slots, getattr(exc, "block", None), stub_buffer(exc),
                                 getattr(exc, "index", None)) \
            or _row_end_hint(exc, heads, dim)
        if hint is None:
            raise
        raise Mismatch(message, hint) from exc


def _row_end_hint(exc, heads: int, dim: int) -> str | None:
    """The hint for a read of k past the end of the faulting block's own row: element d >=
    head_dim of row (token, head), a loop over d that runs to d <= head_dim."""
    block, index = getattr(exc, "block", None), getattr(exc, "index", None)
    if stub_buffer(exc) != "k" or not block or index is None:
        return None
    d = index - (int(block[0]) * heads + int(block[1])) * dim
    if not dim <= d < dim + WARP:
        return None
    return (f"the block of token {block[0]}, head {block[1]} read element d = {d} of its row "
            f"of k, past its last, d = {dim - 1}: the loops over d stop at d < head_dim "
            "(d <= head_dim reads one element past the row).")


def _padding_hint(token: int) -> str:
    return (f"slot_mapping[{token}] = -1 marks a padding row: return before writing anything "
            f"for it (slot -1 indexes before the cache and its scales).")


K_SCALE_LAYOUT = ("k_scale holds one static scale per head, [num_kv_heads], when per_token = 0 "
                  "(read k_scale[head], write nothing), and per-token scales laid out like the "
                  "pages when per_token = 1 (k_scale[slot * num_kv_heads + head]).")


def _write_inputs(rng, n, heads, dim, ties, outliers, special):
    k = (rng.standard_normal((n, heads, dim)) * rng.uniform(0.2, 5, (n, heads, 1)))
    k = k.astype(np.float32)
    k[0, 0, 1] = -3 * np.abs(k[0, 0]).max()                      # negative largest magnitude
    if dim > 2 * WARP:   # the largest magnitude where lane 0's second element starts (d = 32):
        k[-1, -1, WARP] = 3 * np.abs(k[-1, -1]).max()   # a max loop that skips it is seen
    if ties:   # exact halves of the (power of two) scale: rounding decides
        k = ((rng.integers(-60, 60, k.shape) + 0.5) * 0.03125).astype(np.float32)
    if outliers:   # 40 / 0.03125 = 1280 > 127, on both sides
        k[1::3, :, 2] = 40.0
        k[2::3, :, 3] = -40.0
    if special == "zero":
        k[2, -1] = 0.0
    if special == "nan":
        k[1, 0, 5] = k[5, -1, 0] = np.nan
        # lane 2: the row's largest magnitude, then a NaN that a comparison max keeps
        k[4, 0, 2], k[4, 0, WARP + 2] = 3 * np.nanmax(np.abs(k[4, 0])), np.nan
    if special == "small":   # rows from 6e-8 to 10: no threshold or floor on the scale
        k = small_rows(k)
    return k


def _nan_hint(k, slots, diff, cache_shape):
    """The hint when the only wrong codes are those of NaN inputs."""
    nan = nan_at(k, slots, cache_shape)
    if not nan.any() or not (diff.bad <= nan).all():
        return None
    return ("a NaN input is stored as code 0, as quant.encode does: test x != x before the "
            "clamp (fminf / fmaxf turn a NaN into -127 or 127, and a cast of NaN is undefined).")


def _unwritten_hint(got_cache, diff):
    """When every wrong code still holds the fill value: which dims were never written."""
    if not (got_cache[diff.bad] == FILL).all():
        return None   # (a computed code may equal the fill value: no evidence then)
    dims, head_dim = diff.affected("dim")
    fix = ("the warp's lanes stride over head_dim, d += 32."   # each lane stored one element
           if dims == list(range(WARP, head_dim)) else "store every d from 0 to head_dim - 1.")
    return (f"some codes were never written (they still hold the check's fill value {FILL}), "
            f"at dims {ranges(dims)}: {fix}")


def _slot0_hint(diff, never, slots):
    """When every wrong entry is slot 0's and was never written (`never`: still the fill)."""
    at0 = np.zeros(never.shape, bool)
    at0[0, 0] = True                      # page 0, offset 0
    if 0 not in slots or not (diff.bad <= at0).all() or not never[diff.bad].all():
        return None
    return ("slot 0 (page 0, offset 0) was never written: it is a slot like any other; only a "
            "negative slot (-1) is a padding row to skip (slot < 0, not slot <= 0).")


def _other_row_hint(got, want, k, rows) -> str | None:
    """When every wrong per-token scale is the scale of another row of k: a row read, or a
    scale stored, at a wrong offset."""
    heads = k.shape[1]
    got, want = got.reshape(-1, heads)[rows], want.reshape(-1, heads)[rows]
    amax = np.fmax.reduce(np.abs(k), -1).ravel()
    scales = np.where(amax > 0, amax / np.float32(127), 1).astype(np.float32)
    wrong = ~np.isclose(got, want, rtol=1e-6, atol=0)
    if not wrong.any() or not np.isclose(got[wrong][:, None], scales, rtol=1e-6, atol=0) \
            .any(axis=1).all():
        return None
    return ("each wrong scale is that of another (token, head) row of k: the row of (token, "
            "head) starts at k + (token * num_kv_heads + head) * head_dim, and its scale goes to "
            "k_scale[slot * num_kv_heads + head]; check the offset of each.")


def _nan_row_hint(diff, k, slots) -> str | None:   # (only NaN rows' scales are wrong)
    if not (diff.bad <= nan_at(k, slots, diff.bad.shape, rows=True)).all():
        return None
    return ("only the rows holding a NaN got a wrong scale: leave the NaN out of the amax "
            "without losing what came before it: fmaxf(amax, fabsf(x)) skips a NaN operand, "
            "while a comparison (amax > x ? amax : x) is false for a NaN and makes it the amax.")


def _check_scales(got, want, k, slots, variants) -> None:
    """Per-token scales: a zero row may hold any finite positive scale (it stores zeros)."""
    live = slots >= 0
    zero = np.zeros(want.shape, bool)
    zero.reshape(-1, k.shape[1])[slots[live]] = np.fmax.reduce(np.abs(k[live]), -1) == 0
    want = _any_scale_for_zeros(got, want, zero)
    diff = describe_difference(got, want, ("page", "offset", "head"), atol=0, rtol=1e-6)
    if diff is None:
        return
    rows = slots[live]   # (the live rows only: the other slots hold the check's poison)
    hint = _slot0_hint(diff, np.isnan(got), slots) or diagnose(
        got, want, [(h, lambda f=f: f()[1]) for h, f in variants], atol=0, rtol=1e-6) \
        or slot_only_hint(got, want, k.shape[1], rows) or _nan_row_hint(diff, k, slots) \
        or scale_at_head_hint(got, want, rows) \
        or _other_row_hint(got, want, k, rows) \
        or small_rows_hint(got.reshape(-1, k.shape[1])[rows], want.reshape(-1, k.shape[1])[rows],
        np.fmax.reduce(np.abs(k[live]), -1), "127")
    raise Mismatch("k_scale: " + diff.message("scales"), hint or (
        "scale = max |x| over the row's head_dim / 127 (1 for a zero row), written by one lane "
        "at k_scale[slot * num_kv_heads + head]."))


def _check_codes(got, want, k, slots, variants) -> None:
    diff = describe_difference(got, want, ("page", "offset", "head", "dim"), atol=0, rtol=0)
    if diff is None:
        return
    hint = _slot0_hint(diff, got == FILL, slots) or _nan_hint(k, slots, diff, want.shape) \
        or with_constant_factor(diagnose(got, want, [(h, lambda f=f: f()[0])
                                                     for h, f in variants], atol=0, rtol=0),
                                got, k, slots) \
        or slot_only_hint(got, want, k.shape[1], slots[slots >= 0], k.shape[2]) \
        or codes_by_head_offset_hint(got, want, slots[slots >= 0])
    raise Mismatch("k_cache: " + diff.message("codes"), hint or _unwritten_hint(got, diff) or (
        "code = rintf(x / scale) clamped to [-127, 127], at k_cache[(slot * num_kv_heads + "
        "head) * head_dim + d]; a slot of -1 is skipped."))


def _write_case(comp, per_token, n, heads, dim, page_size, seed, ties=False, outliers=False,
                special=None, num_pages=None):
    rng = case_rng(seed)
    num_pages = num_pages or -(-n // page_size) + 2
    slots = rng.permutation(num_pages * page_size)[:n].astype(np.int64)
    slots[n // 2] = -1                                           # a padding row
    k = _write_inputs(rng, n, heads, dim, ties, outliers, special)
    static = np.full(heads, 0.03125, np.float32) * (1 + np.arange(heads, dtype=np.float32))
    cache_shape = (num_pages, page_size, heads, dim)
    k_scale = poisoned((num_pages, page_size, heads)) if per_token else static
    got_scale, got_cache = _launch_write(comp, k, slots, heads, dim, per_token, k_scale,
                                         np.full(cache_shape, FILL, np.int8))
    if (got_cache == FILL).all() and (not per_token or np.isnan(got_scale).all()):
        if "TODO" in comp.source:
            raise NotAttempted(NOTHING_WRITTEN)
        raise Mismatch("nothing was written", "store every code at its slot: k_cache[(slot * "
                       "num_kv_heads + head) * head_dim + d].")
    want_cache, want_scale = quantize_reference(k, slots, cache_shape, per_token, k_scale)
    variants = [(hint, lambda bug=bug: quantize_reference(k, slots, cache_shape, per_token,
                                                          k_scale, bug))
                for bug, hint in WRITE_MISTAKES]
    if per_token:
        _check_scales(got_scale, want_scale, k, slots, variants)
    elif not np.array_equal(got_scale, k_scale):   # (later blocks then read what it wrote)
        head = int(np.flatnonzero(got_scale != k_scale)[0])
        raise Mismatch(f"per_token = 0, yet k_scale[{head}] changed: the static scale "
                       f"{fmt(k_scale[head])} is now {fmt(got_scale[head])}",
                       "per_token = 0: k_scale holds the static scales, one per head, given: "
                       "read k_scale[head] and write nothing there (only per-token scales are "
                       "computed and stored).", fmt(k_scale[head]), fmt(got_scale[head]))
    _check_codes(got_cache, want_cache, k, slots, variants)


def quantize_write(source: str, device: str = "auto") -> CheckResult:
    """Check the quantize-on-write kernel (grid (n_tokens, num_kv_heads), 32 threads)."""
    comp = _Compiled(source, "quantize_write", device)
    cases = [
        ("per-token scales, scattered slots, a padding row, a zero row",
         dict(per_token=1, n=9, heads=2, dim=40, page_size=4, seed=1, special="zero")),
        # 64 KiB of codes: the CPU executor's cache then starts on a page boundary behind a
        # guard, so a write for the padding row (slot -1, before the cache) faults there
        ("static scales, exact halves (rounding)", dict(per_token=0, n=6, heads=2, dim=32,
                                                        page_size=4, seed=2, ties=True,
                                                        num_pages=256)),
        ("static scales, values past the range (saturation)", dict(per_token=0, n=8, heads=3,
                                                                   dim=24, page_size=5, seed=3,
                                                                   outliers=True)),
        ("per-token scales, head_dim 80 (more than a warp)", dict(per_token=1, n=5, heads=3,
                                                                  dim=80, page_size=2, seed=4)),
        # the largest head_dim models use: a loop of a fixed number of dims per lane (3 covers
        # head_dim 96, 4 covers 128) leaves the row's last dims unwritten
        ("per-token scales, head_dim 256 (8 dims per lane)", dict(per_token=1, n=3, heads=2,
                                                                  dim=256, page_size=2,
                                                                  seed=5)),
        ("per-token scales, NaN inputs (stored as 0)", dict(per_token=1, n=7, heads=2, dim=36,
                                                             page_size=4, seed=8, special="nan")),
        ("per-token scales, rows from 6e-8 to 10 in magnitude",
         dict(per_token=1, n=10, heads=3, dim=24, page_size=4, seed=10, special="small")),
    ]
    hidden = ("seed", "ties", "outliers", "special", "num_pages")
    return run_cases("quantize_write", "quantize_write: int8 codes and scales on write", [
        Case(name, {k: v for k, v in p.items() if k not in hidden},
             lambda p=p: _write_case(comp, **p)) for name, p in cases])
