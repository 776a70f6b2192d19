"""Stand-ins for the objects of the other process, and what the judge lets cross.

Under the grader, a check runs in the judge and the learner's code in the sandbox
(remote.py). The check holds a `Remote` for the learner's class, function or instance:
getattr, call, len, iter, int, float, np.asarray... on it ask the sandbox, whose answer is
plain data or another handle. Attributes with a double underscore are never asked for
(except a name or a docstring): numpy probes `__array_interface__` and the like, and an
answer from a hostile sandbox would make the judge read memory at an address it chose.

The other way round, the judge lends the learner only what `shareable` allows: instances
of the package's classes (public attributes only), their bound methods and functions the
package defines, never a module, a class or anything else from which `os` or a check's
expected values could be reached.
"""
from __future__ import annotations

import operator
import types

import numpy as np

from ..backend import array_module, is_cupy_array, to_numpy

SPECIALS = {"len": len, "iter": list, "getitem": operator.getitem,
            "contains": lambda obj, key: key in obj, "bool": bool, "int": int,
            "float": float, "index": operator.index, "array": np.asarray}
SHARED_DUNDERS = {"__name__", "__qualname__", "__module__", "__doc__"}


class Remote:
    """An object that lives on the other side; see the module docstring."""

    __slots__ = ("_peer", "_handle", "_type")

    def __init__(self, peer, handle: int, type_name: str):
        object.__setattr__(self, "_peer", peer)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type", type_name)

    def __getattr__(self, name: str):
        # numpy and friends probe __array_interface__ and the like: an answer would make
        # this process read memory at an address the other side chose
        if name.startswith("__") and name not in SHARED_DUNDERS:
            raise AttributeError(name)
        return self._peer.request("getattr", target=self, name=name)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot set {name!r} on an object of the other process")

    def _special(self, name: str, *args):
        return self._peer.request("special", target=self, name=name, args=list(args))

    def __len__(self):
        return self._special("len")

    def __iter__(self):
        return iter(self._special("iter"))

    def __getitem__(self, key):
        return self._special("getitem", key)

    def __contains__(self, key):
        return self._special("contains", key)

    def __bool__(self):
        return self._special("bool")

    def __int__(self):
        return self._special("int")

    def __float__(self):
        return self._special("float")

    def __index__(self):
        return self._special("index")

    def __array__(self, dtype=None, copy=None):
        arr = self._special("array")
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"<{self._type} object of the other process>"


class RemoteCallable(Remote):
    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._peer.request("call", target=self, args=list(args), kwargs=kwargs)


def shareable(obj) -> str | None:
    """'instance' or 'callable' for what the judge may hand to the sandbox, else None."""
    def ours(module) -> bool:
        return isinstance(module, str) and (module == "pagedattn_lab" or
                                            module.startswith("pagedattn_lab."))
    if isinstance(obj, (types.ModuleType, type)):
        return None
    if isinstance(obj, types.MethodType):
        return "callable" if shareable(obj.__self__) == "instance" else None
    if isinstance(obj, types.FunctionType):
        return "callable" if ours(obj.__module__) else None
    if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return None
    return "instance" if ours(type(obj).__module__) else None


def copy_back(target, value) -> None:
    """Put what the other side's code left in a list, array, dict or record into the
    caller's object, keeping the identity of the items it holds (a check may compare them
    with copies it made before the call)."""
    if isinstance(target, list) and isinstance(value, list):
        if len(target) == len(value):
            for i, (old, new) in enumerate(zip(target, value)):
                if _updatable(old, new):
                    copy_back(old, new)
                else:
                    target[i] = new
        else:
            target[:] = value
    elif isinstance(target, dict) and isinstance(value, dict):
        target.clear()
        target.update(value)
    elif isinstance(target, types.SimpleNamespace) and isinstance(value, types.SimpleNamespace):
        vars(target).clear()
        vars(target).update(vars(value))
    elif _is_array(target) and _is_array(value) and value.size == target.size and \
            (is_cupy_array(target) or target.flags.writeable):
        if not _same_shape_or_set(target, value.shape):
            value = value.reshape(target.shape)
        if is_cupy_array(target):
            target[...] = array_module(target).asarray(value)
            return
        np.asarray(target)[...] = to_numpy(value)
        for key, new in getattr(value, "__dict__", {}).items():   # e.g. an indexing counter
            old = getattr(target, key, None)
            if isinstance(old, list) and isinstance(new, list):
                old[:] = new


def _same_shape_or_set(target, shape) -> bool:
    """Whether target has `shape`, after giving it the shape the other side's code gave its
    copy (a.shape = ...: the check must see the change it would see in the notebook); False
    where target's memory cannot take it in place (not one contiguous segment)."""
    if target.shape != shape:
        try:   # NumPy: resize (setting .shape is deprecated in 2.5); same size, no copy
            if is_cupy_array(target):
                target.shape = shape
            else:
                target.resize(shape, refcheck=False)
        except (AttributeError, ValueError):
            return False
    return True


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def _updatable(old, new) -> bool:
    return type(old) is type(new) and isinstance(old, (list, dict, types.SimpleNamespace)) or (
        _is_array(old) and _is_array(new) and old.shape == new.shape
        and is_cupy_array(old) == is_cupy_array(new))   # an item moved to the other device
                                                        # is a new item, as in the notebook
