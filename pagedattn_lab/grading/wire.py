"""The values between a graded submission and the grader's judge: JSON plus raw array data.

No pickle anywhere: unpickling runs code chosen by the sender. A message is a JSON header
plus blobs, the raw bytes of the arrays (and bytes objects) it refers to (channel.py frames
them), and every size is checked before anything is allocated. Values travel as JSON trees:
plain JSON for None, bool, int, float (NaN and infinities too) and str; one-key objects
("markers") for what JSON lacks: {"$tuple": [...]}, {"$nd": blob, "dtype", "shape"} for an
array (one of the package's instrumented array classes keeps its class and attributes; a
CuPy array says "dev": "cuda" and arrives as a CuPy array where the receiver has a GPU, so a
learner's GPU code gets what it gets in the notebook),
{"$np": ...} for a NumPy scalar, named tuples, SimpleNamespace records, and so on.
Anything that is not data (a class, an instance, a function) is replaced by a handle
marker chosen by the caller (`ref`), and a handle marker coming in is turned into an object
by the caller too (`deref`): which objects may cross, and as what, is the business of
`remote.py`, not of this module.
"""
from __future__ import annotations

import collections
import functools
import importlib
import keyword
import math
import sys
import types

import numpy as np

from ..backend import cupy_module, gpu_available, is_cupy_array

MAX_HEADER = 8 << 20          # bytes of JSON in one frame
MAX_FRAME = 128 << 20         # bytes of blobs in one frame
MAX_DEPTH = 48                # nesting of lists, tuples, dicts
MAX_ITEMS = 1 << 20           # list items, dict entries... in one frame
# Distinct ints share a hash only from sys.hash_info.modulus (2**61 - 1) up: a set or dict of
# n such ints that collide costs n**2 / 2 comparisons in one C call no time limit stops
# (20 000 of them in 200 KiB: 15 s; a frame's worth: an hour of the judge's). No honest
# answer holds many; an honest frame never reaches this.
MAX_HUGE_INTS = 1000
SIMPLE_KINDS = "biufcSU"      # dtype kinds that may travel (never object or structured)
HANDLE_KEYS = ("$s", "$g", "$arg")
_HASH_MODULUS = sys.hash_info.modulus
CUPY_KINDS = "biufc"          # what a CuPy array may hold (no strings): a "dev" array else
                              # arrives as NumPy


class ProtocolError(Exception):
    """The other side sent something that is not a valid frame or value."""


class ChannelClosed(BaseException):
    """The other side is gone (or must be treated as gone): EOF, a deadline, an abort.

    A BaseException, so that the checks' `except Exception` does not mistake the end of a
    submission for a failure of the learner's code."""


class Unresponsive(ChannelClosed):
    """The other side did not answer before the deadline: the channel is closed, and the
    check that was waiting gets a "time limit" verdict instead of waiting for ever."""


def check_dtype(dtype) -> np.dtype:
    try:   # (NumPy's TypeError for a name it does not know would escape the judge's loop)
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"no dtype {str(dtype)[:40]!r}: {str(exc)[:80]}") from None
    if dt.kind not in SIMPLE_KINDS or dt.fields is not None or dt.hasobject or dt.subdtype:
        raise ProtocolError(f"dtype {dt} may not cross")
    return dt


def _sendable(dtype) -> np.dtype:
    """check_dtype for a value of this side's: a TypeError, answered to the other side as
    the value's fault (remote.py passes a ProtocolError on as a broken conversation: the
    judge waited for an answer never sent, then every later check of the notebook failed)."""
    try:
        return check_dtype(dtype)
    except ProtocolError as exc:
        raise TypeError(f"{exc}: only arrays of numbers, booleans or text travel between the "
                        f"notebook and the grader (not of Python objects, records or "
                        f"dates)") from None


class _Encoder:
    def __init__(self, ref):
        self.ref, self.blobs, self.size, self.items = ref, [], 0, 0
        self.shared: dict[int, int] = {}   # id of a list an instrumented array holds -> index

    def blob(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > MAX_FRAME:
            raise ValueError(f"the value is too large to send (over {MAX_FRAME >> 20} MiB)")
        self.blobs.append(data)
        return len(self.blobs) - 1

    def __call__(self, value, depth: int = 0):
        self.items += 1
        if depth > MAX_DEPTH or self.items > MAX_ITEMS:
            raise ValueError("the value is too deeply nested or too long to send")
        marker = self.ref(value, early=True)
        if marker is not None:
            return marker
        if value is None or type(value) in (bool, int, float, str):
            return value
        if isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__"):
            arr = np.ascontiguousarray(value.get() if not isinstance(value, np.ndarray)
                                       else value)
            _sendable(arr.dtype)
            tree = {"$nd": self.blob(arr.tobytes()), "dtype": arr.dtype.str,
                    "shape": list(arr.shape)}
            if is_cupy_array(value):
                tree["dev"] = "cuda"
            if type(value) is not np.ndarray and _instrumented(type(value)):
                tree["cls"] = f"{type(value).__module__}:{type(value).__qualname__}"
                tree["attrs"] = [[k, self.attr(v, depth)] for k, v in vars(value).items()]
            return tree
        if isinstance(value, np.generic) and value.dtype.kind in SIMPLE_KINDS:
            return {"$np": self.blob(value.tobytes()), "dtype": value.dtype.str}
        if isinstance(value, np.dtype):
            return {"$dtype": _sendable(value).str}
        if isinstance(value, type) and issubclass(value, np.generic):
            return {"$nptype": _sendable(value).str}
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, complex):
            return {"$complex": [value.real, value.imag]}
        if isinstance(value, (bytes, bytearray)):
            return {"$bytes": self.blob(bytes(value))}
        if isinstance(value, list):
            return [self(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            fields = getattr(type(value), "_fields", None)
            if isinstance(fields, tuple) and len(fields) == len(value):  # a named tuple
                return {"$ntuple": [self(v, depth + 1) for v in value],
                        "type": type(value).__name__, "fields": [str(f) for f in fields]}
            return {"$tuple": [self(v, depth + 1) for v in value]}
        if isinstance(value, (set, frozenset)):
            key = "$set" if isinstance(value, set) else "$fset"
            return {key: [self(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            return {"$dict": [[self(k, depth + 1), self(v, depth + 1)] for k, v in value.items()]}
        if isinstance(value, types.SimpleNamespace):   # a record of data (the checks use them)
            return {"$ns": [[str(k), self(v, depth + 1)] for k, v in vars(value).items()]}
        if isinstance(value, range):
            return {"$range": [value.start, value.stop, value.step]}
        if isinstance(value, slice):
            return {"$slice": [self(value.start, depth + 1), self(value.stop, depth + 1),
                               self(value.step, depth + 1)]}
        return self.ref(value, early=False)


    def attr(self, value, depth):
        """An instrumented array's attribute; a list two arrays share stays shared."""
        if not isinstance(value, list):
            return self(value, depth + 1)
        if id(value) in self.shared:
            return {"$shared": self.shared[id(value)]}
        self.shared[id(value)] = len(self.shared)
        return {"$shared": self.shared[id(value)], "value": self(value, depth + 1)}


def _instrumented(cls) -> bool:
    """An ndarray subclass of the package's own (a check's array that counts its indexing):
    it crosses with its class and attributes, so the learner's side instruments the same."""
    module = getattr(cls, "__module__", "") or ""
    return issubclass(cls, np.ndarray) and module.startswith("pagedattn_lab.")


@functools.cache
def _check_modules() -> frozenset[str]:
    """The modules an instrumented array class may come from: the checks' (lessons.py), which
    the judge imports anyway."""
    from ..lessons import check_modules  # noqa: PLC0415 - the registry imports no check
    return frozenset(f"{__package__}.{module}" for module in check_modules().values())


def encode(value, ref) -> tuple[object, list[bytes]]:
    """(JSON tree, blobs) for `value`. `ref(obj, early)` returns a marker for an object that
    must travel as a handle (early=True: before the data types are tried; return None to go
    on), and for early=False the marker for any non-data object (or raises TypeError)."""
    enc = _Encoder(ref)
    tree = enc(value)
    return tree, enc.blobs


class _Decoder:
    def __init__(self, blobs, deref):
        self.blobs, self.deref, self.items, self.huge = blobs, deref, 0, 0
        self.shared: dict[int, list] = {}

    def blob(self, index) -> bytes:
        if type(index) is not int or not 0 <= index < len(self.blobs):
            raise ProtocolError(f"bad blob index {index!r}")
        return self.blobs[index]

    def array(self, tree) -> np.ndarray:
        dt = check_dtype(str(tree.get("dtype")))
        shape = tree.get("shape", [])
        # (each axis bounded, and the size in exact integers: beside an axis of 0, or past
        # int64's wrap, a huge axis would match an empty blob and fail in reshape)
        if not isinstance(shape, list) or len(shape) > 32 or \
                not all(type(n) is int and 0 <= n <= MAX_FRAME for n in shape):
            raise ProtocolError(f"bad array shape {shape!r}")
        data = self.blob(tree.get("$nd", tree.get("$np")))
        if dt.itemsize == 0 or math.prod(shape) * dt.itemsize != len(data):
            raise ProtocolError("array size does not match its shape")
        # text past Unicode's last code point: the array decodes, and then every str(),
        # repr() or tolist() of it raises SystemError wherever the judge reads it
        if dt.kind == "U" and data and int(np.frombuffer(
                data, dtype=np.dtype(np.uint32).newbyteorder(dt.byteorder)).max()) > 0x10FFFF:
            raise ProtocolError("text of no Unicode character")
        arr = np.frombuffer(data, dtype=dt).reshape(shape).copy()
        if "cls" in tree:
            return self.instrumented(arr, tree)
        if tree.get("dev") == "cuda" and "$nd" in tree and dt.kind in CUPY_KINDS and \
                gpu_available():
            return cupy_module().asarray(arr)
        return arr

    def instrumented(self, arr, tree) -> np.ndarray:
        module, _, name = str(tree["cls"]).partition(":")
        # a check module's only: importing any other module the sender names runs its code
        # here (pagedattn_lab.bench.__main__ raised SystemExit and the judge died)
        if module not in _check_modules() or not name.isidentifier():
            raise ProtocolError(f"no array class {tree['cls']!r} here")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise ProtocolError(f"no array class {tree['cls']!r} here") from None
        if not isinstance(cls, type) or not _instrumented(cls):
            raise ProtocolError(f"{tree['cls']!r} is not an array class of the package")
        out = arr.view(cls)
        attrs = tree.get("attrs", [])
        for pair in attrs if isinstance(attrs, list) else [None]:
            # an attribute of the instance's own (a counter); one of the class (shape,
            # strides, T) would reshape the array or fail with NumPy's own error
            if not isinstance(pair, list) or len(pair) != 2 or not _identifier(pair[0]) or \
                    hasattr(cls, pair[0]):
                raise ProtocolError("bad array attribute")
            setattr(out, pair[0], self.attr(pair[1]))
        return out

    def attr(self, tree):
        if not (isinstance(tree, dict) and "$shared" in tree):
            return self(tree)
        key = tree["$shared"]
        if type(key) is not int:
            raise ProtocolError("bad shared attribute")
        if key not in self.shared:
            if "value" not in tree:
                raise ProtocolError("bad shared attribute")
            value = self(tree["value"])
            if not isinstance(value, list):
                raise ProtocolError("a shared attribute is a list")
            self.shared[key] = value
        return self.shared[key]

    def __call__(self, tree, depth: int = 0):
        self.items += 1
        if depth > MAX_DEPTH or self.items > MAX_ITEMS:
            raise ProtocolError("value too deeply nested or too long")
        if type(tree) is int and not -_HASH_MODULUS < tree < _HASH_MODULUS:
            self.huge += 1
            if self.huge > MAX_HUGE_INTS:
                raise ProtocolError(f"more than {MAX_HUGE_INTS} ints of magnitude 2**61 - 1 "
                                    "or more in one value")
        if tree is None or type(tree) in (bool, int, float, str):
            return tree
        if type(tree) is list:
            return [self(v, depth + 1) for v in tree]
        if type(tree) is not dict or len(tree) < 1:
            raise ProtocolError(f"unexpected JSON value of type {type(tree).__name__}")
        key = next(iter(tree))
        if key in HANDLE_KEYS:
            return self.deref(tree)
        if key == "$nd":
            return self.array(tree)
        if key == "$np":
            return self.array(tree)[()]
        if key == "$dtype":
            return check_dtype(str(tree[key]))
        if key == "$nptype":
            return check_dtype(str(tree[key])).type
        inner = tree[key]
        if key == "$bytes":
            return self.blob(inner)
        if key == "$complex" and isinstance(inner, list) and len(inner) == 2 and \
                all(type(v) in (int, float) for v in inner):
            try:
                return complex(float(inner[0]), float(inner[1]))
            except OverflowError:   # an int of JSON's past any float
                raise ProtocolError("bad $complex value") from None
        if key == "$range" and isinstance(inner, list) and len(inner) == 3 and \
                all(type(v) is int for v in inner) and inner[2] != 0:
            return _range(inner)
        if not isinstance(inner, list):
            raise ProtocolError(f"bad {key} value")
        if key == "$tuple":
            return tuple(self(v, depth + 1) for v in inner)
        if key == "$ntuple":
            cls = _named_tuple(tree.get("type"), tree.get("fields"))
            if len(inner) != len(cls._fields):
                raise ProtocolError("named tuple of the wrong length")
            return cls(*(self(v, depth + 1) for v in inner))
        if key in ("$set", "$fset"):
            items = [self(v, depth + 1) for v in inner]
            try:
                return set(items) if key == "$set" else frozenset(items)
            except TypeError as exc:
                raise ProtocolError(f"unhashable set member: {exc}") from None
        if key == "$slice" and len(inner) == 3:
            return slice(*(self(v, depth + 1) for v in inner))
        if key == "$ns":
            fields = {}
            for pair in inner:
                if not isinstance(pair, list) or len(pair) != 2 or not _identifier(pair[0]):
                    raise ProtocolError("bad namespace entry")
                fields[pair[0]] = self(pair[1], depth + 1)
            return types.SimpleNamespace(**fields)
        if key == "$dict":
            out = {}
            for pair in inner:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ProtocolError("bad dict entry")
                k = self(pair[0], depth + 1)
                try:
                    out[k] = self(pair[1], depth + 1)
                except TypeError as exc:
                    raise ProtocolError(f"unhashable dict key: {exc}") from None
            return out
        raise ProtocolError(f"unknown marker {key!r}")


def _identifier(name) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) \
        and not name.startswith("_") and len(name) <= 64


def _range(bounds: list[int]) -> range:
    """A range of at most MAX_ITEMS items: three ints stand for more items than a frame may
    hold, and a check reading one as a list (`list(got)`) would fill the judge's memory in
    one call that no time limit stops."""
    value = range(*bounds)
    try:
        if len(value) <= MAX_ITEMS:
            return value
    except OverflowError:   # (past a C ssize_t)
        pass
    raise ProtocolError(f"a range of more than {MAX_ITEMS} items")


@functools.lru_cache(maxsize=256)
def _named_tuple_class(name: str, fields: tuple[str, ...]) -> type:
    return collections.namedtuple(name, fields)


def _named_tuple(name, fields) -> type:
    """A named tuple class with these (checked) names, so `.seq_id` works on the copy."""
    if not _identifier(name) or not isinstance(fields, list) or len(fields) > 64 or \
            not all(_identifier(f) for f in fields) or len(set(fields)) != len(fields):
        raise ProtocolError("bad named tuple")
    return _named_tuple_class(name, tuple(fields))


def decode(tree, blobs: list[bytes], deref):
    """The value `tree` stands for; `deref(marker)` turns a handle marker into an object."""
    return _Decoder(blobs, deref)(tree)
