"""Which indices of an array lying in the KV cache's memory cross its pages (for
`padding_reads`, the watch of lesson 02's gather for the row's -1 padding used as a page id).

An array here is described as NumPy holds it: its shape and byte strides, with the cache's
pages `page_bytes` apart in its memory. In the cache, its views and its C-order copies the
page number grows with the byte offset; in a copy whose pages are its innermost axis (a
Fortran-order copy: the pages of one element lie next to each other) it comes round again
every `period` bytes, and an axis stepping a whole number of periods stays inside a page.
`period` None: the page number never comes round.
"""
from __future__ import annotations

import numpy as np

_asarray = np.asarray   # (NumPy's own, whatever a watch puts in np's namespace meanwhile)


class WatchedList(list):
    """One level of a watched array's .tolist() whose entries lie on pages apart: indexing
    it with a negative number takes it from the end (the last page), as the array would."""

    def __init__(self, items, negative_ids: list):
        super().__init__(items)
        self.negative_ids = negative_ids

    def __getitem__(self, index):
        if not self.negative_ids and not isinstance(index, slice):
            lowest = _lowest_int(index)
            if lowest is not None:
                self.negative_ids.append(lowest)
        return super().__getitem__(index)


def watched_levels(items, crossing: list, negative_ids: list):
    """The nested lists `items` of an array's .tolist(), with each level whose axis crosses
    pages (`crossing`, one flag an axis) a WatchedList."""
    if not any(crossing[1:]):
        return WatchedList(items, negative_ids) if crossing[0] else items
    inner = [watched_levels(item, crossing[1:], negative_ids) for item in items]
    return WatchedList(inner, negative_ids) if crossing[0] else inner


def c_strides(shape: tuple, itemsize: int) -> tuple:
    """The byte strides of a C-contiguous array of `shape`."""
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


def copy_page_bytes(shape: tuple, strides: tuple, page_bytes: int, copy_strides: tuple,
                    period: int | None = None) -> int | None:
    """How far apart pages lie in a compact copy of an array of `shape` and byte `strides`
    (inside the cache's memory, pages `page_bytes` apart) whose axes have `copy_strides`:
    the copy's steps along the innermost axis that crosses pages, times its steps a page.
    None where no axis crosses pages, or where an axis inside a page steps as far as that
    axis in the copy (a tokens-first copy: its token axis would pass for one crossing
    pages)."""
    pages = copy_pages(shape, strides, page_bytes, period, copy_strides)
    return pages[0] if pages is not None and pages[1] is None else None


def copy_pages(shape: tuple, strides: tuple, page_bytes: int, period: int | None,
               copy_strides: tuple) -> tuple[int, int | None] | None:
    """(page_bytes, period) of a compact copy of an array (as copy_page_bytes reads it):
    its pages outermost, or innermost (every axis inside a page stepping a whole number of
    the pages' span in the copy, its period: a Fortran-order copy). None where the axes
    inside a page lie between those crossing pages."""
    crossing, inside = _axes_by_page(shape, strides, page_bytes, period)
    if not crossing:
        return None
    inner = min(crossing, key=lambda a: abs(copy_strides[a]))
    step = abs(int(copy_strides[inner]))
    page_step = max(int(page_bytes) // abs(int(strides[inner])), 1) * step
    if all(abs(int(copy_strides[a])) < step for a in inside):
        return page_step, None
    span = max(abs(int(copy_strides[a])) * int(shape[a]) for a in crossing)
    if any(abs(int(copy_strides[a])) % span for a in inside):
        return None
    return page_step, span


def _axes_by_page(shape, strides, page_bytes, period) -> tuple[list, list]:
    """(the axes crossing pages, those staying inside a page), each longer than one."""
    crossing, inside = [], []
    for a, n in enumerate(shape):
        if n > 1:
            (crossing if crosses_pages(n, strides[a], page_bytes, period) else inside).append(a)
    return crossing, inside


def lowest_page_index(key, shape: tuple, strides: tuple, page_bytes: int,
                      period: int | None = None) -> int | None:
    """The lowest negative index that `array[key]` takes along an axis crossing pages (an
    array of `shape` and byte `strides` inside the cache's memory, whose pages are
    `page_bytes` apart), or None."""
    parts = key if isinstance(key, tuple) else (key,)
    widths = [_axes_taken(part) for part in parts]
    known = sum(w for w in widths if w is not None)
    axis, lowest = 0, None
    for part, width in zip(parts, widths):
        if width is None:                            # Ellipsis: the axes no part names
            axis += max(len(shape) - known, 0)
            continue
        if width == 1 and not isinstance(part, slice) and axis < len(shape) and \
                crosses_pages(shape[axis], strides[axis], page_bytes, period):
            lowest = _lower(lowest, _lowest_int(part))
        axis += width
    return lowest


def lowest_taken(indices, axis, shape: tuple, strides: tuple, page_bytes: int,
                 period: int | None = None) -> int | None:
    """The lowest negative index `array.take(indices, axis)` takes across pages, or None
    (axis None takes from the array flattened, which crosses pages where it holds two)."""
    if axis is None:
        crosses = sum(abs(s) * (n - 1) for n, s in zip(shape, strides)) >= page_bytes
    elif isinstance(axis, (int, np.integer)) and shape:
        axis = int(axis) % len(shape)
        crosses = crosses_pages(shape[axis], strides[axis], page_bytes, period)
    else:
        return None                                  # (NumPy refuses the axis next)
    return _lowest_int(indices) if crosses else None


def crosses_pages(length: int, stride: int, page_bytes: int, period: int | None = None) -> bool:
    """Whether an axis's first and last steps lie a page or more apart (and its step is not
    a whole number of the pages' period)."""
    if period and not abs(int(stride)) % period:
        return False
    return abs(int(stride)) * (int(length) - 1) >= page_bytes


def _axes_taken(part) -> int | None:
    """How many axes an index part takes: None for Ellipsis, 0 for np.newaxis, a boolean
    mask's dimensions, else 1."""
    if part is Ellipsis:
        return None
    if part is None:
        return 0
    if isinstance(part, (bool, np.bool_)):
        return 0
    if isinstance(part, (np.ndarray, list)):
        arr = _asarray(part) if isinstance(part, list) else part
        return arr.ndim if arr.dtype == bool else 1
    return 1


def _lowest_int(part) -> int | None:
    """The lowest value of an integer index part, if negative."""
    if isinstance(part, (int, np.integer)) and not isinstance(part, (bool, np.bool_)):
        lowest = int(part)
    else:
        try:
            ids = _asarray(part)
        except (TypeError, ValueError):
            return None                              # (NumPy's own indexing refuses it next)
        lowest = int(ids.min()) if ids.dtype.kind in "iu" and ids.size else 0
    return lowest if lowest < 0 else None


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
