"""Lesson 11's small rows: per-token rows whose amax runs down to float16's smallest value
above 0, where a threshold on amax (scale 1, codes all 0) or a floor on the scale (codes
shrunk) shows, and the hint that tells which of the two, or an epsilon added to every amax,
the scales show (shared by kv_scales and quantize_write, checks_quant.py).
"""
from __future__ import annotations

import numpy as np


def small_rows_hint(got, expected, amax, qmax="qmax"):
    """The hint when nonzero rows' scales are too large: all by one epsilon added to every
    amax, or only the smallest rows' (a threshold on amax, a floor on the scale)."""
    wrong = ~np.isclose(got, expected, atol=0, rtol=1e-6)
    right = ~wrong & (amax > 0)
    bad = wrong & (amax > 0)
    if not bad.any() or not (got[wrong] > expected[wrong]).all():
        return None
    # got * qmax - amax, the same for every wrong row (to float32's rounding of two scales),
    # and no scale of 1 (a threshold's); one row shows it only by being off by a hair. Rows
    # off by one ratio (of one amax, or a factor: / (qmax - 1)) show a factor as well.
    ratio = got[bad] / expected[bad] - 1
    eps = amax[bad] * ratio
    if (got[bad] != 1).all() and \
            (np.abs(eps - np.median(eps)) <= 0.01 * np.median(eps) + 3e-7 * amax[bad]).all() \
            and (np.ptp(ratio) > 0.01 * np.median(ratio) if eps.size > 1 else ratio[0] < 1e-3):
        return (f"scale = amax / {qmax}: yours is (amax + {np.median(eps):.2g}) / {qmax}, an "
                "epsilon added to every row's amax, which shifts every scale (the smallest "
                "rows' most). Leave amax as it is: only an all-zero row needs a guard (scale "
                "1 there, or a floor max(amax, eps), which changes no other row).")
    if not right.any() or amax[bad].max() >= amax[right].min():
        return None
    if (got[bad] == 1).all():
        return (f"only an all-zero row gets scale 1: a row of small values (amax "
                f"{amax[bad].min():.2g} here) needs amax / {qmax} too, however small (a "
                "threshold on amax stores its codes as all 0).")
    floor = np.min(got[bad])
    return (f"the smallest rows' scales stop at {floor:.3g} (a floor on amax or on the scale): "
            f"a row of small values (amax {amax[bad].min():.2g} here) needs amax / {qmax} "
            "too, however small (a floor shrinks its codes, down to all 0); only an all-zero "
            "row needs a guard (scale 1).")


SMALLEST_FP16 = 2.0 ** -24   # float16's smallest subnormal


def small_rows(x):
    """`x` [n, heads, dim] with its rows' amax set to 2**-24 (about 6e-8, float16's smallest
    value above 0: no smaller row comes from a float16 model) .. 10, log-spaced, token 0's
    smallest: the prompts' "rows down to 6e-8" hold for every seed, so a threshold on amax
    anywhere above 6e-8 (1e-6, 1e-7, FLT_EPSILON) meets a row below it (token 0 is never the
    padding row), while a floor below it (vLLM's max(amax, 1e-8)) changes no row."""
    amax = 10.0 ** np.linspace(np.log10(SMALLEST_FP16), 1, x.shape[0] * x.shape[1])
    return (x / np.abs(x).max(-1, keepdims=True) *
            amax.reshape(*x.shape[:2], 1)).astype(np.float32)
