"""Workbook 11's kernels done right and with the classic mistakes switched on (checks_quant,
checks_dequant).

`quantize_reference(..., bug)` is what the quantize-on-write kernel leaves in k_cache and
k_scale: the spec's codes for `bug` None, else a known-wrong variant (quant_write_hints.py
pairs each bug with its hint). The warp's lanes are modelled: lane L reduces the amax of
elements d = L, L + 32, ... (or of d = L alone) and then the shuffle tree runs, so a missing,
one-way or partial reduction (from offset 8, or down to 2) gives the scales each lane really
divides by.

`read_reference(..., bug)` is the decode output over int8 pages read with the codes turned
into values as the kernel does (`READ_MISTAKES`): each of K and V as code * scale, the code
alone, code / scale, code * scale * scale or its byte read unsigned, from its own or the
other's scale array, at [slot][kv_head], [kv_head], [0], [slot] or [position in the
sequence][kv_head]; or read right and the online softmax's update wrong (acc, l or both not
rescaled, the max not kept, exp2f for expf in the weight, the rescale or both), or with the
scales of query head h read at KV head h / num_kv_heads or h % num_kv_heads (or its codes too,
at h % num_kv_heads), or with the softmax scale 1/sqrt(head_dim) worked out in the kernel
instead of its argument, or applied twice.
"""
from __future__ import annotations

import numpy as np

from ..addressing import token_slots
from ..reference import reference_decode
from .compare import kv_head_rule
from .variants import attention_variant
from .warp_trees import sources

WARP = 32
FILL = 85   # what the check writes into k_cache first: an unwritten code shows as 85


# -- quantize on write ---------------------------------------------------------------------

def _lane_amax(x, bug):
    """float32 [rows, heads, 32]: the amax each lane holds after the warp's reduction."""
    rows, heads, dim = x.shape
    mags = x if bug == "no_abs" else np.abs(x)
    padded = np.zeros((rows, heads, -(-dim // WARP) * WARP), np.float32)
    padded[..., :dim] = mags
    per_lane = padded.reshape(rows, heads, -1, WARP)
    if bug == "amax_no_stride":   # (lane L read d = L alone)
        per_lane = per_lane[:, :, :1]
    if bug == "amax_last":   # (lane L's last d = L + 32 k below dim)
        last = (dim - 1 - np.arange(WARP)) // WARP
        lanes = np.where(last >= 0, per_lane[:, :, np.maximum(last, 0), np.arange(WARP)], 0)
    else:
        lanes = np.fmax.reduce(per_lane, axis=2)  # fmaxf skips NaN
    offsets = {"no_reduce": (), "half_warp": (8, 4, 2, 1), "stop_at_2": (16, 8, 4, 2)}.get(
        bug, (16, 8, 4, 2, 1))
    for offset in offsets:
        got = lanes[..., sources("down" if bug == "reduce_down" else "xor", offset)]
        lanes = got if bug == "shfl_assigned" else np.fmax(lanes, got)
    return lanes


def _scale_of(amax, bug):
    with np.errstate(all="ignore"):
        if bug == "no_zero_guard":
            return (amax / np.float32(127)).astype(np.float32)
        qmax = np.float32(128 if bug == "div128" else 127)
        scale = amax * qmax if bug == "times127" else amax / qmax
        return np.where(amax > 0, scale, np.float32(1)).astype(np.float32)


def _codes(x, scale, bug):
    """int8 codes of rows `x` divided by `scale` (per element), the way `bug` rounds and clamps."""
    with np.errstate(all="ignore"):
        v = {"multiply": x * scale, "twice": x / scale / scale, "no_scale": x}.get(
            bug, x / scale).astype(np.float32)
        r = np.nan_to_num({"trunc": np.trunc(v), "floor": np.floor(v),
                           "half_up": np.floor(v + 0.5),
                           "half_away": np.sign(v) * np.floor(np.abs(v) + 0.5)}.get(
                               bug, np.rint(v)), nan=0.0)
        low = {"clamp_128": -128, "unsigned": 0}.get(bug, -127)
        codes = (r.astype(np.int64) + 128) % 256 - 128 if bug in ("wrap", "wrap_clamp") \
            else np.clip(r, low, 127)
        if bug == "wrap_clamp":   # (the wrapped code clamped: -128 becomes -127)
            codes = np.maximum(codes, -127)
        if bug == "clamp_high_128":   # clamped at 128, whose conversion to int8 wraps
            codes = np.where(r >= 128, -128, codes)
    return np.where(np.isnan(x), 0, codes).astype(np.int8)   # a NaN input is stored as 0


def quantize_reference(k, slots, cache_shape, per_token, k_scale, bug=None):
    """(codes, scales) the kernel must leave, for `bug` None; else a known-wrong variant."""
    cache = np.full(cache_shape, FILL, np.int8)
    scales = k_scale.copy()
    heads, dim = k.shape[1:]
    live = np.flatnonzero(slots >= 0)
    x = k[live][:, [0] * heads] if bug == "row_head0" else \
        np.repeat(k.reshape(-1, 1, dim)[live], heads, 1) if bug == "row_token_only" else k[live]
    if per_token:
        amax = _lane_amax(x, bug)
        lane_scale = _scale_of(amax, bug)
        where = live if bug == "token_index" else slots[live]
        written = 1 / lane_scale[..., 0] if bug == "inverse" else \
            amax[..., 0] if bug == "stored_amax" else lane_scale[..., 0]
        scales.reshape(-1, heads)[where] = written                # lane 0 writes it
        divisor = lane_scale[..., np.arange(dim) % WARP]           # lane d % 32 divides
    else:
        static = k_scale[:1] if bug == "static_head0" else \
            k_scale / np.float32(127) if bug == "static_div127" else k_scale
        divisor = np.broadcast_to(static[:, None], x.shape)
    rows = live if bug == "codes_token_index" else slots[live]
    cache.reshape(-1, heads, dim)[rows] = _codes(x, divisor, bug)
    return cache, scales


def nan_at(k, slots, shape, rows=False):
    """Where a cache laid out as `shape` holds the live slots' NaN inputs of `k` (rows: the
    heads' rows, one scale each, that hold a NaN)."""
    nan = np.isnan(k[slots >= 0])
    nan = nan.any(-1) if rows else nan
    mask = np.zeros(shape, bool)
    mask.reshape(-1, *nan.shape[1:])[slots[slots >= 0]] = nan
    return mask


# -- dequantize on read --------------------------------------------------------------------

_RIGHT = ("times", "own", "slot")   # code * its own scale array at [slot][kv_head]
_HOW = {"none": "multiply each {X} code by its scale ({s}): a code alone is not a value.",
        "divide": "a code's value is code * scale: multiply the {X} codes by {s}; do not "
                  "divide.",
        "twice": "apply {s} once: these {X} values were multiplied by the scale twice.",
        "per_qmax": "a code's value is code * scale: the scale is already amax / 127, so "
                    "dividing the {X} values by 127 again shrinks them 127 times.",
        "times_qmax": "a code's value is code * scale ({s}), not code * scale * 127: the "
                      "scale is already amax / 127.",
        # (K alone, V alone or both: a cast where one cache is read is as likely as in both)
        "unsigned": "the codes are signed (-127..127): read the {X} codes as signed char, not "
                    "unsigned."}


def _read_mistakes():
    """(bug, hint) pairs; a bug is ((how, scales, index) for K, the same for V, softmax)."""
    out = [((_RIGHT, ("times", "other", "slot"), True),
            "V has scales of its own: read v_scale for V, not k_scale."),
           ((("times", "other", "slot"), _RIGHT, True),
            "K has scales of its own: read k_scale for K, not v_scale."),
           ((("times", "other", "slot"), ("times", "other", "slot"), True),
            "the scales are swapped: K codes take k_scale, V codes v_scale."),
           ((("times", "own", "head"), ("times", "own", "head"), True),
            "with per-token scales (per_token = 1) a row's scale is k_scale[slot * "
            "num_kv_heads + kv_head], laid out like the pages, not k_scale[kv_head]."),
           ((("times", "own", "position"), ("times", "own", "position"), True),
            "a per-token scale belongs to the token's slot: k_scale[slot * num_kv_heads + "
            "kv_head], not to its position t in the sequence."),
           ((("times", "own", "no_head"), ("times", "own", "no_head"), True),
            "one per-token scale per (slot, KV head): k_scale[slot * num_kv_heads + kv_head], "
            "not k_scale[slot]."),
           ((("times", "own", "zero"), ("times", "own", "zero"), True),
            "per_token = 0: each KV head has its own static scale, k_scale[kv_head], not "
            "k_scale[0] for every head (one scale for the whole tensor)."),
           ((_RIGHT, _RIGHT, False),
            "the score is q . k times the softmax scale (1 / sqrt(head_dim), the kernel's "
            "`scale`): it is still needed with dequantized keys."),
           ((_RIGHT, _RIGHT, "twice"),
            "the softmax scale was applied twice (q . k * scale * scale): multiply the score "
            "by `scale` once.")]
    one_half = ("with per-token scales (per_token = 1) {X}'s per-token scale is {s}[slot * "
                "num_kv_heads + kv_head], laid out like the pages, not {wrong} ({Y}'s index "
                "is right).")
    for index, wrong in (("head", "{s}[kv_head]"), ("no_head", "{s}[slot]"),
                         ("position", "{s}[t * num_kv_heads + kv_head] (t is the token's "
                                      "position in the sequence, not its slot)")):
        out += [((("times", "own", index), _RIGHT, True),
                 one_half.format(X="K", Y="V", s="k_scale", wrong=wrong.format(s="k_scale"))),
                ((_RIGHT, ("times", "own", index), True),
                 one_half.format(X="V", Y="K", s="v_scale", wrong=wrong.format(s="v_scale")))]
    for how, text in _HOW.items():
        out += [(((how, "own", "slot"), _RIGHT, True), text.format(X="K", s="k_scale")),
                ((_RIGHT, (how, "own", "slot"), True), text.format(X="V", s="v_scale")),
                (((how, "own", "slot"), (how, "own", "slot"), True),
                 text.format(X="K and V", s="k_scale and v_scale"))]
    return out


# The online softmax done wrong with the values read right (a bug named by a string).
_SOFTMAX_MISTAKES = [
    ("acc", "rescale acc too: acc[d] = acc[d] * e^(m - m_new) + e^(s - m_new) * v (its old "
            "terms were weighted against the old max)."),
    ("l", "rescale l too: l = l * e^(m - m_new) + e^(s - m_new), like acc."),
    ("both", "neither acc nor l was rescaled (a rescale e^(m - m_new) of 1, as when m is set "
             "to m_new before the rescale is worked out): compute e^(m - m_new) with the old "
             "m, multiply acc and l by it, and only then set m = m_new."),
    ("m", "keep the running max: m = m_new after each token (with m left at -inf every "
          "token's e^(m - m_new) is 0, so only the last token counts)."),
    ("exp2_w", "the weight was exp2f(s - m_new) = 2^(s - m_new) while the rescale is "
               "expf(m - m_new): use one base for both (expf, or exp2f of scores times "
               "log2(e)), or old and new terms are weighed on different scales."),
    ("exp2_rescale", "the rescale was exp2f(m - m_new) = 2^(m - m_new) while the weight is "
                     "expf(s - m_new): use one base for both (expf, or exp2f of scores times "
                     "log2(e)), or old and new terms are weighed on different scales."),
    ("w_no_max", "subtract the running max in the weight too: e^(s - m_new), not e^s (the "
                 "old terms are rescaled to the new max, so e^s is weighed on another "
                 "scale)."),
    ("exp2", "exp2f(x) is 2^x, not e^x: with exp2f for both the weight and the rescale, "
             "multiply the score by log2(e) = 1.4427 first (or use expf)."),
]
# The scales read at another KV head than the codes' (a bug named by a ("scale_head", how)).
_SCALE_HEAD_MISTAKES = [
    (("scale_head", "div"), "the scales were read at KV head h / num_kv_heads; "
                            + kv_head_rule() + ", h / group (a group is consecutive query "
                            "heads): read k_scale and v_scale at that KV head, as the codes "
                            "are."),
    (("scale_head", "mod"), "the scales were read at KV head h % num_kv_heads; "
                            + kv_head_rule() + " (a group is consecutive query heads): read "
                            "k_scale and v_scale at that KV head, as the codes are."),
]
# The codes and the scales both read at another KV head (the stub's kv_head line changed).
_CODES_HEAD_MISTAKES = [
    (("kv_head", how), kv_head_rule() + ", h / group (a group is consecutive query "
                       f"heads), not {wrong}: the "
                       "codes and the scales were read at another KV head.")
    for how, wrong in (("div", "h / num_kv_heads"), ("mod", "h % num_kv_heads"))]
READ_MISTAKES = _read_mistakes() + _SOFTMAX_MISTAKES + _SCALE_HEAD_MISTAKES + \
    _CODES_HEAD_MISTAKES + [
    ((_RIGHT, _RIGHT, "own"), "multiply by the kernel's argument `scale`, not 1/sqrt(head_dim) "
                              "worked out in the kernel: the caller chooses the scale (this "
                              "case's is not 1/sqrt(head_dim)).")]


def _positions(prob, num_slots):
    """int [num_slots]: each used slot's token position in its sequence (0 where unused)."""
    at = np.zeros(num_slots, np.int64)
    for row, n in zip(prob.block_tables, prob.seq_lens):
        at[token_slots(row, int(n), prob.k_cache.shape[1])] = np.arange(int(n))
    return at


def _scales_at(scales, per_token, index, prob):
    """float64 [num_pages, page_size, num_kv_heads]: the scale read for each cache row."""
    shape = prob.k_cache.shape[:3]
    heads, flat = shape[2], scales.reshape(-1).astype(np.float64)
    if not per_token and index == "zero":
        return np.broadcast_to(flat[:1], shape)
    if not per_token or index == "head":
        return np.broadcast_to(flat[:heads], shape)
    slots = np.arange(shape[0] * shape[1])
    where = {"position": _positions(prob, slots.size)[:, None] * heads + np.arange(heads),
             "no_head": np.repeat(slots[:, None], heads, 1)}.get(index)
    return flat.reshape(shape) if where is None else flat[where].reshape(shape)


def _values(codes, scales, how):
    c = (codes.view(np.uint8) if how == "unsigned" else codes).astype(np.float64)
    return {"none": c, "divide": c / scales[..., None],
            "twice": c * scales[..., None] ** 2, "per_qmax": c * scales[..., None] / 127,
            "times_qmax": c * scales[..., None] * 127}.get(how, c * scales[..., None])


def read_reference(prob, codes, scales, per_token, softmax_scale, bug=None):
    """Decode output over the int8 pages `codes` (K, V) with `scales` (K's, V's), read the way
    `bug` reads them (None: code * scale, the spec)."""
    if isinstance(bug, str):
        return _online_softmax(prob, codes, scales, per_token, softmax_scale, bug)
    if bug and bug[0] == "scale_head":
        return _scales_of_another_head(prob, codes, scales, per_token, softmax_scale, bug[1])
    if bug and bug[0] == "kv_head":
        return _codes_of_another_head(prob, codes, scales, per_token, softmax_scale, bug[1])
    k_read, v_read, scaled = bug or (_RIGHT, _RIGHT, True)
    caches = []
    for i, (how, which, index) in enumerate((k_read, v_read)):
        s = scales[i if which == "own" else 1 - i]
        caches.append(_values(codes[i], _scales_at(s, per_token, index, prob), how))
    if scaled == "own":     # a scale the kernel worked out itself, ignoring its argument
        softmax_scale = 1 / np.sqrt(prob.q.shape[-1])
    elif scaled == "twice":
        softmax_scale = softmax_scale ** 2
    return reference_decode(prob.q, caches[0], caches[1], prob.block_tables, prob.seq_lens,
                            softmax_scale if scaled else 1.0)


def _scales_of_another_head(prob, codes, scales, per_token, softmax_scale, how):
    """Query head h's output with both scale arrays read at KV head h // num_kv_heads ("div")
    or h % num_kv_heads ("mod") and the codes at h's own KV head; None when that index would
    be past the scales (the fault shows that mistake)."""
    heads, kv_heads = prob.q.shape[1], prob.k_cache.shape[2]
    out = np.empty(prob.q.shape)
    for h in range(heads):
        wrong = h // kv_heads if how == "div" else h % kv_heads
        if wrong >= kv_heads:
            return None
        moved = [s[..., [wrong] * kv_heads] for s in scales]   # every KV head reads `wrong`'s
        out[:, h] = read_reference(prob, codes, moved, per_token, softmax_scale)[:, h]
    return out


def _codes_of_another_head(prob, codes, scales, per_token, softmax_scale, how):
    """Query head h's output with its codes and scales read at KV head h // num_kv_heads
    ("div") or h % num_kv_heads ("mod"): attention_variant over the dequantized pages. A
    head past the last reads the next slot's row, as the kernel does (its per-token scale
    sits at the same index; a static one past k_scale faults, so no output is compared)."""
    k, v = (_values(c, _scales_at(s, per_token, "slot", prob), "times")
            for c, s in zip(codes, scales))
    return attention_variant(prob.q, k, v, prob.block_tables, prob.seq_lens, softmax_scale,
                             mode="decode", kv_map={"div": "by_kv_heads", "mod": "mod"}[how])


def _online_softmax(prob, codes, scales, per_token, softmax_scale, bug):
    """The kernel's token-by-token loop over the right values, with the update `bug` wrong:
    "acc", "l" or "both" not rescaled, "m" never set to the new max, "exp2_w", "exp2_rescale" or
    "exp2": 2^x for e^x in the weight, the rescale or both; "w_no_max": the weight e^s."""
    k, v = (_values(c, _scales_at(s, per_token, "slot", prob), "times").reshape(
        -1, *c.shape[2:]) for c, s in zip(codes, scales))
    q = prob.q.astype(np.float64)
    group = q.shape[1] // k.shape[1]
    out = np.empty(q.shape)
    for b, n in enumerate(prob.seq_lens):
        slots = token_slots(prob.block_tables[b], int(n), codes[0].shape[1])
        for h in range(q.shape[1]):
            acc, m, total = np.zeros(q.shape[2]), -np.inf, 0.0
            for slot in slots:
                s = float(q[b, h] @ k[slot, h // group]) * softmax_scale
                m_new = max(m, s)
                rescale = (np.exp2 if bug in ("exp2_rescale", "exp2") else np.exp)(m - m_new)
                w = (np.exp2 if bug in ("exp2_w", "exp2") else np.exp)(
                    s - (0.0 if bug == "w_no_max" else m_new))
                acc = (acc if bug in ("acc", "both") else acc * rescale) + w * v[slot, h // group]
                total = (total if bug in ("l", "both") else total * rescale) + w
                m = m if bug == "m" else m_new
            out[b, h] = acc / total
    return out


def read_logits(prob, k_codes, k_scales, per_token, scale):
    """Every (sequence, query head, cached token)'s q . k * scale, K dequantized (float64)."""
    k = _values(k_codes, _scales_at(k_scales, per_token, "slot", prob), "times").reshape(
        -1, *k_codes.shape[2:])
    group = prob.q.shape[1] // k.shape[1]
    out = [np.einsum("hd,thd->ht", prob.q[b].astype(np.float64),
                     np.repeat(k[token_slots(row, int(n), k_codes.shape[1])], group, 1)) * scale
           for b, (row, n) in enumerate(zip(prob.block_tables, prob.seq_lens))]
    return np.concatenate([o.ravel() for o in out])
