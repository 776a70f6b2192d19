"""Lesson 02's gather: whether an answer followed the block-table row's -1 padding.

No page id is negative, so a negative index into the cache is the padding used as a page id:
NumPy takes it from the end of the cache without a word (a GPU kernel reads out of bounds),
and a result cut to seq_len afterwards shows nothing of it. The cache's watch
(`checks_addressing._Counted`) keeps the lowest negative index along an axis whose steps
cross pages (`lowest_page_index`), in the cache, any view of it (its page axis, transposed
or not, its slots or elements flattened), any copy of a view of it in the view's order or
its memory's (.copy(), .astype, .flatten(), a reshape or ravel that copies, an elementwise
ufunc's result such as k_cache + 0, np.concatenate(k_cache), a Fortran-order copy: its pages
innermost), its .tolist() (a list's -1 is its last page too) and its .base; an axis inside
a page (a page's tokens, the heads, the dims) is not one (page_indices reads which axes cross
pages). NumPy's conversions to a plain array (np.asarray(k_cache), np.frombuffer of it, of
a memoryview of it or of its .tobytes()...) would drop the watch: while the learner's gather
runs, they keep it (`conversions_watched`), through the numpy module's names and those the
learner's module imported from it, in the notebook and in the grader's sandbox alike.
Reading a real page in a padding entry's place (page 0 for -1) follows no padding; a
result that keeps those rows fails on its values. NumPy's printing of the cache (print,
repr, np.array2string), which indexes each row counted from the end, reads a plain view.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading

import numpy as np

from .page_indices import (c_strides, copy_pages, crosses_pages, lowest_page_index,
                           lowest_taken, watched_levels)
from .report import Mismatch

# NumPy's conversions that give an ndarray subclass (or its memory) back as a plain array
# (np.asanyarray and np.copy's dispatch keep it): see conversions_watched
CONVERSIONS = ("asarray", "array", "ascontiguousarray", "asfortranarray", "frombuffer")
# NumPy's functions that join the pages of an array passed alone (or alone in a list): their
# result holds its elements in its C order, so a copy of it all (see joined_in_order)
JOINS = (np.concatenate, np.stack, np.vstack)
# NumPy's printing of an array: it indexes each row counted from the end (-1 among them),
# no read of the learner's (see PaddingWatch.__repr__)
PRINTS = (np.array2string, np.array_repr, np.array_str)


# Python's and NumPy's own integer types: a subclass may answer `< 0` as it likes
_PLAIN_INTEGERS = frozenset([int] + [np.dtype(c).type for c in np.typecodes["AllInteger"]])


def _whole_non_negative(key) -> bool:
    """Whether an index is integers only, none negative (`k_cache[page, slot, h, d]` in a
    learner's loop): no padding among them, so lowest_page_index, ~20x this check's time, would
    find none (the grader's gather checks index the cache millions of times)."""
    for part in key if type(key) is tuple else (key,):
        if type(part) not in _PLAIN_INTEGERS or part < 0:
            return False
    return True


class PaddingWatch:
    """An ndarray subclass's share (listed before np.ndarray among its bases) that keeps, in
    `negative_ids` (a list the cache, its views and its copies share), the first negative
    index the cache was indexed with across pages; `page_bytes`: how far apart the pages of
    its memory lie; `page_period`: after how many bytes they come round again (a copy whose
    pages are its innermost axis; None: never, see page_indices). A gather's result is a
    copy the learner made, not watched."""

    def watch(self, negative_ids: list) -> None:
        """Watch this array, the cache as the learner gets it (pages on its first axis)."""
        self._share_watch(negative_ids, self.strides[0], None)

    def __array_finalize__(self, obj):
        # a view's reads are the cache's
        ids = getattr(obj, "negative_ids", None)
        if ids is not None and np.may_share_memory(self, obj):
            self._share_watch(ids, obj.page_bytes, obj.page_period)
        else:
            self._share_watch(None, None, None)

    def __getitem__(self, key):
        if self._watching() and not _whole_non_negative(key):
            self._note(lowest_page_index(key, self.shape, self.strides, self.page_bytes,
                                         self.page_period))
        return super().__getitem__(key)

    def take(self, indices, axis=None, out=None, mode="raise"):
        # (np.take calls this method; mode "clip" reads page 0 for -1, following nothing)
        if self._watching() and mode != "clip":
            self._note(lowest_taken(indices, axis, self.shape, self.strides, self.page_bytes,
                                    self.page_period))
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
        crossing = [crosses_pages(n, s, self.page_bytes, self.page_period)
                    for n, s in zip(self.shape, self.strides)]
        return watched_levels(super().tolist(), crossing, self.negative_ids)

    @property
    def base(self):
        # (the array this one views: the cache's memory, so the cache's watch; a stand-in
        # for a plain array has that array's base, so that a walk down .base ends where
        # NumPy's does, at the array owning the memory)
        stands_for = vars(self).get("_stands_for")
        return keep_watch(self, super().base if stands_for is None else stands_for.base)

    def tobytes(self, order="C"):
        # (np.frombuffer of them is a copy of this array: see keep_watch)
        return CacheBytes(super().tobytes(order), self, self._c_order(order))

    def __bytes__(self):
        return self.tobytes()

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # an elementwise ufunc's result over a watched input (k_cache + 0) copies it
        # (NumPy 1.x passes, and its ndarray takes, no return_scalar)
        out = super().__array_wrap__(array, context, return_scalar) if return_scalar else \
            super().__array_wrap__(array, context)
        inputs = context[1] if context is not None else ()
        source = next((x for x in inputs if isinstance(x, PaddingWatch) and
                       x.negative_ids is not None and x.shape == getattr(out, "shape", None)),
                      None)
        return source._watched_copy(out) if source is not None else out

    def __repr__(self):
        # (a print of the cache in the learner's gather is no read through the padding)
        return repr(self._printable())

    def __str__(self):
        return str(self._printable())

    def __array_function__(self, func, types, args, kwargs):
        if func in PRINTS and args and args[0] is self:
            return func(self._printable(), *args[1:], **kwargs)
        out = super().__array_function__(func, types, args, kwargs)
        if func is np.copy and args and args[0] is self:
            return self._watched_copy(out)
        joined = joined_in_order(func, args, kwargs) if func in JOINS else None
        return joined._watched_copy(out, in_c_order=True) if joined is not None else out

    @staticmethod
    def during_call(learner=None):
        """The context the function `learner` runs in, in the notebook and in the grader's
        sandbox (remote.Peer enters it for an argument of a class that has it)."""
        return conversions_watched(learner)

    def _printable(self) -> np.ndarray:
        """This array's elements as a plain array, neither watched nor counted (the base
        class's own view: this class's .view() would watch it)."""
        return np.ndarray.view(self, np.ndarray)

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
        crossing pages in it (copy_pages), and where it shares this array's memory (a
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
        pages = copy_pages(self.shape, self.strides, self.page_bytes, self.page_period, strides)
        if pages is None:
            return out
        watched = out if isinstance(out, PaddingWatch) else stand_in(out, type(self))
        watched._share_watch(self.negative_ids, *pages)
        return watched

    def _share_watch(self, negative_ids: list | None, page_bytes, page_period) -> None:
        self.negative_ids, self.page_bytes, self.page_period = \
            negative_ids, page_bytes, page_period


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


def keep_watch(source, out):
    """`out`, a plain array a conversion made of `source` (an array, a memoryview of one or
    the bytes of one's .tobytes()): if that array is a watched cache, watched as it is when
    it is a view of it or a copy of it all."""
    in_c_order = False
    if isinstance(source, memoryview):
        source = source.obj
    if isinstance(source, CacheBytes):
        source, in_c_order = source.source, source.in_c_order
    if not isinstance(source, PaddingWatch) or source.negative_ids is None or \
            type(out) is not np.ndarray:
        return out
    if not np.may_share_memory(out, source):
        return source._watched_copy(out, in_c_order)
    view = stand_in(out, type(source))  # (the watch only: a subclass's other records stay its own)
    view._share_watch(source.negative_ids, source.page_bytes, source.page_period)
    return view


def stand_in(out: np.ndarray, watched_class: type) -> PaddingWatch:
    """The plain array `out` viewed as `watched_class`, standing for it: its .base is out's."""
    view = out.view(watched_class)
    view._stands_for = out
    return view


class CacheBytes(bytes):
    """A watched array's .tobytes() (`source`), its elements in its C order where
    `in_c_order`: np.frombuffer of them is a copy of it."""

    def __new__(cls, data: bytes, source: PaddingWatch, in_c_order: bool):
        made = super().__new__(cls, data)
        made.source, made.in_c_order = source, in_c_order
        return made


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


def _watching(convert):
    @functools.wraps(convert)
    def converted(*args, **kwargs):
        source = args[0] if args else \
            kwargs.get("a", kwargs.get("object", kwargs.get("buffer")))
        return keep_watch(source, convert(*args, **kwargs))
    return converted


NUMPYS_OWN = {name: getattr(np, name) for name in CONVERSIONS}
WATCHING = {name: _watching(convert) for name, convert in NUMPYS_OWN.items()}
_OWN_BY_ID = {id(convert): name for name, convert in NUMPYS_OWN.items()}
_swap_lock = threading.Lock()
# (id(namespace), name) -> [namespace, the conversion's name, contexts open over it]
_swapped = {}


@contextlib.contextmanager
def conversions_watched(learner=None):
    """While the learner's gather runs (here, and in the grader's sandbox: remote.Peer),
    NumPy's conversions (np.asarray(k_cache), np.array, np.ascontiguousarray,
    np.asfortranarray, np.frombuffer) keep a watched cache's watch on their result
    (`keep_watch`): in the numpy module, and in the module of the function `learner` runs
    (_module_names: `from numpy import asarray` at the top of a notebook cell binds NumPy's
    own before the call). Calls through names bound elsewhere do not see it. The contexts may overlap
    (nested, or in threads, closed in any order): NumPy's own come back when the last one
    over a name closes, unless the learner bound the name to something else meanwhile."""
    # (numpy's module holds its conversions under their own names only; the learner's may
    # hold them under any: `from numpy import asarray as as_array`)
    scans = [(vars(np), CONVERSIONS)]
    learners = _module_names(learner)
    if isinstance(learners, dict) and learners is not scans[0][0]:
        scans.append((learners, list(learners)))
    keys = []   # each swapped in, kept as it is: an interrupt halfway undoes those before it
    try:
        with _swap_lock:
            for namespace, names in scans:
                for name in names:
                    key = _swap_in(namespace, name, namespace.get(name))
                    if key is not None:
                        keys.append(key)
        yield
    finally:
        with _swap_lock:
            for key in keys:
                _swap_out(key)


def _module_names(learner):
    """The globals of the function `learner` runs: its own, that of the function a
    functools.partial or a decorator (functools.wraps) wraps, or its class's __call__'s."""
    while isinstance(learner, functools.partial):
        learner = learner.func
    try:
        learner = inspect.unwrap(learner)
    except ValueError:   # (a cycle of __wrapped__)
        pass
    names = getattr(learner, "__globals__", None)
    return names if names is not None else \
        getattr(getattr(learner, "__call__", None), "__globals__", None)


def _swap_in(namespace: dict, name: str, value):
    """The key of `namespace[name]` in _swapped if it is (now) a watching conversion."""
    key = (id(namespace), name)
    if key in _swapped:
        _swapped[key][2] += 1
        return key
    own = _OWN_BY_ID.get(id(value))
    if own is None or value is not NUMPYS_OWN[own]:
        return None
    namespace[name] = WATCHING[own]
    _swapped[key] = [namespace, own, 1]
    return key


def _swap_out(key) -> None:
    entry = _swapped[key]
    entry[2] -= 1
    if entry[2]:
        return
    del _swapped[key]
    namespace, own, _ = entry
    if namespace.get(key[1]) is WATCHING[own]:
        namespace[key[1]] = NUMPYS_OWN[own]
