"""The calls made while a check runs (own_work.py): the task's answers and the grader's own
expected values, watched by switching their code, so a call is seen however the learner's
code reached the function."""
from __future__ import annotations

import contextlib
import sys
import types
from functools import lru_cache
from pathlib import Path

from .own_answers import PACKAGE, answers

_ROOT = Path(__file__).resolve().parent.parent


class Watch(contextlib.AbstractContextManager):
    """While the check runs, every call of the task's answer functions and methods and of the
    grader's expected values (`_expected_values`) whose caller is not package code, or is
    remote.Peer._run (the judge calling, for the sandbox, an object the check lent it):
    `found` lists them.

    The functions themselves are switched, not the names that hold them: each one's code is
    replaced by a trampoline that reports its caller and calls a copy of the original, so a
    call arrives however the learner reached the function (an alias, a dict built before the
    check, `exec`); a copy of its code made before the check does not."""

    def __init__(self, task: str):
        from .remote import Peer  # noqa: PLC0415 - remote imports much
        self.served = Peer._run.__code__
        self.functions = {id(fn): (dotted, fn) for dotted, fn in
                          [*answers(task).values(), *_expected_values()]
                          if isinstance(fn, types.FunctionType) and fn.__closure__ is None}
        self.found: list[str] = []
        self.switched: list[tuple] = []   # (function, its own code)

    def __enter__(self):
        try:
            for key, (dotted, fn) in self.functions.items():
                if key in _SWITCHED:   # a Watch around this one has it
                    continue
                code = fn.__code__
                self.switched.append((fn, code))   # first: __exit__ undoes what follows
                original = types.FunctionType(code, fn.__globals__, fn.__name__,
                                              fn.__defaults__)
                original.__kwdefaults__ = fn.__kwdefaults__
                _SWITCHED[key] = (self, dotted)
                _ORIGINALS[key] = original
                fn.__globals__[_TRIPWIRE] = _called
                fn.__code__ = _TRAMPOLINE.replace(
                    co_consts=tuple(key if c == "key" else c for c in _TRAMPOLINE.co_consts),
                    co_name=code.co_name, co_qualname=code.co_qualname,
                    co_filename=code.co_filename, co_firstlineno=code.co_firstlineno)
        except BaseException:   # a KeyboardInterrupt, or the time limit of a case whose
            self.__exit__()     # answer runs a check: else what was switched stays so
            raise
        return self

    def __exit__(self, *exc):
        for fn, code in reversed(self.switched):   # (the modules keep _TRIPWIRE: a thread
            fn.__code__ = code                        # may be in a trampoline still)
            _SWITCHED.pop(id(fn), None)
        self.switched.clear()
        return False


_SWITCHED: dict[int, tuple] = {}   # id(function) -> (its Watch, dotted name)
# id(function) -> a copy of it with its own code; kept, for a call that entered the
# trampoline in another thread just before its Watch ended
_ORIGINALS: dict[int, types.FunctionType] = {}
_TRIPWIRE = "__pagedattn_lab_own_work_watch__"   # the modules' global the trampolines call


def _called(key, args, kwargs):
    watch, dotted = _SWITCHED.get(key, (None, ""))
    caller = sys._getframe(2)   # (this, the trampoline, its caller)
    if watch is not None and caller.f_code is watch.served:
        watch.found.append(f"your code called {dotted} through the grader's channel")
    elif watch is not None and not package_code(caller.f_code, caller.f_globals):
        watch.found.append(f"line {caller.f_lineno} of {caller.f_code.co_name} called {dotted}")
    return _ORIGINALS[key](*args, **kwargs)


__pagedattn_lab_own_work_watch__ = _called   # (here as in every module Watch switches)


def _trampoline(*args, **kwargs):
    return __pagedattn_lab_own_work_watch__("key", args, kwargs)


_TRAMPOLINE = _trampoline.__code__
# the grader's modules whose functions compute expected values (not its machinery: the
# sandbox's audit hooks, the channel and the runner are called from the learner's frames)
_EXPECTED_MODULES = ("cases", "variants", "decode_variants", "quant_variants")


def _expected_values() -> list[tuple[str, object]]:
    """(dotted name, function) of every function defined at the top of the grader's checks
    and mistake models loaded now."""
    prefix = f"{PACKAGE}.grading."
    modules = [m for n, m in list(sys.modules.items()) if m is not None and n.startswith(prefix)
               and (n[len(prefix):].startswith("checks_") or n[len(prefix):] in _EXPECTED_MODULES)]
    return [(f"the grader's {m.__name__}.{name}", fn) for m in modules
            for name, fn in vars(m).items()
            if isinstance(fn, types.FunctionType) and fn.__module__ == m.__name__]


def package_code(code: types.CodeType, namespace: dict) -> bool:
    """Code of a package file running in that module's own namespace, as every function the
    package defines does. Code compiled under a package file's name (`compile(src,
    reference.__file__, "exec")`) and run in the learner's namespace is the learner's: one
    named "__main__" too, which IPython (the grader's sandbox) makes sys.modules' own."""
    name = namespace.get("__name__")
    if not in_package(code.co_filename) or not isinstance(name, str) or \
            name.split(".")[0] != PACKAGE:
        return False
    return getattr(sys.modules.get(name), "__dict__", None) is namespace


@lru_cache(maxsize=256)
def in_package(filename: str) -> bool:
    if filename.startswith("<"):   # a cell, exec's "<string>": resolved, it would name a
        return False                # file in whatever folder the learner runs from
    try:
        return Path(filename).resolve().is_relative_to(_ROOT)
    except (OSError, ValueError):
        return False
