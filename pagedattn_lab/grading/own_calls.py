"""What calling a learner's object calls as it is, by C code that leaves no frame of its own
(own_work.py): the check calls such a wrapper from its own frame, so in the notebook
own_watch.Watch cannot tell the package's answer called through it from the check's own
call of the answer."""
from __future__ import annotations

import gc
import inspect
import types
from functools import partial, partialmethod


def calls_through(value) -> list:
    """What calling `value` calls as it is, by C code that leaves no frame of its own: a
    partial's or partialmethod's function, a bound, static or class method's function, a
    wrapper's __wrapped__ (functools.lru_cache), an instance's __call__, the function a C
    wrapper that does not say what it wraps holds (`numpy.frompyfunc`, `f.__call__`)."""
    chain = []
    while all(value is not v for v in chain) and len(chain) < 32:
        chain.append(value)
        if isinstance(value, (partial, partialmethod)):
            value = value.func
        elif isinstance(value, (types.MethodType, staticmethod, classmethod)):
            value = value.__func__
        elif inspect.getattr_static(value, "__wrapped__", None) is not None:
            value = inspect.getattr_static(value, "__wrapped__")
        elif not isinstance(value, (type, types.FunctionType)) and \
                isinstance(call := _class_call(type(value)), _PYTHON_CALLABLES):
            value = call
        elif (held := _held_by_c(value)) is not None:
            value = held
        else:
            break
    return chain[1:]


_PYTHON_CALLABLES = (types.FunctionType, partial, partialmethod, staticmethod, classmethod)


def _held_by_c(value):
    """The function or C callable that `value`, a callable of a type written in C (not a
    class, not a function), holds, as the garbage collector sees what it references: the
    function `numpy.frompyfunc` wraps, a method-wrapper's function. None for one holding
    none (`len`, `np.add`)."""
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)) or \
            not callable(value) or type(value).__flags__ & _HEAP_TYPE:
        return None
    held = [r for r in gc.get_referents(value) if callable(r) and not isinstance(r, type)]
    return next((r for r in held if isinstance(r, types.FunctionType)), None) or \
        next((r for r in held if not type(r).__flags__ & _HEAP_TYPE), None)


_HEAP_TYPE = 1 << 9   # Py_TPFLAGS_HEAPTYPE: a class written in Python


def _class_call(cls):
    """`cls.__call__` as its class body holds it (not the metaclass's, read without running
    a descriptor)."""
    return next((vars(k)["__call__"] for k in cls.__mro__ if "__call__" in vars(k)), None)
