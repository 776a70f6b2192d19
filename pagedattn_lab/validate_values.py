"""Checks of the values an array argument holds, apart from validate.py (which re-exports
them) to keep that module small."""
from __future__ import annotations

import numpy as np

from .validate_kinds import dtype_label


def real_values(x, name: str, dtype=np.float32) -> np.ndarray:
    """x (an array, or nested lists, of real numbers) as `dtype`. Refused by name: complex
    (NumPy's cast drops the imaginary part with only a warning), bool (read as 0 and 1),
    strings and objects (NumPy's own errors name no argument), ragged lists.
    A value past `dtype`'s range (a float64 1e39 as float32) becomes inf of its sign, as
    rounding to nearest gives it, without NumPy's overflow warning, which names no argument:
    each caller says what an inf means to it (a saturated code, a refused scale)."""
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError):   # ragged nested lists; a CuPy array (no implicit copy)
        raise TypeError(f"{name}: expected a NumPy array (or nested lists) of real numbers, "
                        f"got a {type(x).__name__} that NumPy cannot read as one") from None
    if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
        raise TypeError(f"{name}: expected real numbers (a float or int dtype), got "
                        f"{dtype_label(arr.dtype)}")
    with np.errstate(over="ignore"):
        return arr.astype(dtype, copy=False)


def float32_values(x, name: str) -> np.ndarray:
    """`real_values(x, name)` as float32, refused by name, with the first entry, where a value
    is infinite or past float32's range (a float64 1e39 is inf once cast): whatever is worked
    out from it in float32 (a scale, an amax) would be inf. NaN passes: callers say what it
    means to them."""
    values = real_values(x, name)
    inf = np.isinf(values)
    if inf.any():
        i = tuple(int(j) for j in np.argwhere(inf)[0]) if inf.ndim else ()
        where = f"{name}[{', '.join(map(str, i))}]" if i else name
        raise ValueError(f"{name}: expected finite values within float32's range (+-3.4e38), "
                         f"got {where} = {float(np.asarray(x)[i]):g}")
    return values
