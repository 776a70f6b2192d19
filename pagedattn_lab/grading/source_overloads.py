"""A graded kernel must be one program on both devices (see source_macros.py), in the names
it finds too. The CPU build declares more than NVRTC does: the C library of the headers the
shim includes (strlen, rand, qsort, std:: math...), GCC's __builtin_* functions, a constexpr
warpSize (NVRTC's is a variable). A name one build lacks is an error there, except where C++
lets a failed substitution quietly drop an overload (SFINAE): a template whose signature asks
whether `strlen(t)` compiles (`-> decltype(strlen(t), 1)`) is chosen on the CPU build, its
fallback on the GPU, and `if (pick<const char*>(0)) __syncthreads();` keeps the barrier on
one build only; no run shows it. A kernel of this course needs no such question, so the lint
refuses an expression in a template's signature (its head, parameters, return type: decltype,
sizeof, noexcept, alignof, a dependent `typename T::` name, a pointer to a member, enable_if,
void_t) and a trailing `-> decltype(...)` (a generic lambda's). Plain templates (`template
<int TILE>`) pass."""
from __future__ import annotations

import re

from .report import Mismatch
from .source_macros import logical_code, one_program_refusal

_TEMPLATE = re.compile(r"\btemplate\s*<")
_QUESTION = re.compile(r"\b(decltype|sizeof|noexcept|alignof|__alignof__|_Alignof|typeof|"
                       r"__typeof__|requires|enable_if\w*|void_t|is_detected\w*)\b"
                       r"|\btypename\s+(?:::\s*)?[A-Za-z_]\w*\s*(?:<[^<>]*>\s*)?::"
                       # a pointer to a member (`int T::* = &T::__x`: whether it exists, or is
                       # accessible, in a type each build defines its own way)
                       r"|\b[A-Za-z_]\w*\s*::\s*\*|&\s*[A-Za-z_]\w*\s*::")
_TRAILING = re.compile(r"->\s*(decltype)\b")
_SIGNATURE_MARK = re.compile(r"[(){};]")


def substitution_choices(source: str) -> Mismatch | None:
    """The grader's refusal of the first expression in a template's signature, or trailing
    decltype, that could choose an overload on a name one build lacks (see above); or None."""
    code, line_of = logical_code(source)
    read_to = 0
    for m in _TEMPLATE.finditer(code):
        if m.start() < read_to:   # (a template template parameter's: its signature was read)
            continue
        read_to = _signature_end(code, m.end())
        asked = _QUESTION.search(code, m.end(), read_to)
        if asked:
            return _refusal(line_of(asked.start()), asked.group(1) or asked.group().strip(),
                            "in a template's signature")
    m = _TRAILING.search(code)
    if m:
        return _refusal(line_of(m.start()), m.group(1), "in a trailing return type")
    return None


def _signature_end(code: str, start: int) -> int:
    """Where the declaration begun at `start` has its body or ends: the first { or ; outside
    parentheses (a class template's head, a function template's parameters and return)."""
    depth = 0
    for m in _SIGNATURE_MARK.finditer(code, start):
        c = m.group()
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            return m.start()
    return len(code)


def _refusal(line: int, word: str, where: str) -> Mismatch:
    return one_program_refusal(
        f"line {line} uses `{word}` {where}, where a name that only one build declares (the "
        f"CPU executor's C library and GCC built-ins, which NVRTC lacks) would quietly choose "
        f"another overload on each", "write the template without the type question (plain "
        "template parameters: template <int TILE>, template <typename T>).",
        expected="no type question in a template's signature", got=word)
