"""Whether a submission is the learner's own work, not the package's finished answer.

The package ships the finished versions of what the workbooks ask for (the float64
references, `addressing.gather_kv_reference`, the kernels under `pagedattn_lab/kernels`),
so an answer that returns `pagedattn_lab.reference.reference_decode(...)` or compiles a
string read from `prefill_naive.cu` passes every case. Before a task's check runs:

- `kernel_findings` (run where the check runs, the judge under the grader): a CUDA C source
  that holds the body of a function of the package's kernel files word for word (comments,
  spacing, line splices, preprocessor lines and the spelling of a token aside: digraphs,
  `and` for `&&`), or #includes one of those files, whatever way the text was read;
- `python_findings` (run where the learner's objects live: the notebook, or the sandbox,
  whose forwarder sends them with the check request): the learner's function or class is
  one of the task's answers (own_answers.py), wraps one (a partial, staticmethod, lru_cache,
  an instance's __call__, C code holding it, `numpy.frompyfunc`: the check itself would call
  it), a subclass, or a class keeping
  an answer method unwritten, or its source (and what its decorators wrap) names one
  outside a type hint and not shadowed by a name it binds, through any alias,
  `getattr(module, "name")`, `importlib.import_module("...")` or `__import__`, or calls a
  function or class of `pagedattn_lab.grading` (the grader's own expected values);
- `Watch`: while the check runs, the task's answer functions and methods and the grader's
  own expected values (every function at the top of a `checks_*` module or a mistake model)
  report each call whose caller is not package code, or is the judge serving the sandbox a
  call of an object the check lent it (`cache.pages_needed(...)` under the grader); in the
  sandbox, every call, whoever the caller (no package code answers the judge there with
  them: a call by package code is one the learner's object had it make, through C code
  that hides what it wraps, `numpy.frompyfunc`, or a package helper given a callback).
  Their code is switched, not the names that hold them, so a call is seen however the
  function was reached: a name built at run time (`getattr(ref, "reference_" + "decode")`),
  a dict, an object or a bound method made before the check, `super().decode_step(...)`,
  `exec`. Package code is code its file compiles to, run in its module's namespace: code
  compiled under a package file's name is the learner's, wherever it runs.

A copy of an answer's code (`types.FunctionType(f.__code__, ...)`, or its `__code__.replace`
under another file name), passed, held by a class or named in the learner's source, is
refused as the answer itself: the bytecode, its constants and names are compared, not the
object, unless the function's own source outside the package compiles to it (own_copies.py).
Not caught: in the notebook (not under the grader), the answer in C code that does not say
what it wraps, called by the check or a package helper (the check's own calls of the answer
look the same there); a kernel copied and then edited; the tasks with no entry in ANSWERS
(own_answers.py lists them, and why); code that patches the sandbox's runner or this module
there (the judge trusts the sandbox's word on the learner's Python, the kernel text it
reads itself).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
import types
from functools import lru_cache
from pathlib import Path

from ..cuda_text import strip_comments
from .own_answers import PACKAGE, answers
from .own_copies import copies as _copies, copy_of
from .own_calls import calls_through as _calls_through
from .own_watch import Watch, package_code  # (Watch: runner.py uses it from here)

_KERNELS = Path(__file__).resolve().parent.parent / "kernels"
HINT = ("write the task's code yourself in the cell: the package's finished version is what "
        "your answer is compared with, so calling it shows nothing of yours.")


def refusal(task: str, findings: list[str]) -> str:
    """The learner's message: what was expected, what came, where, a hint."""
    return (f"{task}: expected your own implementation, but {findings[0]}"
            f"{f' (and {len(findings) - 1} more)' if len(findings) > 1 else ''}. Hint: {HINT}")


# -- CUDA C: the text itself -------------------------------------------------------------------
# What the compiler reads as the same tokens, written the one way the package's files write
# them: digraphs and C++'s alternative operator names (the longer first), so that the package's
# text spelled `<% ... %>` or `not_eq` is still its text.
_SPELLINGS = {"<%": "{", "%>": "}", "<:": "[", ":>": "]", "%:%:": "##", "%:": "#",
              "and_eq": "&=", "or_eq": "|=", "xor_eq": "^=", "not_eq": "!=", "bitand": "&",
              "bitor": "|", "compl": "~", "and": "&&", "or": "||", "xor": "^", "not": "!"}
_SPELLING = re.compile(r"%:%:|<%|%>|<:(?!:(?![:>]))|:>|%:|"
                       r"\b(?:and_eq|or_eq|xor_eq|not_eq|bitand|bitor|compl|and|or|xor|not)\b")
# a backslash-newline and what it continues (translation phase 2): the lines joined, their
# newlines kept after the joined line, so the line numbers below it stay
_SPLICED = re.compile(r"(?:\\\r?\n(?:[^\\\n]|\\(?!\r?\n))*)+")
# a preprocessor line, once comments are blanked: a null directive (`#` alone), a `#pragma`
# or an `#if 1` inside a function changes no token of its code
_DIRECTIVE_LINE = re.compile(r"^[ \t]*#[^\n]*", re.M)


def _tokens_text(code: str) -> str:
    """`code` as its tokens read: lines joined, comments, literals' contents and preprocessor
    lines blanked, every token in the package's spelling (line numbers kept)."""
    joined = _SPLICED.sub(lambda m: re.sub(r"\\\r?\n", "", m[0]) + "\n" * m[0].count("\n"),
                          code)
    spelled = _SPELLING.sub(lambda m: _SPELLINGS[m[0]], strip_comments(joined))
    return _DIRECTIVE_LINE.sub("", spelled)


def _squeezed(code: str) -> str:
    return re.sub(r"\s+", "", _tokens_text(code))


@lru_cache(maxsize=1)
def _kernel_bodies() -> tuple[tuple[str, str], ...]:
    """(where, squeezed text) of every long brace block, at depth 0 or 1, of the package's
    kernel files: the __global__ wrappers are a line each, the work is in the device
    templates they call (and a function's loop is enough to pass some checks)."""
    out = []
    for path in sorted([*_KERNELS.glob("*.cu"), *_KERNELS.glob("*.cuh")]):
        code = _tokens_text(path.read_text(encoding="utf-8"))
        opened: list[int] = []
        for i, char in enumerate(code):
            if char == "{":
                opened.append(i)
            elif char == "}" and opened:
                start = opened.pop()
                body = re.sub(r"\s+", "", code[start + 1:i])
                if len(opened) <= 1 and len(body) > 300:   # not written this way by chance
                    out.append((f"{path.name} line {code.count(chr(10), 0, start) + 1}", body))
    return tuple(out)


def kernel_findings(args, kwargs) -> list[str]:
    """What in the CUDA C strings among the arguments is a package kernel's own text."""
    from .kernel_lint import MAX_SOURCE  # noqa: PLC0415 - its report imports numpy
    found = []
    for value in [*args, *kwargs.values()]:
        # (a longer source is refused by the check's lint before anything else reads it)
        if not isinstance(value, str) or "__global__" not in value or len(value) > MAX_SOURCE:
            continue
        # a directive, not one in a comment (`// #include "decode.cu"`: the line taken out);
        # within its line (\s would run over every blank line from each line start: hours)
        directives = re.sub(r"//[^\n]*", " ", re.sub(r"/\*.*?\*/", " ", value, flags=re.S))
        for m in re.finditer(r'^[ \t]*#[ \t]*include[ \t]*[<"]([^>"\n]+)[>"]', directives,
                             re.M):
            if (_KERNELS / Path(m.group(1)).name).is_file():
                found.append(f"your source #includes the package's kernel file "
                             f"{m.group(1)!r}")
        squeezed = _squeezed(value)
        found += [f"your source holds the code of pagedattn_lab/kernels/{where} word for word"
                  for where, body in _kernel_bodies() if body in squeezed]
    return found


# -- Python: the objects and their source ------------------------------------------------------
def python_findings(task: str, args, kwargs) -> list[str]:
    """What of the task's answers the learner's functions and classes among the arguments
    are, inherit or name in their source."""
    wanted = answers(task)
    copies = _copies(wanted)
    found = []
    for value in [*args, *kwargs.values()]:
        inside = [v for v in _calls_through(value) if id(v) in wanted]
        copied = [name for v in [value, *_calls_through(value)]
                  if (name := copy_of(v, copies)) is not None]
        if id(value) in wanted:
            found.append(f"you passed {wanted[id(value)][0]} itself")
        elif inside:
            found.append(f"you passed {wanted[id(inside[0])][0]} wrapped in a "
                         f"{type(value).__name__}")
        elif copied:
            found.append(f"you passed a copy of {copied[0]}'s code")
        elif isinstance(value, type):
            found += [f"{value.__name__} inherits from {wanted[id(b)][0]}"
                      for b in value.__mro__[1:] if id(b) in wanted]
            found += _kept(value, wanted, copies)
        for fn in _functions_of(value):
            found += [f"a default argument of {fn.__name__} is {wanted[id(d)][0]}"
                      for d in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values())
                      if id(d) in wanted]
            found += _named_in(fn, wanted, copies)
    return found


def _kept(cls, wanted, copies) -> list[str]:
    """The answer methods `cls` keeps as the package's class wrote them (not its own), as
    they are, wrapped (`decode_step = functools.partialmethod(...)`) or copied."""
    found = []
    for dotted, fn in wanted.values():
        kept = inspect.getattr_static(cls, getattr(fn, "__name__", ""), None)
        if isinstance(fn, types.FunctionType) and \
                any(held is fn or copy_of(held, copies) == dotted
                    for held in [kept, *_calls_through(kept)]):
            found.append(f"{cls.__name__}.{fn.__name__} is {dotted}: your class does not "
                         f"write it")
    return found


def _functions_of(value) -> list:
    if isinstance(value, types.FunctionType):
        return _decorated(value)
    if isinstance(value, type) and not _ours(value):
        return [g for k in value.__mro__ if not _ours(k) and k is not object
                for f in vars(k).values() if isinstance(f, types.FunctionType)
                for g in _decorated(f)]
    return []


def _decorated(fn) -> list:
    """`fn` and the functions its decorators wrap (`functools.wraps`' __wrapped__), each read
    with its own code and globals: the decorator may live in a module whose names are not
    the cell's. The package's own wrappers are not the learner's code."""
    chain = []
    while isinstance(fn, types.FunctionType) and all(fn is not f for f in chain):
        chain.append(fn)
        fn = getattr(fn, "__wrapped__", None)
    return [f for f in chain if not package_code(f.__code__, f.__globals__)]


def _ours(obj) -> bool:
    return str(getattr(obj, "__module__", "") or "").split(".")[0] == PACKAGE


def _named_in(fn, wanted, copies) -> list[str]:
    try:
        lines, first = inspect.getsourcelines(fn.__code__)   # the function's, not __wrapped__'s
        source = textwrap.dedent("".join(lines))
        margin = len(lines[0]) - len(source.splitlines(True)[0])   # columns dedent took
        tree = _own_node(fn, ast.parse(source), first, margin)
    except (OSError, TypeError, SyntaxError):
        return []
    scope = dict(fn.__globals__)
    scope.update(zip(fn.__code__.co_freevars,
                     (c.cell_contents for c in fn.__closure__ or () if _filled(c))))
    for name in _bound(tree):   # a name the function binds is its own, not a global's
        scope.pop(name, None)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            _bind_imports(node, scope)
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    hints = _hints(tree)
    found = []
    for node in ast.walk(tree):
        held = scope.get(node.id) if isinstance(node, ast.Name) and id(node) not in hints \
            else None
        copied = copy_of(held, copies) if id(held) not in wanted else None
        if copied is not None:
            found.append(f"line {first + node.lineno - 1} of {fn.__name__} uses a copy of "
                         f"{copied}'s code")
        obj = None if id(node) in hints else _resolve(node, scope)
        if obj is None:
            continue
        line = f"line {first + node.lineno - 1} of {fn.__name__}"
        if id(obj) in wanted:
            found.append(f"{line} uses {wanted[id(obj)][0]}")
        elif id(node) in called and isinstance(obj, (type, types.FunctionType)) and \
                str(getattr(obj, "__module__", "")).startswith(f"{PACKAGE}.grading") and \
                obj.__module__ != __name__:   # (a check itself: `guarded` wraps them all)
            found.append(f"{line} uses the grader's {obj.__module__}.{obj.__name__}")
    return list(dict.fromkeys(found))


def _hints(tree) -> set[int]:
    """The nodes of type hints (`other: pl.BlockAllocator`, `-> ...`): a hint names a type,
    it does not use it."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    roots = [node.returns if isinstance(node, functions) else node.annotation
             for node in ast.walk(tree) if isinstance(node, (ast.arg, ast.AnnAssign, *functions))]
    return {id(inner) for root in roots if root is not None for inner in ast.walk(root)}


def _bound(tree) -> set[str]:
    """The names the code binds: assigned, parameters, nested def and class, `import` (a
    package import is bound again to its object after), `except ... as`, match captures."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return names


def _own_node(fn, tree, first: int, margin: int):
    """The part of the parsed source lines that is `fn`: a lambda's lines also hold the call
    it is passed to (`check.pages_needed(lambda n, p: ...)`) and maybe other lambdas with
    the same parameters (`mine, theirs = lambda n, p: ..., lambda n, p: ...`), which are not
    the answer: the lambda is the one whose span holds where its code came from."""
    code = fn.__code__
    if code.co_name != "<lambda>":   # (a decorator's wrapper may carry a lambda's __name__)
        return tree
    params = list(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])
    mine = [node for node in ast.walk(tree) if isinstance(node, ast.Lambda) and
            [a.arg for a in (*node.args.args, *node.args.kwonlyargs)] == params]
    spots = [(line, col, end_line, end_col)   # zero-width spots (the RESUME) are not the body
             for line, end_line, col, end_col in code.co_positions()
             if None not in (line, end_line, col, end_col) and (line, col) != (end_line, end_col)]

    def holds(node):
        start = (first + node.lineno - 1, node.col_offset + margin)
        end = (first + node.end_lineno - 1, node.end_col_offset + margin)
        return bool(spots) and all(start <= (line, col) and (end_line, end_col) <= end
                                   for line, col, end_line, end_col in spots)
    mine = [node for node in mine if holds(node)][-1:] or mine   # the innermost that holds it
    return ast.Module(body=[ast.Expr(node) for node in mine], type_ignores=[]) if mine else tree


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _bind_imports(node, scope) -> None:
    for alias in node.names:
        if isinstance(node, ast.Import):
            top = alias.name.split(".")[0]
            module = _module(alias.name if alias.asname else top)
            if module is not None:
                scope[alias.asname or top] = module
        elif node.module and node.level == 0:
            module = _module(node.module)
            value = getattr(module, alias.name, None) if module else None
            value = value if value is not None else _module(f"{node.module}.{alias.name}")
            if value is not None:
                scope[alias.asname or alias.name] = value


def _module(name: str):
    if name.split(".")[0] != PACKAGE:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _resolve(node, scope):
    """The package object an expression names, without running the learner's code: names,
    attributes of modules, getattr(module, "const"), import_module("const")."""
    if isinstance(node, ast.Name):
        value = scope.get(node.id)
        return value if _ours(value) or (isinstance(value, types.ModuleType) and
                                         value.__name__.split(".")[0] == PACKAGE) else None
    if isinstance(node, ast.Attribute):
        return _member(_resolve(node.value, scope), node.attr)
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[-1], ast.Constant):
        callee, const = node.func, node.args[-1].value
        name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
        if name == "getattr" and len(node.args) >= 2 and isinstance(const, str):
            return _member(_resolve(node.args[0], scope), const)
        if name == "import_module" and isinstance(const, str):
            return _module(const)
        if name == "__import__" and isinstance(const, str):   # the top package, as Python's
            return _module(const) and _module(const.split(".")[0])
    return None


def _member(base, name: str):
    """An attribute of a package module, or a member of a package class as the class holds
    it (`pl.PagedAttentionManager.decode_step`), read without running a descriptor."""
    if isinstance(base, types.ModuleType):
        return getattr(base, name, None)
    return inspect.getattr_static(base, name, None) if isinstance(base, type) else None


# -- around a check ----------------------------------------------------------------------------
def guarded(task: str, check):
    """`check` refusing the package's own answer: before it runs (the arguments), and while
    it runs (the calls of `Watch`)."""
    def run(*args, **kwargs):
        found = kernel_findings(args, kwargs) + python_findings(task, args, kwargs)
        if not found:
            with Watch(task) as watch:
                result = check(*args, **kwargs)
            if not watch.found:
                return result
            found = watch.found
        return refused(task, found)
    run.__name__ = run.__qualname__ = check.__name__
    run.__doc__, run.__wrapped__ = check.__doc__, check
    return run


def refused(task: str, found: list[str]):
    from .report import FAILED, CheckResult, record  # noqa: PLC0415 - report imports numpy
    text = refusal(task, list(dict.fromkeys(found)))
    print(f"FAIL {text}")
    result = CheckResult(task, FAILED, [], [text])
    record(result)
    return result
