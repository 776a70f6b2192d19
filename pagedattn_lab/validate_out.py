"""Checks of the arrays a kernel writes: writeable, and sharing no memory with what it reads.

Both run before the launch: the CPU executor refuses a read-only output only after the kernel
ran (its other outputs already written), and an output that overlaps an input (out=k_cache, a
page of the cache, q itself) would be overwritten halfway through on either device.
"""
from __future__ import annotations

import numpy as np

from .backend import data_pointer, is_cupy_array
from .validate_kinds import type_label


def check_out(out, **inputs) -> None:
    """An `out=` array the kernel may write: writeable, and sharing no memory with any input.

    The kernels read q, the caches and the tables while they write `out`; an `out` that
    overlaps one of them (out=k_cache, a page of the cache, q itself) would be overwritten
    halfway through and give wrong values, and corrupt the cache. Shape and dtype are
    checked where the output is prepared.
    """
    if out is None:
        return
    if not (isinstance(out, np.ndarray) or is_cupy_array(out)):
        raise TypeError(f"out: expected a NumPy or CuPy array, got {type_label(out)}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out: expected a writeable array, got a read-only one (pass a copy, "
                         "or out=None for a new array)")
    check_disjoint("out", out, "; pass a separate array, or out=None for a new one", **inputs)


def check_writeable(x, name: str) -> None:
    """An array a kernel writes: a read-only NumPy one would be refused by the CPU executor
    only after the launch, with the kernel's other outputs already written."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (the kernel writes it), got a "
                         f"read-only one; pass a writeable copy")


def check_disjoint(written_name: str, written, advice: str = "", **inputs) -> None:
    """Refuse an array a kernel writes that shares memory with one it reads (by byte range)."""
    lo, hi = byte_range(written)
    for name, x in inputs.items():
        if not (isinstance(x, np.ndarray) or is_cupy_array(x)):
            continue
        if is_cupy_array(x) != is_cupy_array(written):
            continue   # host and device memory never overlap (a mix is refused elsewhere)
        x_lo, x_hi = byte_range(x)
        if lo < x_hi and x_lo < hi:
            raise ValueError(f"{written_name}: shares memory with {name} (the kernel uses "
                             f"{name} while it writes {written_name}, so both would be "
                             f"corrupted){advice}")


def check_plan_buffer(out, **inputs) -> None:
    """`run(out=None)`'s output, the plan's own buffer, against what the run reads: an
    earlier run returned that buffer, and passing it back (as q) would corrupt both."""
    check_disjoint("out", out, "; out=None writes the plan's own buffer, which an earlier run "
                   "returned: pass a copy, or out= a separate array", **inputs)


def byte_range(x) -> tuple[int, int]:
    """[first, last + 1) byte addresses an array's elements span (empty: (0, 0))."""
    if x.size == 0:
        return 0, 0
    lo = hi = data_pointer(x)
    for n, stride in zip(x.shape, x.strides):
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + x.itemsize
