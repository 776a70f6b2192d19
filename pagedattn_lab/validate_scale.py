"""The softmax scale argument: `resolve_scale` and the float32 limits the kernels put on it.

The kernels fold scale * log2(e) into one float32 (an exp2 softmax) and compile with
-ftz=true, so a scale is refused by what that product does in float32, not by its own size.
"""
from __future__ import annotations

import math

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)   # smallest normal: -ftz flushes any below
LOG2E = 1.4426950408889634   # the kernels fold scale * log2(e) into one float32 (exp2 softmax)
# A scale whose scale * log2(e) is a normal float32 (that float32 quotient, one step up: it
# and any larger scale are accepted; the float32 one step below it is too)
MIN_SCALE = float(np.nextafter(np.float32(FLOAT32_TINY / LOG2E), np.float32(1)))


def resolve_scale(scale, head_dim: int) -> float:
    """`scale` or its default 1/sqrt(head_dim), as a positive float the kernels can use.

    The kernels multiply the scores by scale * log2(e) in float32, so a scale whose product
    overflows float32 (1e39) would make every output NaN, and one whose product is below
    float32's smallest normal number would be flushed to 0 (the GPU compiles with
    -ftz=true, as does the CPU executor), silently giving uniform attention: both are
    refused, as are NaN, inf and scale <= 0 (the scores are scaled up or down, never flipped
    or zeroed). No bound on scale alone keeps the scaled scores finite (q . k is unbounded):
    the caller keeps |q . k| * scale * log2(e) within float32's range (3.4e38), else the
    softmax of that row is NaN.
    """
    if scale is None:
        return 1.0 / float(np.sqrt(head_dim))
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.floating,
                                                                      np.integer)):
        raise TypeError(f"scale: expected a float or None, got {scale!r} "
                        f"({type(scale).__name__})")
    try:
        value = float(scale)
    except OverflowError:   # an int past float64's range (10**400)
        raise ValueError(f"scale: expected a finite number, got an int of "
                         f"{int(scale).bit_length()} bits") from None
    if not math.isfinite(value):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    if value <= 0:
        raise ValueError(f"scale: expected a positive number (the factor on q . k before the "
                         f"softmax; 1/sqrt(head_dim) by default), got {scale}")
    if value * LOG2E > FLOAT32_MAX:
        raise ValueError(f"scale: expected at most {FLOAT32_MAX / LOG2E:.3g} (the kernels "
                         f"compute scale * log2(e) in float32), got {scale}")
    if np.float32(value * LOG2E) < FLOAT32_TINY:
        raise ValueError(f"scale: {scale} times log2(e) is below float32's smallest normal "
                         f"number {FLOAT32_TINY:.3g}, which the kernels flush to 0 (every "
                         f"score would be 0); expected at least {MIN_SCALE:.4g}")
    return value
