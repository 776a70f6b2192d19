"""The calls made while a check runs (own_work.py): the task's answers and the grader's own
expected values, watched by switching their code, so a call is seen however the learner's
code reached the function."""
from __future__ import annotations

import contextlib
import sys
import threading
import types
from functools import lru_cache
from pathlib import Path

from ..loaded_code import imported_code
from .own_answers import PACKAGE, answers

_ROOT = Path(__file__).resolve().parent.parent


class Watch(contextlib.AbstractContextManager):
    """While the check runs, every call of the task's answer functions and methods and of the
    grader's expected values (`_expected_values`) whose caller is not package code, or is
    remote.Peer._run (the judge calling, for the sandbox, an object the check lent it):
    `found` lists them. every_call (the sandbox's watch, runner.forwarder): every call,
    whatever its caller. Nothing of the package answers a grader's request there with the
    task's answer or a check's expected values, so a call by package code is one the
    learner's object had it make: the channel calling a C wrapper that hides its function
    (`numpy.frompyfunc(answer, 2, 1)`, `answer.__call__`), a package helper given the answer
    as a callback (bench.timing.call_ms).

    A call is reported to the outermost Watch of its own thread, else to an every_call one
    (the sandbox's, whichever thread the learner's code started), else to the one that
    switched the function.

    The functions themselves are switched, not the names that hold them: each one's code is
    replaced by a trampoline that reports its caller and calls a copy of the original, so a
    call arrives however the learner reached the function (an alias, a dict built before the
    check, `exec`); a copy of its code made before the check does not."""

    def __init__(self, task: str, *, every_call: bool = False):
        from .remote import Peer  # noqa: PLC0415 - remote imports much
        self.served, self.every_call = Peer._run.__code__, every_call
        self.thread = threading.get_ident()
        self.functions = {id(fn): (dotted, fn) for dotted, fn in
                          [*answers(task).values(), *_expected_values()]
                          if isinstance(fn, types.FunctionType) and fn.__closure__ is None}
        self.found: list[str] = []
        self.switched: list[tuple] = []   # (function, its own code)

    def __enter__(self):
        _WATCHES.append(self)
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
        with contextlib.suppress(ValueError):
            _WATCHES.remove(self)
        return False


_SWITCHED: dict[int, tuple] = {}   # id(function) -> (its Watch, dotted name)
# id(function) -> a copy of it with its own code; kept, for a call that entered the
# trampoline in another thread just before its Watch ended
_ORIGINALS: dict[int, types.FunctionType] = {}
_TRIPWIRE = "__pagedattn_lab_own_work_watch__"   # the modules' global the trampolines call
_WATCHES: list[Watch] = []   # the Watches entered and not ended, outermost first


def _called(key, args, kwargs):
    owner, dotted = _SWITCHED.get(key, (None, ""))
    watch = _reporting(key, owner)
    caller = sys._getframe(2)   # (this, the trampoline, its caller)
    if watch is not None and caller.f_code is watch.served:
        watch.found.append(f"your code called {dotted} through the grader's channel")
    elif watch is not None and not package_code(caller.f_code, caller.f_globals):
        watch.found.append(f"line {caller.f_lineno} of {caller.f_code.co_name} called {dotted}")
    elif watch is not None and watch.every_call:
        watch.found.append(f"your code had the package's {caller.f_code.co_name} call "
                           f"{dotted} for it")
    return _ORIGINALS[key](*args, **kwargs)


def _reporting(key, owner):
    """The Watch a call of the function `key` (switched by `owner`) reports to."""
    watches = [w for w in tuple(_WATCHES) if key in w.functions]
    here = threading.get_ident()
    return next((w for w in watches if w.thread == here), None) or \
        next((w for w in watches if w.every_call), None) or owner


__pagedattn_lab_own_work_watch__ = _called   # (here as in every module Watch switches)


def _trampoline(*args, **kwargs):
    return __pagedattn_lab_own_work_watch__("key", args, kwargs)


_TRAMPOLINE = _trampoline.__code__


def trampoline(code: types.CodeType, namespace: dict) -> bool:
    """A Watch's trampoline standing in for a package function: its frame wears the
    function's name, file and first line, and is no file's code (package_code), so an error
    a check's own code raised during a check was put at the line after that function's `def`
    (remote_errors.learner_frame)."""
    return code.co_code == _TRAMPOLINE.co_code and code.co_names == _TRAMPOLINE.co_names \
        and namespace.get(_TRIPWIRE) is _called


# the grader's modules whose functions compute expected values (not its machinery: the
# sandbox's audit hooks, the channel and the runner are called from the learner's frames)
_EXPECTED_MODULES = ("cases", "variants", "decode_variants", "quant_variants", "serve_order")


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
    reference.__file__, "exec")`) is the learner's, in the learner's namespace (one named
    "__main__" too, which IPython, the grader's sandbox, makes sys.modules' own) or in the
    package module's own (`exec(code, reference.__dict__)`): only code that the file itself
    compiles to is the package's."""
    name = namespace.get("__name__")
    if not in_package(code.co_filename) or not isinstance(name, str) or \
            name.split(".")[0] != PACKAGE or \
            getattr(sys.modules.get(name), "__dict__", None) is not namespace:
        return False
    return _genuine(code)


@lru_cache(maxsize=4096)
def _genuine(code: types.CodeType) -> bool:
    """Whether `code` is one of those its file's module was imported from (loaded_code.py;
    by any import of it: objects made before a reload still run the first one's), or, for a
    module imported before the recording began, one the file compiles to (code objects
    compare equal by their bytecode, constants, names, file, name and lines)."""
    imported = imported_code(code.co_filename)
    if imported is None:
        return code in _compiled(code.co_filename)
    return any(code in _nested(module) for module in imported)


@lru_cache(maxsize=256)
def _compiled(filename: str) -> frozenset:
    """Every code object of the package file `filename` as it compiles."""
    try:
        source = Path(filename).read_text(encoding="utf-8")
        return _nested(compile(source, filename, "exec", dont_inherit=True))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return frozenset()


@lru_cache(maxsize=256)
def _nested(module: types.CodeType) -> frozenset:
    """`module` and every code object nested in it (functions, classes, comprehensions)."""
    codes, todo = set(), [module]
    while todo:
        codes.add(code := todo.pop())
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return frozenset(codes)


@lru_cache(maxsize=256)
def in_package(filename: str) -> bool:
    if filename.startswith("<"):   # a cell, exec's "<string>": resolved, it would name a
        return False                # file in whatever folder the learner runs from
    try:
        return Path(filename).resolve().is_relative_to(_ROOT)
    except (OSError, ValueError):
        return False
