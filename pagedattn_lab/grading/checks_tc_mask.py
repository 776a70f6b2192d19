"""Checks for lesson 09, task 3: scale a tile of scores and mask the tokens past seq_len.

`mask_tile(s, tile, seq_len, scale)` turns one 16 x 16 tile of scores (rows: query heads,
column c: token 16 * tile + c) into logits: s * scale, -inf in the columns at or past
seq_len. The cases cover a full tile, last tiles holding 5, 15 and 16 tokens, a one-token
sequence, and a tile wholly past seq_len (the tile of a shorter sequence in a batch), where
seq_len - 16 * tile is negative and a slice from it counts from the end.
"""
from __future__ import annotations

import numpy as np

from .checks_tc_rows import TILE   # tokens (columns) of one score tile
from .compare import changed_input, fmt, positive_factor
from .report import Case, CheckResult, Mismatch, as_array, run_cases, several_fit
from .seeds import case_rng


def reference_mask_tile(s, tile, seq_len, scale):
    """The logits of a 16 x 16 score tile: s * scale, and -inf in the columns of tokens at or
    past seq_len (token 16 * tile + c), float32."""
    out = np.asarray(s, np.float32) * np.float32(scale)
    out[:, TILE * tile + np.arange(TILE) >= seq_len] = -np.inf
    return out


def _mask_variants(s, tile, seq_len, scale):
    cols = TILE * tile + np.arange(TILE)

    def masked(keep, fill=-np.inf, factor=scale, rows=False):
        out = np.asarray(s, np.float64) * factor
        if rows:
            out[~keep, :] = fill
        else:
            out[:, ~keep] = fill
        return out

    def sliced_from_the_end():   # s[:, seq_len - 16 * tile:] with that start below 0
        out = np.asarray(s, np.float64) * scale
        out[:, seq_len - TILE * tile:] = -np.inf
        return out

    wholly_past = seq_len <= TILE * tile
    if seq_len < TILE:   # c < seq_len then masks some columns: the offset's own evidence
        offset_hint = ("column c of tile `tile` is token 16 * tile + c, not c: add the tile's "
                       "start before comparing with seq_len.")
    elif wholly_past:    # no mask at all here: a mask made for the last tile only does this
        offset_hint = (f"no column is masked, yet every token of this tile ({TILE * tile}.."
                       f"{TILE * tile + 15}) is at or past seq_len ({seq_len}): all 16 columns "
                       "are -inf, even in a tile that does not hold the sequence's last "
                       "token; compare 16 * tile + c (the tile's start added) with seq_len, "
                       "in every tile.")
    else:                # it masks nothing, as does no mask at all: say what shows
        offset_hint = (f"no column is masked, yet tokens {max(seq_len, TILE * tile)}.."
                       f"{TILE * tile + 15} are at or past seq_len: mask the columns where "
                       "16 * tile + c >= seq_len (add the tile's start to c), in every tile.")
    variants = [
        ("the scores are not scaled: multiply by scale.", lambda: masked(cols < seq_len,
                                                                         factor=1.0)),
        ("the scores were scaled twice (s * scale * scale): multiply by scale once.",
         lambda: masked(cols < seq_len, factor=scale * scale)),
        ("the scores were divided by scale: scale is the factor itself (1 / sqrt(head_dim) "
         "in the kernel), so multiply by it: s * scale.",
         lambda: masked(cols < seq_len, factor=1.0 / scale)),
        ("masked with 0: exp(0 - m) is not 0, so a token past seq_len would still get weight. "
         "Use -inf (np.float32('-inf')): exp(-inf) = 0.", lambda: masked(cols < seq_len, 0.0)),
        ("token seq_len itself is not in the cache: mask columns where 16 * tile + c >= "
         "seq_len (>=, not >).", lambda: masked(cols <= seq_len)),
        ("token seq_len - 1, the last one cached, was masked: mask where 16 * tile + c >= "
         "seq_len, not >= seq_len - 1.", lambda: masked(cols < seq_len - 1)),
        (offset_hint, lambda: masked(np.arange(TILE) < seq_len)),
        ("the columns from seq_len % 16 on were masked, as if every tile were the last: "
         "seq_len % 16 counts the tokens of the sequence's last tile only (0 when seq_len "
         "ends on a tile's end), while column c of tile `tile` is token 16 * tile + c: mask "
         "where 16 * tile + c >= seq_len.", lambda: masked(np.arange(TILE) < seq_len % TILE)),
        # (in a tile wholly past seq_len an inverted comparison masks nothing: no evidence)
        ("the comparison is inverted: the cached tokens (16 * tile + c < seq_len) were masked "
         "and the ones past seq_len kept: mask where 16 * tile + c >= seq_len.",
         lambda: None if wholly_past else masked(cols >= seq_len)),
        ("the rows are query heads and the columns are tokens: mask columns (s[:, c]), not "
         "rows.", lambda: masked(cols < seq_len, rows=True)),
    ]
    if seq_len - TILE * tile < 0:   # only here does a slice from seq_len - 16 * tile go wrong
        variants.insert(0, (
            f"this tile starts past seq_len, so seq_len - 16 * tile = {seq_len - TILE * tile} "
            "is negative, and s[:, n:] with a negative n counts from the end (it masks only "
            "the last columns): clip n at 0, or compare 16 * tile + c >= seq_len.",
            sliced_from_the_end))
    return variants


def _finite_fill_hint(g64, past) -> str | None:
    """A hint when every masked column holds one finite number (-1e9, -FLT_MAX) for -inf."""
    fill = g64[:, past]
    if fill.size and np.isfinite(fill).all() and np.all(fill == fill.flat[0]) \
            and fill.flat[0] < -1e4:
        return (f"the tokens past seq_len hold {fmt(fill.flat[0])}, a finite number, not -inf: "
                "use np.float32('-inf'), the spec's mask (exp(-inf) is exactly 0 whatever the "
                "running max, and the later steps can tell a masked logit from a small one).")
    return None


def _product_mask_hint(g64, e64, past) -> str | None:
    """A hint when -inf went through arithmetic, not assignment: -inf times a negative score
    is +inf, 0 * -inf is NaN (the scores are finite, so nothing else makes these)."""
    kept, fill = g64[:, ~past], g64[:, past]
    fix = "Set the masked logits to -inf (assign them, or np.where)"
    if np.isnan(kept).any():
        return ("NaN in the columns before seq_len: 0 * -inf is NaN, so a mask mixed in by "
                f"arithmetic (m * x + (1 - m) * -inf) spoils the kept logits too. {fix}.")
    if not (np.isposinf(fill) | np.isnan(fill)).any() or \
            not np.allclose(kept, e64[:, ~past], rtol=1e-6, atol=1e-6):
        return None
    return ("the tokens past seq_len hold +inf or NaN, not -inf: multiplying by an -inf mask "
            f"gives +inf for a negative score (and NaN for 0). {fix}, do not multiply by it.")


def _factor_hint(g64, s, past, scale) -> str | None:
    """A hint when the mask is right and every kept logit is s times one factor, not scale
    (a scale recomputed, as 1 / sqrt(16) from the tile, or sqrt(scale))."""
    if not np.isneginf(g64[:, past]).all():
        return None
    factor = positive_factor(g64[:, ~past], np.asarray(s)[:, ~past], rtol=1e-5, atol=1e-6)
    if factor is None or np.isclose(factor, scale, rtol=1e-5):
        return None
    return (f"the mask is right, but every kept logit is s * {fmt(factor)}, not s * scale = "
            f"s * {fmt(scale)}: multiply by the scale argument as given (do not compute a "
            "scale of your own).")


def _mask_case(fn, seed, tile, seq_len, scale) -> None:
    rng = case_rng(seed)
    s = (rng.standard_normal((TILE, TILE)) * 4).astype(np.float32)
    given = s.copy()
    expected = reference_mask_tile(s, tile, seq_len, scale)
    got = fn(given, tile, seq_len, scale)
    if got is None:
        raise Mismatch("returned None", "return the logits, [16, 16].")
    changed = changed_input("mask_tile", {"s": s}, {"s": given}, {
        "s": "return a new array (s * scale makes one); the caller may still need the raw "
             "scores"})
    if changed:
        raise changed
    got = as_array(got, "mask_tile's result")
    if got.shape != expected.shape:
        raise Mismatch("wrong shape", "one logit per score: [16, 16].", str(expected.shape),
                       str(got.shape))
    g64, e64 = np.asarray(got, np.float64), expected.astype(np.float64)
    same_inf = np.isneginf(g64) == np.isneginf(e64)

    def close_at(rtol):
        return np.isclose(g64, e64, rtol=rtol, atol=rtol) | (np.isneginf(g64) & np.isneginf(e64))

    close = close_at(1e-6)
    wrong_dtype = Mismatch(f"the logits are {got.dtype}", "keep them float32 (the kernel's "
                           "accumulator type): np.float32 arrays, float32 scale.", "float32",
                           str(got.dtype))
    if same_inf.all() and close.all():
        if got.dtype != np.float32:
            raise wrong_dtype
        return
    if same_inf.all() and got.dtype == np.float16 and close_at(2e-3).all():
        raise wrong_dtype    # right up to float16's rounding: the dtype is the mistake
    (r, c), first = np.argwhere(~close)[0], TILE * tile
    message = (f"{int((~close).sum())} of 256 logits differ; the first at row {r}, column {c} "
               f"(token {first + c}; seq_len {seq_len}, the tile holds tokens {first}.."
               f"{first + 15}): expected {fmt(e64[r, c])}, got {fmt(g64[r, c])}.")
    fits = []
    for text, variant in _mask_variants(s, tile, seq_len, scale):
        v = variant()   # the same -inf, the same finite values, and not the right answer
        if v is not None and np.array_equal(np.isneginf(v), np.isneginf(g64)) and np.allclose(
                np.where(np.isneginf(v), 0, v), np.where(np.isneginf(g64), 0, g64),
                rtol=1e-6, atol=1e-6) and not np.array_equal(v, e64):
            fits.append(text)
    # Two mistakes can give the same tile (on tokens 48..63 with seq_len 63, > for >= and a
    # forgotten tile start both leave only column 15 unmasked): name every one that fits.
    hint = several_fit(fits, "tile") if fits else None
    past = (first + np.arange(TILE)) >= seq_len
    hint = hint or _finite_fill_hint(g64, past) or _product_mask_hint(g64, e64, past) or \
        _factor_hint(g64, s, past, scale)
    if hint is None and first >= seq_len and np.isfinite(g64).any():
        hint = (f"every token of this tile ({first}..{first + 15}) is at or past seq_len "
                f"({seq_len}): all 16 columns are -inf, even in a tile that does not hold the "
                "sequence's last token.")
    if hint is None and np.isfinite(g64[:, past]).any():
        hint = ("every token at or past seq_len must come out -inf (its K row was zeros, so its "
                "score is 0, and exp(0 - m) is not 0).")
    raise Mismatch(message, hint or "logit[r][c] = s[r][c] * scale, or -inf where 16 * tile + "
                   "c >= seq_len.")


def mask_tile(fn) -> CheckResult:
    """Check `fn(s, tile, seq_len, scale)` -> logits [16, 16] float32."""
    specs = [   # name, tile, seq_len, scale
        ("a full tile: nothing masked", 0, 40, 0.125),
        ("the last tile, 5 tokens cached", 2, 37, 0.125),
        ("one token: only column 0 stays", 0, 1, 0.088),
        ("seq_len ends exactly at the tile's end", 1, 32, 0.25),
        ("the last tile, 15 tokens cached", 3, 63, 0.1),
        ("a tile wholly past seq_len (a shorter sequence of a batch)", 2, 21, 0.125),
    ]
    return run_cases("mask_tile", "mask_tile: scale a score tile and mask the tokens past "
                     "seq_len", [
        Case(name, {"tile": t, "seq_len": n, "scale": sc},
             lambda i=i, t=t, n=n, sc=sc: _mask_case(fn, 99 + i, t, n, sc))
        for i, (name, t, n, sc) in enumerate(specs)])
