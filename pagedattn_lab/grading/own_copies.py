"""Copies of an answer's code, for own_work.py: a function made from an answer's code object
(`types.FunctionType(f.__code__, ...)`, or its `__code__.replace` under another file name or
first line) is the answer itself, whatever object holds it. The bytecode, its constants and
names are compared, not the code object. A function whose own source, outside the package,
compiles to that code is the learner's: typed under the answer's parameter names, a one-line
answer (`-(-tokens // page_size)`) is the same bytecode."""
from __future__ import annotations

import inspect
import textwrap
import types

from .own_watch import in_package


def code_key(fn):
    """What makes a function's code the same code (None for anything but a function)."""
    code = getattr(fn, "__code__", None) if isinstance(fn, types.FunctionType) else None
    return None if code is None else _key(code)


def _key(code: types.CodeType) -> tuple:
    return code.co_code, code.co_consts, code.co_names, code.co_varnames, code.co_freevars


def copies(wanted) -> dict:
    """code key -> dotted name, for the task's answers (own_answers.answers) that are Python
    functions."""
    return {code_key(fn): dotted for dotted, fn in wanted.values()
            if isinstance(fn, types.FunctionType)}


def copy_of(fn, keys: dict) -> str | None:
    """The dotted name of the answer whose code `fn` runs as a copy of it (`keys`: copies()),
    None if it runs none or its source says the learner wrote it."""
    key = code_key(fn)
    if key not in keys or _written(fn.__code__, key):
        return None
    return keys[key]


def _written(code: types.CodeType, key: tuple) -> bool:
    """Whether the source at the code's file and first line (a cell, a learner's file)
    compiles to this code. A copy's source is the package's file, or none, or other code."""
    if in_package(code.co_filename):
        return False
    try:
        source = textwrap.dedent("".join(inspect.getsourcelines(code)[0]))
        module = compile(source, code.co_filename, "exec", dont_inherit=True)
    except (OSError, TypeError, SyntaxError, ValueError):
        return False
    return any(_key(c) == key for c in module.co_consts if isinstance(c, types.CodeType))
