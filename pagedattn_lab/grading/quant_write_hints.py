"""The hints of the quantize-on-write kernel's known mistakes (workbook 11, checks_quant): each
bug that quant_variants.quantize_reference models, with the words that name it; and codes
scaled by one constant for every row (x * 32), found from the codes themselves."""
from __future__ import annotations

import numpy as np

from ..quant import encode
from .compare import fmt
from .report import several_fit

WRITE_MISTAKES = [
    ("trunc", "a cast (int)(x / scale) truncates toward zero: round to nearest with rintf "
              "(ties to even) before converting."),
    ("half_away", "roundf rounds halves away from zero (2.5 -> 3); the format rounds halves to "
                  "even like rintf (2.5 -> 2), as the NumPy reference and vLLM do."),
    ("floor", "floorf rounds down (2.7 -> 2, -2.3 -> -3): round to nearest with rintf (ties "
              "to even) before converting."),
    ("half_up", "floorf(x + 0.5f) rounds halves up (2.5 -> 3, -2.5 -> -2); the format rounds "
                "them to even like rintf (2.5 -> 2, -2.5 -> -2)."),
    ("wrap", "saturate: clamp x / scale to [-127, 127] before the cast. Past the range the "
             "int8 conversion wraps (300 becomes 44) instead of stopping at 127."),
    ("wrap_clamp", "clamp before the conversion, not after it: converted to signed char "
                   "first, a code past the range has already wrapped (300 becomes 44), and "
                   "44 passes the clamp. Clamp rintf(x / scale) to [-127, 127], then "
                   "convert."),
    ("clamp_128", "the int8 format is symmetric: clamp to [-127, 127]; -128 is never used "
                  "(its negation would not fit)."),
    ("clamp_high_128", "clamp to [-127, 127]: 128 does not fit a signed char, so a code "
                       "clamped at 128 comes out as -128 (a value past the range flips sign)."),
    ("unsigned", "the codes are signed: convert to signed char. A conversion to unsigned char "
                 "turns every negative code into 0 (it saturates at 0 on the GPU)."),
    ("multiply", "the code is x / scale (and the value comes back as code * scale), not "
                 "x * scale."),
    ("twice", "divide by the scale once: these codes are x / scale / scale."),
    ("no_scale", "divide by the scale: these codes are rintf(x) itself."),
    ("no_abs", "the scale comes from the largest magnitude: fmaxf of fabsf(x) (a row whose "
               "biggest value is negative needs the abs)."),
    ("amax_no_stride", "each lane's amax came from its first element only (d = lane): stride "
                       "the amax loop over head_dim like the stores (d += 32), or a largest "
                       "magnitude at d >= 32 is missed."),
    ("amax_last", "each lane's amax is its last element's magnitude: the loop assigned amax "
                  "= fabsf(x) instead of amax = fmaxf(amax, fabsf(x)), so each step dropped "
                  "what the lane had found before."),
    ("shfl_assigned", "the shuffle replaced amax with the partner lane's (amax = __shfl_xor_"
                      "sync(...)) instead of keeping the larger, amax = fmaxf(amax, "
                      "__shfl_xor_sync(...)): lane L ends with lane L ^ 31's own amax."),
    ("row_head0", "every head read head 0's row of k: row (token, head) starts at (token * "
                  "num_kv_heads + head) * head_dim, the head term included."),
    ("row_token_only", "every head read k + token * head_dim: row (token, head) starts at "
                       "(token * num_kv_heads + head) * head_dim, both head terms included."),
    ("div128", "scale = amax / 127 (the largest code of the symmetric range), not / 128."),
    ("times127", "scale = amax / 127 (a code times it gives the value back), not amax * 127."),
    ("no_zero_guard", "a row of zeros has amax 0, so scale 0 and 0 / 0 = NaN codes: give it "
                      "scale 1 (any positive scale stores zeros exactly)."),
    ("no_reduce", "each lane kept the amax of its own elements: reduce it over the warp (a "
                  "__shfl_xor_sync tree) so that lane 0 writes, and every lane divides by, the "
                  "row's amax."),
    ("reduce_down", "after a __shfl_down_sync tree only lane 0 holds the row's amax (lane L "
                    "holds that of lanes L..31): broadcast it with __shfl_sync(mask, amax, 0), "
                    "or reduce with __shfl_xor_sync, before the other lanes divide by it."),
    ("half_warp", "lanes 0-15 and lanes 16-31 each reduced only their own half of the warp "
                  "(the scale written is the amax of the dims lanes 0-15 read, d % 32 < 16): "
                  "the __shfl_xor_sync tree's first offset must be 16 (16, 8, 4, 2, 1) to reach "
                  "across all 32 lanes; starting at 8 leaves the two halves apart."),
    ("stop_at_2", "the even and the odd lanes each reduced only their own part of the warp: "
                  "the __shfl_xor_sync tree stops at offset 2; it must run down to offset 1 "
                  "(16, 8, 4, 2, 1: offset > 0) to reach across all 32 lanes."),
    ("inverse", "store the scale, amax / 127 (a code times it gives the value back), not its "
                "inverse 127 / amax."),
    ("stored_amax", "store the scale, amax / 127, not the amax itself: the codes were divided "
                    "by the scale, but k_scale holds amax, 127 times it."),
    ("token_index", "per-token scales are laid out like the pages: write k_scale[slot * "
                    "num_kv_heads + head] (the token's slot), not its row in k."),
    ("codes_token_index", "the codes go to the token's slot: k_cache[(slot * num_kv_heads + "
                          "head) * head_dim + d], not to its row in k (token)."),
    ("static_head0", "per_token = 0: each KV head has its own static scale, k_scale[head], not "
                     "k_scale[0] for every head (one scale for the whole tensor)."),
    ("static_div127", "per_token = 0: the static scale k_scale[head] is already amax / 127: "
                      "divide x by it as it is, not by k_scale[head] / 127 again."),
]


def _constant_factor(got, k, slots):
    """The constant c with every live code equal to rintf(x * c) clamped to [-127, 127] (NaN
    stored as 0), or None, also where rintf(x) gives the same codes (no_scale's mistake). c is
    guessed from the codes clear of the clamp and of rounding's largest errors, then tried as
    the integers nearest it, as it is, and as 1 / an integer (a constant in the source)."""
    live = slots >= 0
    heads, dim = k.shape[1:]
    x = k[live].astype(np.float32)
    codes = got.reshape(-1, heads, dim)[slots[live]].astype(np.float32)
    usable = np.isfinite(x) & (x != 0) & (np.abs(codes) >= 2) & (np.abs(codes) <= 126)
    if not usable.any():
        return None
    guess = float(np.median(codes[usable] / x[usable]))
    tries = [round(guess) + step for step in (0, -1, 1)] + [guess] + (
        [1 / round(1 / guess)] if 0 < abs(guess) < 0.67 else [])

    def made(c):   # (the spec's int8 rounding, clamp and NaN-as-0, of x * c in float32)
        with np.errstate(all="ignore"):
            return encode(x * np.float32(c), "int8")

    fits = (c for c in tries if c != 0 and np.array_equal(made(c), codes))
    c = next(fits, None)
    return None if c is None or np.array_equal(made(1), codes) else np.float32(c)


def with_constant_factor(named: str | None, got, k, slots) -> str | None:
    """`named` (a known mistake's hint, or None), or the hint of codes scaled by one constant
    for every row and head, or both where both fit (a constant can equal 1 / a static
    scale)."""
    c = _constant_factor(got, k, slots)
    if c is None:
        return named
    # (the case may be either mode: name the scale of both)
    constant = (f"every code is rintf(x * {fmt(c)}): one factor for every row and head, where "
                "the scale is each row's own (amax / 127) when per_token = 1 and each head has "
                "its own scale when per_token = 0 (k_scale[head]). Divide by it: "
                "rintf(x / scale) clamped to [-127, 127].")
    return several_fit([named, constant]) if named else constant
