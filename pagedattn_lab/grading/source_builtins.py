"""A graded kernel must be one program on both devices (see source_macros.py), in its types
too. NVRTC's built-in variables are of types of their own (threadIdx: a one-byte
`__cuda_builtin_threadIdx_t` that converts to uint3), the CPU executor's are plain uint3 and
dim3 (shim_types.h); and the CPU build aligns float4, int4, double2... to their element only
(shim_types.h says why), NVRTC to 16 bytes. A kernel that asks for the type, sizeof(threadIdx),
decltype(blockIdx), an overload or a template given the variable whole, alignof(float4), can
tell the builds apart in plain C++ (`if (sizeof(threadIdx) == 12) __syncthreads();` keeps the
barrier on the CPU build only), which no preprocessor check sees. A member read
(`threadIdx.x`, `(threadIdx).x`) and a copy (`uint3 t = threadIdx;`) mean the same on both
and pass, but not where a member's value category decides: NVRTC's `threadIdx.x` is a
property's prvalue, the executor's an lvalue, so `decltype((threadIdx.x))`, an overload on
`unsigned&&` against `unsigned&`, or a template's `T&&` (T deduced `unsigned&` on the CPU only)
tell them apart: the lint refuses a type query of a built-in's member and every rvalue
reference (a kernel of this course needs none). And `long double` (a literal 1.0L too) is the x87's 80 bits on the CPU build, a
double on the GPU: `if (1.0L + 1e-17L != 1.0L) __syncthreads();` is a barrier on one only."""
from __future__ import annotations

import re

from .report import Mismatch
from .source_layout import declared_aliases
from .source_macros import DEFINE, WORD, closing_parens, logical_code, one_program_refusal

_BUILTIN = re.compile(r"\b(threadIdx|blockIdx|blockDim|gridDim)\b")
# the one whole use that means the same on both builds: the initializer of a copy declared
# uint3 or dim3 (`uint3 t = threadIdx;`, `dim3 g(gridDim)`, `uint3 t{blockIdx}`); anywhere else
# (an operand of sizeof or decltype, an argument of an overload or a template, a reference
# bound to it however spelled, a `return` of an `auto&` function, an arm of ?:) its type decides
_COPY = re.compile(r"\b(?:const\s+)?(?:uint3|dim3)\s+[A-Za-z_]\w*\s*(?:=|\(|\{)\s*(?:::\s*)?$")
# keywords a grouping parenthesis may follow (after any other word it is a call's, or sizeof's)
_EXPRESSION_KEYWORDS = frozenset({"return", "case", "throw", "else", "do", "co_return",
                                  "co_yield"})
_C_CAST = re.compile(r"\(\s*((?:[A-Za-z_]\w*\b\s*)+)[*&\s]*\)$")
_TYPE_QUERY = re.compile(r"\b(?:decltype|typeof|__typeof__|__typeof)\s*\(")
# `&&` of a declarator: after a type's name (a built-in type, auto, one the source declares,
# `>` of a template's), or before what no expression follows (`f(unsigned&&)`, `<int&&>`)
_TYPE_WORDS = frozenset({"void", "bool", "char", "short", "int", "long", "float", "double",
                         "signed", "unsigned", "auto", "size_t", "uint3", "dim3", "const",
                         "volatile"})
# (CUDA's vector types, half, the fixed-width integers)
_CUDA_TYPE = re.compile(r"(?:u?(?:char|short|int|long|longlong)|float|double)[1-4]|__half2?|"
                        r"half2?|__nv_bfloat162?|u?int\d+_t")
# (a pack's name too: `class... Ts`, `typename ...Ts`)
_DECLARED_TYPE = re.compile(r"\b(?:class|typename|struct|union|enum)(?:\s+|\s*\.\.\.\s*)"
                            r"([A-Za-z_]\w*)")
# a #define's body that may be a type (words, `*`, `&`, `::`, a template's `<,>`), not a number
# or an expression (`#define N 64`, `#define ON (A && !B)`)
_TYPE_BODY = re.compile(r"[\w\s*&:<>,]*")
_RVALUE_REF = re.compile(r"(?:\b([A-Za-z_]\w*)|(>))\s*&&|&&\s*[),>]")
_LONG_DOUBLE = re.compile(r"\blong\s+double\b|\bdouble\s+long\b|\b__float80\b"
                          # (a number read from its start only, each part once: 1'1'1'...
                          # is not tried at each digit, nor split two ways)
                          r"|(?<![\w.'])(?:\d[\d']*(?:\.[\d']*)?|\.\d[\d']*)(?:[eE][+-]?\d+)?"
                          r"[lL]\b"
                          # (a hex float: 0x1p0L, 0x1.8p1L; its exponent is not optional)
                          r"|(?<![\w.'])0[xX](?:[\da-fA-F']+(?:\.[\da-fA-F']*)?|\.[\da-fA-F']+)"
                          r"[pP][+-]?\d+[lL]\b")
_ALIGNOF = re.compile(r"\b(alignof|_Alignof|__alignof__|__alignof)\b\s*(\(\s*([^()]*?)\s*\))?")
# types whose alignment is the same on both builds (any other may be, or hold, a 16-byte vector)
_SAME_ALIGNMENT = re.compile(r"(?:(?:const|volatile|signed|unsigned|short|long)\s+)*"
                             r"(?:bool|char|short|int|long|float|double|half|__half|"
                             r"__nv_bfloat16|size_t|int\d+_t|uint\d+_t)?")


def device_types(source: str) -> Mismatch | None:
    """The grader's refusal of the first place the code asks for a type that differs between
    the GPU compiler and the CPU executor (see above), or None."""
    code, line_of = logical_code(source)   # (line splices joined: `sizeof(\` newline)
    code = _ungrouped(code)
    m = next((b for b in _BUILTIN.finditer(code) if not _member_read_or_copy(code, b)), None)
    if m:
        return _refusal(line_of(m.start(1)), m.group(1),
                        "whole where its type decides (a sizeof or decltype, an argument, an "
                        "initializer), and its type differs between the builds (NVRTC's is a "
                        "built-in type of one byte, the executor's a uint3 or dim3)",
                        f"read its members ({m.group(1)}.x) or copy it first "
                        f"(uint3 t = {m.group(1)};).")
    m = next((a for a in _ALIGNOF.finditer(code)
              if a.group(3) is None or not _SAME_ALIGNMENT.fullmatch(a.group(3))), None)
    if m:
        return _refusal(line_of(m.start()), m.group(1),
                        ", whose answer differs between the builds (the executor aligns "
                        "float4 and the other 16-byte types to their element)",
                        "take it out; write the alignment the kernel needs (16 for a float4).")
    m = _type_query_of_a_builtin(code)
    if m:
        return _refusal(line_of(m.start()), m.group().rstrip("( \t"),
                        "of a built-in variable's member, whose value category differs "
                        "between the builds (NVRTC's threadIdx.x is a property's prvalue, the "
                        "executor's an lvalue)", "take it out; the member is an unsigned int.")
    m = _rvalue_reference(code)
    if m:
        return _refusal(line_of(m.start()), "&&",
                        "as an rvalue reference, and the lint refuses every one (even `auto&& v` "
                        "over a local array): a built-in variable's member (threadIdx.x) is a "
                        "prvalue on the GPU and an lvalue on the CPU executor, so an overload "
                        "or a template (T&&) given one chooses differently between the builds",
                        "take the rvalue reference out: pass by value or by `&`/`const&` (a "
                        "kernel needs no &&).", expected="no rvalue reference")
    m = next((d for d in _LONG_DOUBLE.finditer(code) if not _integer(d.group())), None)
    if m:
        return _refusal(line_of(m.start()), m.group(),
                        ", a long double: 80 bits of x87 on the CPU executor, a double on the "
                        "GPU, so their sums and comparisons differ",
                        "use double (or float), and literals without the L suffix (1.0, "
                        "1.0f).", expected="float or double, no long double")
    return None


def _type_query_of_a_builtin(code: str) -> re.Match | None:
    """The first decltype (typeof) whose operand names a built-in variable, or None. (Each
    operand read once: one inside another's was read with it; one never closed does not
    compile.)"""
    closing, read_to = closing_parens(code), 0
    for query in _TYPE_QUERY.finditer(code):
        end = closing.get(query.end() - 1)
        if end is None or query.start() < read_to:
            continue
        read_to = end
        if _BUILTIN.search(code, query.end(), end):
            return query
    return None


def _rvalue_reference(code: str) -> re.Match | None:
    """The first `&&` of a declarator (see _RVALUE_REF), or None; a logical and passes."""
    types = _type_names(code)
    return next((m for m in _RVALUE_REF.finditer(code) if m.group(1) is None
                 or m.group(1) in types or _CUDA_TYPE.fullmatch(m.group(1))), None)


def _type_names(code: str) -> set[str]:
    """The type words, the types the source declares (typedef and `using` names too) and the
    #define names whose body is a type (followed through each other: `#define T2 T1`); not
    one whose body is a number or an expression (`N && ok` is a logical and). (Each macro
    waits on its body's unknown words once: a chain of them is not read again per link.)"""
    types = set(_TYPE_WORDS) | set(_DECLARED_TYPE.findall(code)) | set(declared_aliases(code))
    waiting: dict[str, set[str]] = {}      # macro -> the words of its body not yet types
    for m in DEFINE.finditer(code):
        words = {w for w in WORD.findall(m.group(2)) if not _CUDA_TYPE.fullmatch(w)}
        if m.group(1) not in types and WORD.search(m.group(2)) and \
                _TYPE_BODY.fullmatch(m.group(2)):
            waiting[m.group(1)] = words - types
    waited_on: dict[str, list[str]] = {}
    for name, words in waiting.items():
        for word in words:
            waited_on.setdefault(word, []).append(name)
    ready = [name for name, words in waiting.items() if not words]
    while ready:
        name = ready.pop()
        if name in types:
            continue
        types.add(name)
        for macro in waited_on.get(name, ()):
            waiting[macro].discard(name)
            if not waiting[macro]:
                ready.append(macro)
    return types


def _integer(literal: str) -> bool:
    """Whether a literal with an L suffix is an integer's (16L is a long, the same on both)."""
    return not re.search(r"[.eEpP]", literal.rstrip("lL"))


def _member_read_or_copy(code: str, use: re.Match) -> bool:
    # (the copy's declaration looked for in the 200 characters before: a long source's many
    # uses are not each searched from its start)
    return (re.match(r"\s*\.", code[use.end():use.end() + 64]) is not None
            or _COPY.search(code[max(0, use.start() - 200):use.start()]) is not None)


def _ungrouped(code: str) -> str:
    """`code` with the grouping parentheses around a built-in variable whose member is read
    blanked (`(threadIdx).x`, `((blockIdx)).y` read as `threadIdx.x`), same length; not a
    call's (`f(threadIdx).x`, `f((threadIdx)).x`: an overload chooses on the type). (Each
    use's parentheses walked out from it: a run of them is read once.)"""
    text = list(code)
    for use in _BUILTIN.finditer(code):
        opens, closes = _parens(code, use.start(), -1, "("), _parens(code, use.end(), 1, ")")
        after = closes[-1] + 1 if closes else use.end()
        if not closes or not re.match(r"\s*\.", code[after:after + 64]) or \
                len(opens) < len(closes) or (len(opens) == len(closes)
                                             and not _grouping(code, opens[-1])):
            continue
        for at in opens[:len(closes)] + closes:
            text[at] = " "
    return "".join(text)


def _parens(code: str, start: int, step: int, paren: str) -> list[int]:
    """The positions of the run of `paren` (with spaces between) from `start` on, walking by
    `step` (-1: back from before it), nearest first."""
    found, at = [], start if step > 0 else start - 1
    while 0 <= at < len(code) and (code[at] == paren or code[at].isspace()):
        if code[at] == paren:
            found.append(at)
        at += step
    return found


def _grouping(code: str, paren: int) -> bool:
    """Whether the parenthesis at `paren` groups (not a call's, a cast's, sizeof's)."""
    before = paren
    while before > 0 and code[before - 1].isspace():
        before -= 1
    word = re.search(r"\w+$", code[max(0, before - 16):before])
    if word:
        return word.group() in _EXPRESSION_KEYWORDS
    return before == 0 or code[before - 1] not in ")]>" or _cast_before(code, before)


def _cast_before(code: str, end: int) -> bool:
    """Whether a C cast to a built-in type ends at `end` (`(int)(threadIdx).x`), not a call's
    parentheses (`(f)(threadIdx).x`, `g()(threadIdx).x`: its overload chooses on the type)."""
    cast = _C_CAST.search(code[max(0, end - 64):end])
    return cast is not None and all(w in _TYPE_WORDS or _CUDA_TYPE.fullmatch(w)
                                    for w in WORD.findall(cast.group(1)))


def _refusal(line: int, word: str, why: str, fix: str,
             expected: str = "member reads of the built-in variables, no type query"
             ) -> Mismatch:
    return one_program_refusal(f"line {line} uses `{word}`{'' if why.startswith(',') else ' '}"
                               f"{why}", fix, got=word, expected=expected)
