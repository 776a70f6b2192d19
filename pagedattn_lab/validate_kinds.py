"""What kind of value an argument is, and how a dtype is named in an error.

The leaf predicates of validate.py's checks (no check of their own: they raise nothing),
kept apart so that every module can ask `is_int(x)` without the checks' imports.
"""
from __future__ import annotations

import math

import numpy as np


def dtype_label(dtype) -> str:
    """A dtype's name, with its byte order where it is not the machine's: an int32 array of
    swapped bytes (">i4") is refused as int32 is expected, and "expected int32, got int32"
    would not say why."""
    dtype = np.dtype(dtype)
    if dtype.isnative:
        return dtype.name
    return (f"{dtype.name} in non-native byte order ({dtype.str}; convert with "
            f".astype({dtype.newbyteorder('=').str!r}))")


def integer_conversion(got, allowed, name: str, library: str = "np") -> str:
    """"; convert with block_tables.astype(np.int32)" where an integer dtype `got` came for the
    one integer dtype `allowed` holds (int64 ids, NumPy's and torch's default, for int32 ones),
    in `library`: "np", "cupy" or "torch" (.to(torch.int32)). "" otherwise: a float's fraction
    would be cut, and a swapped byte order is told its own fix (`dtype_label`)."""
    got, allowed = np.dtype(got), [np.dtype(d) for d in allowed]
    if len(allowed) != 1 or allowed[0].kind not in "iu" or got.kind not in "iu" or \
            not got.isnative or got.name == allowed[0].name:
        return ""
    want = allowed[0].name
    fix = f".to(torch.{want})" if library == "torch" else f".astype({library}.{want})"
    return f"; convert with {name}{fix}"


def type_label(x) -> str:
    """What came where an array was expected: its type's name, a NumPy scalar's said to be one
    (np.int32(5) named "int32" read as a dtype complaint: "expected an array, got int32")."""
    name = type(x).__name__
    return f"{name} (a NumPy scalar, not an array)" if isinstance(x, np.generic) else name


def is_one_of(value, names) -> bool:
    """value is one of the strings `names` (a name argument's test: an array of names would
    compare element-wise, NumPy's "truth value is ambiguous", or pass as its one name)."""
    return isinstance(value, str) and value in names


def dtype_shown(dtype) -> str:
    """A dtype argument as an error shows it: its `dtype_label` where NumPy reads it (float64,
    not <class 'numpy.float64'>), else its repr; None as None (NumPy reads it as float64)."""
    dt = _readable_dtype(dtype)
    return repr(dtype) if dt is None else dtype_label(dt)


def _readable_dtype(dtype) -> np.dtype | None:
    """np.dtype(dtype), or None where NumPy cannot read it, and for None (float64 to NumPy)."""
    try:
        return None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        return None


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool (True is an int in Python) and not a whole float."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A Python or NumPy int or float (np.float32 too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))


def python_number(value):
    """A checked number as Python stores it (a NumPy scalar's .item()): settings kept so go
    into JSON (a summary, to_hf) and compare as the caller's plain number."""
    return value.item() if isinstance(value, np.generic) else value


def is_finite_number(value) -> bool:
    """`is_number` and finite as a float (an int past float64, 10**400, is not)."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:   # math.isfinite(10**400) raises, naming no argument
        return False
