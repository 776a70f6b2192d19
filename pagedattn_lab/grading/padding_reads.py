"""Lesson 02's gather: whether an answer followed the block-table row's -1 padding.

No page id is negative, so a negative index into the cache is the padding used as a page id:
NumPy takes it from the end of the cache without a word (a GPU kernel reads out of bounds),
and a result cut to seq_len afterwards shows nothing of it. The cache's watch
(`checks_addressing._Counted`) keeps the lowest negative index along an axis whose steps
cross pages (`lowest_page_index`), in the cache, any view of it (its page axis, transposed
or not, its slots or elements flattened) or any copy of it all; an axis inside a page (a
page's tokens, the heads, the dims) is not one. NumPy's conversions to a plain array
(np.asarray(k_cache)...) would drop the watch: while the learner's gather runs, they keep
it (`conversions_watched`), in the notebook and in the grader's sandbox alike.
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

    def __array_function__(self, func, types, args, kwargs):
        out = super().__array_function__(func, types, args, kwargs)
        return self._watched_copy(out) if func is np.copy and args and args[0] is self \
            else out

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

    def _watched_copy(self, out):
        """`out`, a copy of this whole watched array in its own layout, watched as it is (a
        copy reads every page; indexing it through the padding is following it still). A
        copy in another order (np.asfortranarray's) is left unwatched."""
        if self.negative_ids is None or not isinstance(out, np.ndarray) or \
                out.shape != self.shape or not out.ndim or not out.flags.c_contiguous or \
                not self.flags.c_contiguous:
            return out
        watched = out.view(type(self))
        watched.negative_ids = self.negative_ids
        watched.page_bytes = self.page_bytes // self.itemsize * out.itemsize
        return watched


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
    raise Mismatch(f"right values, but k_cache was indexed with {index}: no page or slot is "
                   f"negative, so the row's padding ({padding}, -1) was followed, and NumPy "
                   f"took {index} from the end of the cache", "the row's padding (-1) was "
                   "used as a page id: take only the row's first ceil(seq_len / page_size) "
                   "entries (row[:n_pages]), or compute each token's slot from "
                   "row[t // page_size], before indexing the cache; NumPy wraps -1 to the "
                   "last page without a word, a GPU kernel reads out of bounds.",
                   expected=f"no negative index (pages from the row's first {n_used} "
                   "entries only)", got=str(index))


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
