"""Lesson 02's gather: whether an answer followed the block-table row's -1 padding.

No page id is negative, so a negative index into the cache is the padding used as a page id:
NumPy takes it from the end of the cache without a word (a GPU kernel reads out of bounds),
and a result cut to seq_len afterwards shows nothing of it. The cache's watch
(`checks_addressing._Counted`) keeps the lowest negative index along an axis whose steps
cross pages (`lowest_page_index`), in the cache, any view of it (its page axis, transposed
or not, its slots or elements flattened), any copy of a view of it in the view's order or
its memory's (.copy(), .astype, .flatten(), a reshape or ravel that copies, an elementwise
ufunc's result such as k_cache + 0, np.concatenate(k_cache)) and its .tolist() (a list's -1
is its last page too); an axis inside a page (a page's tokens, the heads, the dims) is not
one. NumPy's conversions to a plain array (np.asarray(k_cache)...) would drop the watch:
while the learner's gather runs, they keep it (`conversions_watched`), in the notebook and
in the grader's sandbox alike.
Reading a real page in a padding entry's place (page 0 for -1) follows no padding; a
result that keeps those rows fails on its values.
"""
from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

from .report import Mismatch

# NumPy's conversions that give an ndarray subclass back as a plain array (np.asanyarray and
# np.copy's dispatch keep it): see conversions_watched
CONVERSIONS = ("asarray", "array", "ascontiguousarray", "asfortranarray")
# NumPy's functions that join the pages of an array passed alone (or alone in a list): their
# result holds its elements in its C order, so a copy of it all (see joined_in_order)
JOINS = (np.concatenate, np.stack, np.vstack)
_asarray = np.asarray   # (NumPy's own, for the watch's reading of an index)


class PaddingWatch:
    """An ndarray subclass's share (listed before np.ndarray among its bases) that keeps, in
    `negative_ids` (a list the cache, its views and its copies share), the first negative
    index the cache was indexed with across pages; `page_bytes`: how far apart the pages of
    its memory lie. A gather's result is a copy the learner made, not watched."""

    def watch(self, negative_ids: list) -> None:
        """Watch this array, the cache as the learner gets it (pages on its first axis)."""
        self.negative_ids, self.page_bytes = negative_ids, self.strides[0]

    def __array_finalize__(self, obj):
        # a view's reads are the cache's
        ids = getattr(obj, "negative_ids", None)
        shared = ids is not None and np.may_share_memory(self, obj)
        self.negative_ids = ids if shared else None
        self.page_bytes = getattr(obj, "page_bytes", None) if shared else None

    def __getitem__(self, key):
        if self._watching():
            self._note(lowest_page_index(key, self.shape, self.strides, self.page_bytes))
        return super().__getitem__(key)

    def take(self, indices, axis=None, out=None, mode="raise"):
        # (np.take calls this method; mode "clip" reads page 0 for -1, following nothing)
        if self._watching() and mode != "clip":
            self._note(lowest_taken(indices, axis, self.shape, self.strides, self.page_bytes))
        return super().take(indices, axis, out, mode)

    def view(self, *args, **kwargs):
        return keep_watch(self, super().view(*args, **kwargs))   # (np.ndarray's too)

    def copy(self, *args, **kwargs):
        return self._watched_copy(super().copy(*args, **kwargs))

    def astype(self, *args, **kwargs):
        return self._watched_copy(super().astype(*args, **kwargs))

    def flatten(self, order="C"):
        return self._watched_copy(super().flatten(order), in_c_order=self._c_order(order))

    def ravel(self, order="C"):
        return self._watched_copy(super().ravel(order), in_c_order=self._c_order(order))

    def reshape(self, *shape, **kwargs):
        # (a view keeps the watch by itself: __array_finalize__; one that copies is a copy)
        out = super().reshape(*shape, **kwargs)
        return self._watched_copy(out, in_c_order=self._c_order(kwargs.get("order", "C")))

    def tolist(self):
        if self.negative_ids is None or not self.ndim:
            return super().tolist()
        crossing = [_crosses_pages(n, s, self.page_bytes)
                    for n, s in zip(self.shape, self.strides)]
        return watched_levels(super().tolist(), crossing, self.negative_ids)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # an elementwise ufunc's result over a watched input (k_cache + 0) copies it
        out = super().__array_wrap__(array, context, return_scalar)
        inputs = context[1] if context is not None else ()
        source = next((x for x in inputs if isinstance(x, PaddingWatch) and
                       x.negative_ids is not None and x.shape == getattr(out, "shape", None)),
                      None)
        return source._watched_copy(out) if source is not None else out

    def __array_function__(self, func, types, args, kwargs):
        out = super().__array_function__(func, types, args, kwargs)
        if func is np.copy and args and args[0] is self:
            return self._watched_copy(out)
        joined = joined_in_order(func, args, kwargs) if func in JOINS else None
        return joined._watched_copy(out, in_c_order=True) if joined is not None else out

    @staticmethod
    def during_call():
        """The context the learner's function runs in, in the notebook and in the grader's
        sandbox (remote.Peer enters it for an argument of a class that has it)."""
        return conversions_watched()

    def _watching(self) -> bool:
        # (the first negative index is enough; a loop over pages stays cheap)
        return self.negative_ids is not None and not self.negative_ids

    def _note(self, lowest: int | None) -> None:
        if lowest is not None:
            self.negative_ids.append(lowest)

    def _c_order(self, order) -> bool:
        """Whether NumPy's `order` lays this array's elements out in its C order."""
        return order in ("C", None) or (order in ("A", "K") and self.flags.c_contiguous)

    def _watched_copy(self, out, in_c_order: bool = False):
        """`out`, a copy of every element of this watched array, watched (a copy reads every
        page; indexing it through the padding is following it still): one of this array's
        shape in any layout, or of another shape holding the elements in this array's C
        order (`in_c_order`). Left as it is where an axis inside a page would pass for one
        crossing pages in it (copy_page_bytes), and where it shares this array's memory (a
        view: __array_finalize__ watches it)."""
        if self.negative_ids is None or not isinstance(out, np.ndarray) or \
                out.size != self.size or np.may_share_memory(out, self):
            return out
        if out.shape == self.shape:
            strides = out.strides
        elif in_c_order and out.flags.c_contiguous:
            strides = c_strides(self.shape, out.itemsize)
        else:
            return out
        page_bytes = copy_page_bytes(self.shape, self.strides, self.page_bytes, strides)
        if page_bytes is None:
            return out
        watched = out if isinstance(out, PaddingWatch) else out.view(type(self))
        watched.negative_ids, watched.page_bytes = self.negative_ids, page_bytes
        return watched


def joined_in_order(func, args, kwargs) -> PaddingWatch | None:
    """The watched array whose elements func(*args, **kwargs), a JOINS function, joins in
    its C order, or None: one alone in a list (any axis), or one passed itself (its pages
    joined on axis 0, or flattened: axis None). (NumPy calls __array_function__ on the
    first array it meets, here a page of the cache passed itself.)"""
    arrays = args[0] if args else kwargs.get("arrays", kwargs.get("tup"))
    if isinstance(arrays, (list, tuple)) and len(arrays) == 1:
        whole = arrays[0]
    else:
        axis = args[1] if len(args) > 1 else kwargs.get("axis", 0)
        in_order = (axis is None and func is np.concatenate) or \
            (isinstance(axis, (int, np.integer)) and int(axis) == 0)
        whole = arrays if in_order else None
    watched = isinstance(whole, PaddingWatch) and whole.negative_ids is not None
    return whole if watched else None


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


def copy_page_bytes(shape: tuple, strides: tuple, page_bytes: int,
                    copy_strides: tuple) -> int | None:
    """How far apart pages lie in a compact copy of an array of `shape` and byte `strides`
    (inside the cache's memory, pages `page_bytes` apart) whose axes have `copy_strides`:
    the copy's steps along the innermost axis that crosses pages, times its steps a page.
    None where no axis crosses pages, or where an axis inside a page steps as far as that
    axis in the copy (a tokens-first copy: its token axis would pass for one crossing
    pages)."""
    axes = [a for a, n in enumerate(shape) if n > 1]
    crossing = [a for a in axes if _crosses_pages(shape[a], strides[a], page_bytes)]
    if not crossing:
        return None
    inner = min(crossing, key=lambda a: abs(copy_strides[a]))
    step = abs(int(copy_strides[inner]))
    if any(abs(int(copy_strides[a])) >= step for a in axes if a not in crossing):
        return None
    return max(int(page_bytes) // abs(int(strides[inner])), 1) * step


def keep_watch(source, out):
    """`out`, a plain array a conversion made of `source`: if `source` is a watched cache,
    watched as it is when it is a view of it or a copy of it all."""
    if not isinstance(source, PaddingWatch) or source.negative_ids is None or \
            type(out) is not np.ndarray:
        return out
    if not np.may_share_memory(out, source):
        return source._watched_copy(out)
    view = out.view(type(source))   # (the watch only: a subclass's other records stay its own)
    view.negative_ids, view.page_bytes = source.negative_ids, source.page_bytes
    return view


def lowest_page_index(key, shape: tuple, strides: tuple, page_bytes: int) -> int | None:
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
                _crosses_pages(shape[axis], strides[axis], page_bytes):
            lowest = _lower(lowest, _lowest_int(part))
        axis += width
    return lowest


def lowest_taken(indices, axis, shape: tuple, strides: tuple, page_bytes: int) -> int | None:
    """The lowest negative index `array.take(indices, axis)` takes across pages, or None
    (axis None takes from the array flattened, which crosses pages where it holds two)."""
    if axis is None:
        crosses = sum(abs(s) * (n - 1) for n, s in zip(shape, strides)) >= page_bytes
    elif isinstance(axis, (int, np.integer)) and shape:
        axis = int(axis) % len(shape)
        crosses = _crosses_pages(shape[axis], strides[axis], page_bytes)
    else:
        return None                                  # (NumPy refuses the axis next)
    return _lowest_int(indices) if crosses else None


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


def _crosses_pages(length: int, stride: int, page_bytes: int) -> bool:
    """Whether an axis's first and last steps lie a page or more apart."""
    return abs(int(stride)) * (int(length) - 1) >= page_bytes


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


def refuse_padding_read(negative_ids: list, n_used: int, width: int) -> None:
    """Fail a gather with the right values whose cache watch kept a negative index
    (`negative_ids`), for a row of `width` entries, `n_used` of them pages."""
    if not negative_ids:
        return
    index = negative_ids[0]
    padding = f"entry {n_used}" if width == n_used + 1 else f"entries {n_used}-{width - 1}"
    raise Mismatch(f"right values, but k_cache (or a view or copy of it) was indexed with "
                   f"{index}: no page or slot is negative, so the row's padding ({padding}, "
                   f"-1) was followed: NumPy took {index} from the end of the cache, and "
                   "what it read there was cut off", "the row's padding (-1) was used as a "
                   "page id: take only the row's first ceil(seq_len / page_size) entries "
                   "(row[:n_pages]), or compute each token's slot from row[t // page_size], "
                   "before indexing the cache; or read a real page in each padding entry's "
                   "place (np.maximum(row, 0)) and cut its rows off. NumPy wraps -1 to the "
                   "last page without a word, a GPU kernel reads out of bounds.",
                   expected=f"no negative index (the row's first {n_used} entries are "
                   "the sequence's pages)", got=str(index))


_conversions_lock = threading.Lock()
_conversions_depth = [0]   # conversions_watched contexts open now, in any thread
_conversions_plain = {}    # NumPy's own conversions, while they are replaced


def _watching(convert):
    @functools.wraps(convert)
    def converted(*args, **kwargs):
        source = args[0] if args else kwargs.get("a", kwargs.get("object"))
        return keep_watch(source, convert(*args, **kwargs))
    return converted


@contextlib.contextmanager
def conversions_watched():
    """While the learner's gather runs (here, and in the grader's sandbox: remote.Peer),
    NumPy's conversions (np.asarray(k_cache), np.array, np.ascontiguousarray,
    np.asfortranarray) keep a watched cache's watch on their result (`keep_watch`). Only
    calls made through the numpy module's names in the meantime see it. The contexts may
    overlap (nested, or in threads, closed in any order): NumPy's own come back when the
    last one closes."""
    with _conversions_lock:
        if not _conversions_depth[0]:
            for name in CONVERSIONS:
                _conversions_plain[name] = getattr(np, name)
                setattr(np, name, _watching(_conversions_plain[name]))
        _conversions_depth[0] += 1
    try:
        yield
    finally:
        with _conversions_lock:
            _conversions_depth[0] -= 1
            if not _conversions_depth[0]:
                for name in CONVERSIONS:
                    setattr(np, name, _conversions_plain.pop(name))
