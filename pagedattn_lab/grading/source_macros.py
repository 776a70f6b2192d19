"""A graded kernel must be one program on both devices. Its race check, index checks and access
counts run on the CPU executor, its timing on the GPU: a preprocessor conditional on a macro
that one compiler defines and the other does not (`#ifdef __PAGEDATTN_LAB_CPU__`, `#ifdef
__CUDA_ARCH__`, `#if defined(__GNUC__)`, or a macro of the source's own that names one) could
keep a `__syncthreads()` on the CPU side only, where the race check would pass a kernel that
races on the GPU. So each word a conditional tests must be a macro the source defines itself
(its body, followed through the source's other macros, naming no other), or one both
compilers define alike. No run could show it: the CPU build never sees the GPU's branch."""
from __future__ import annotations

import re

from ..cuda_text import strip_comments
from .report import Mismatch

# Defined alike by NVRTC and by the CPU executor's shim (shim.h), or an operator of #if.
ALIKE = frozenset({"__CUDACC__", "__CUDACC_RTC__", "__cplusplus", "defined"})
_CONDITIONAL = re.compile(r"^[ \t]*#[ \t]*(if|ifdef|ifndef|elif|elifdef|elifndef)\b(.*)$", re.M)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(.*)$", re.M)
_WORD = re.compile(r"(?<![\w.'])[A-Za-z_]\w*")   # not a number's suffix (16u, 1e5f)


def device_conditional(source: str) -> Mismatch | None:
    """The grader's refusal of the first conditional that tests a word the source does not
    define (see above), or None."""
    code = strip_comments(source).replace("\\\n", " ")
    bodies: dict[str, set[str]] = {}
    for m in _DEFINE.finditer(code):
        params = set(re.findall(r"\w+", m.group(2).partition(")")[0])) \
            if m.group(2).startswith("(") else set()
        bodies.setdefault(m.group(1), set()).update(set(_WORD.findall(m.group(2))) - params)
    for m in _CONDITIONAL.finditer(code):
        foreign = _foreign(set(_WORD.findall(m.group(2))), bodies)
        if foreign:
            line = code.count("\n", 0, m.start()) + 1
            return Mismatch(
                f"the kernel was refused by the grader: #{m.group(1)} at line {line} tests "
                f"`{foreign}`, which the source does not define: the GPU compiler and the "
                f"CPU executor would compile different kernels",
                "a graded kernel must be one program on both devices (the CPU run checks for "
                "races and bad indices that the GPU run would not show): take the #if out, "
                "or test only macros the kernel #defines itself.",
                expected="conditionals on the kernel's own macros only", got=foreign)
    return None


def _foreign(words: set[str], bodies: dict[str, set[str]]) -> str | None:
    """A word of `words`, or of the bodies of the source's macros they name, followed
    through, that is neither one of the source's macros nor ALIKE; None if there is none."""
    seen, todo = set(), sorted(words)
    while todo:
        word = todo.pop()
        if word in seen or word in ALIKE:
            continue
        seen.add(word)
        if word not in bodies:
            return word
        todo.extend(sorted(bodies[word]))
    return None
