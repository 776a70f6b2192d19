"""A graded kernel must be one program on both devices. Its race check, index checks and access
counts run on the CPU executor, its timing on the GPU: a preprocessor conditional on a macro
that one compiler defines and the other does not (`#ifdef __PAGEDATTN_LAB_CPU__`, `#ifdef
__CUDA_ARCH__`, `#if defined(__GNUC__)`, or a macro of the source's own that names one) could
keep a `__syncthreads()` on the CPU side only, where the race check would pass a kernel that
races on the GPU. So each word a conditional tests must be a macro the source defines itself
(its body, followed through the source's other macros, naming no other), or one both
compilers define alike; and not one a compiler defines before the source does (`#ifndef EOF`
/ `#define EOF 0` keeps <stdio.h>'s -1 on the CPU build only), nor a name pasted together
with ##. The code may not use a value that differs between the two builds (__FILE__,
__COUNTER__, __TIME__...). The source is read as the compilers read it: CR and CRLF line
ends, line splices (a backslash, maybe spaces, a line end) and `%:` for `#`. No run could
show it: the CPU build never sees the GPU's branch."""
from __future__ import annotations

import bisect
import re
from collections import Counter

from ..cpu.prelude import prelude_macros
from ..cuda_text import any_word, reaching, strip_comments
from .report import Mismatch

# Defined alike by NVRTC and by the CPU executor's shim (shim.h), or an operator of #if.
ALIKE = frozenset({"__CUDACC__", "__CUDACC_RTC__", "__cplusplus", "defined"})
# C++'s literals and alternative operators, which #if reads as such, not as macros (`#if
# false`, `#if TILE > 8 and TILE < 64` would otherwise be refused as undefined macros).
_CPP_WORDS = frozenset({"true", "false", "and", "or", "not", "bitand", "bitor", "xor", "compl",
                        "not_eq"})
# What only NVRTC defines (the CPU build's own list comes from its compiler, prelude.py), and
# the GNU modes' names without underscores.
_NVRTC_NAME = re.compile(r"__(CUDA|NV|EDG)\w*|linux|unix|i386")
_RESERVED = re.compile(r"__\w*|_[A-Z]\w*")
# The value of each differs between the CPU build and NVRTC's (another file name, the shim's
# own uses of __COUNTER__, another moment; __PRETTY_FUNCTION__ is GCC's "void k(float*)",
# EDG's "void k(float *)"; a column moves where the executor puts a shared array's guard;
# what GCC's optimizer proves at -O1 or -O2, NVRTC's front end does not).
BUILD_VALUES = ("__FILE__", "__BASE_FILE__", "__FILE_NAME__", "__COUNTER__", "__DATE__",
                "__TIME__", "__TIMESTAMP__", "__INCLUDE_LEVEL__", "__PRETTY_FUNCTION__",
                "__builtin_FILE", "__builtin_COLUMN", "__builtin_source_location",
                "__builtin_constant_p", "__builtin_object_size", "__builtin_dynamic_object_size")
_BUILD_VALUE = re.compile(any_word(BUILD_VALUES))
_HASH = r"(?:#|%:)"   # %: is the digraph of #
_CONDITIONAL = re.compile(rf"^[ \t\f\v]*{_HASH}[ \t\f\v]*(if|ifdef|ifndef|elif|elifdef|elifndef)"
                          r"\b(.*)$", re.M)
DEFINE = re.compile(rf"^[ \t\f\v]*{_HASH}[ \t\f\v]*define[ \t\f\v]+([A-Za-z_]\w*)(.*)$", re.M)
_PASTE = re.compile(r"##|%:%:")
_STRINGIFY = re.compile(r"#|%:")   # in a function-like macro's body, ## taken out first
_TOKEN = re.compile(r"##|%:%:|#|%:|[A-Za-z_]\w*|\S")
_SPLICE = re.compile(r"\\[ \t\f\v]*\n")
WORD = re.compile(r"(?<![\w.'])[A-Za-z_]\w*")   # not a number's suffix (16u, 1e5f)
ONE_PROGRAM_HINT = ("a graded kernel must be one program on both devices (the CPU run checks "
                    "for races and bad indices that the GPU run would not show): ")
TWO_KERNELS = "the GPU compiler and the CPU executor would compile different kernels"


def one_program_refusal(what: str, fix: str, *, expected: str, got: str,
                        differs: str = TWO_KERNELS) -> Mismatch:
    """The grader's refusal of a kernel that would be two programs (here and in
    source_builtins.py): `what` the code does, where; how the two builds `differs` by it;
    the `fix`."""
    return Mismatch(f"the kernel was refused by the grader: {what}: {differs}",
                    ONE_PROGRAM_HINT + fix, expected=expected, got=got)


def device_conditional(source: str) -> Mismatch | None:
    """The grader's refusal of the first value of the build in the code, of a compiler's macro
    made a string, or of a conditional that tests a word the source does not define or a
    compiler may (see above); or None."""
    code, line_of = logical_code(source)
    bodies, pastes, strings, raw = _macros(code)
    return (_build_value(code, line_of)
            or _stringified(code, line_of, bodies, pastes, strings, raw)
            or _conditional(code, line_of, bodies, pastes))


def _build_value(code: str, line_of) -> Mismatch | None:
    value = _BUILD_VALUE.search(code)
    if not value:
        return None
    return one_program_refusal(
        f"line {line_of(value.start())} uses `{value.group()}`, whose value differs between "
        f"the GPU compiler and the CPU executor", f"take `{value.group()}` out of the kernel.",
        expected="no value of the build in the code", got=value.group(),
        differs="the two would run different kernels")


def _conditional(code: str, line_of, bodies: dict[str, set[str]], pastes: set[str]
                 ) -> Mismatch | None:
    for m in _CONDITIONAL.finditer(code):
        found = _foreign(WORD.findall(m.group(2)), bodies, pastes)
        if found:
            word, why = found
            return one_program_refusal(
                f"#{m.group(1)} at line {line_of(m.start())} tests `{word}`, {why}",
                "take the #if out, or test only macros the kernel #defines itself, under "
                "names of its own (not a compiler's or a C header's).",
                expected="conditionals on the kernel's own macros only", got=word)
    return None


def _macros(code: str) -> tuple[dict[str, set[str]], set[str], set[str],
                                dict[str, tuple[bool, ...]]]:
    """The source's macros: name -> the words of its body (its parameters left out), those
    that paste tokens (##), those that make a string of a parameter (#x), and for those, which
    of their parameters the body uses only as an operand of # or ## (`#define STR(x) #x`: the
    argument is not expanded, STR(__CUDA_ARCH__) is "__CUDA_ARCH__" on both builds)."""
    bodies: dict[str, set[str]] = {}
    pastes: set[str] = set()
    strings: set[str] = set()
    raw: dict[str, tuple[bool, ...]] = {}
    for m in DEFINE.finditer(code):
        function_like = m.group(2).startswith("(")
        head = m.group(2).partition(")")[0] if function_like else ""
        ordered = [p if p != "..." else "__VA_ARGS__" for p in re.findall(r"\w+|\.\.\.", head)]
        params = set(ordered)
        bodies.setdefault(m.group(1), set()).update(set(WORD.findall(m.group(2))) - params)
        if _PASTE.search(m.group(2)):
            pastes.add(m.group(1))
        body = m.group(2).partition(")")[2]
        if function_like and _STRINGIFY.search(_PASTE.sub(" ", body)):
            strings.add(m.group(1))
            raw[m.group(1)] = tuple(not _expanded(body, {p}) for p in ordered)
    # (a macro defined twice, #undef between, may expand its arguments in the other body)
    twice = {n for n, c in Counter(m.group(1) for m in DEFINE.finditer(code)).items() if c > 1}
    return bodies, pastes, strings, {n: r for n, r in raw.items() if n not in twice}


def _expanded(body: str, params: set[str]) -> bool:
    """Whether a macro's body uses a parameter other than as an operand of # or ## (there the
    argument is put in as written; anywhere else, expanded first)."""
    tokens = _TOKEN.findall(body)
    return any(t in params and not (i and tokens[i - 1] in ("#", "%:", "##", "%:%:"))
               and tokens[i + 1:i + 2] not in (["##"], ["%:%:"])
               for i, t in enumerate(tokens))


def _stringified(code: str, line_of, bodies: dict[str, set[str]], pastes: set[str],
                 strings: set[str], raw: dict[str, tuple[bool, ...]]) -> Mismatch | None:
    """The refusal of the first call of a macro that makes a string of its argument (directly
    or through the source's other macros) with a compiler's macro among the words of the
    argument, followed through the source's macros, or a macro that pastes a name together
    (which may be a compiler's): XSTR(__CUDA_ARCH__) is "900" on the GPU, "__CUDA_ARCH__" on
    the CPU, a string a kernel can test. A call of a macro that does not expand its argument
    (STR(x) #x) makes the same string on both. None if there is none."""
    callers = reaching(set(strings), bodies)   # and the macros whose bodies call one that does
    if not callers:
        return None
    closing, read_to = closing_parens(code), 0
    # (any macro's call that names one among its arguments too: CALL(STR, __CUDA_ARCH__) of
    # `#define CALL(m, a) m(a)` expands __CUDA_ARCH__ before STR makes it a string; where
    # they are named, found once, not each call's arguments read)
    named = [m.start() for m in re.finditer(any_word(callers), code)]
    for call in re.finditer(any_word(bodies) + r"\s*\(", code):
        end = closing.get(call.end() - 1)
        # (a call never closed does not compile; one inside another's arguments was read)
        if end is None or call.start() < read_to or (
                call.group(1) not in callers
                and not _between(named, call.end(), end)):
            continue
        read_to = end
        seen, todo = set(), sorted(set(WORD.findall(
            _expanded_arguments(code[call.end():end], raw.get(call.group(1))))))
        while todo:
            word = todo.pop()
            if word in seen or _alike(word, bodies):
                continue
            seen.add(word)
            if _predefined(word) or word in pastes:
                return _string_refusal(line_of(call.start()), word, call.group(1),
                                       word in pastes)
            todo.extend(sorted(bodies.get(word, ())))
    return None


def _between(positions: list[int], start: int, end: int) -> bool:
    """Whether a position of the sorted `positions` lies in [start, end)."""
    i = bisect.bisect_left(positions, start)
    return i < len(positions) and positions[i] < end


def _expanded_arguments(text: str, raw: tuple[bool, ...] | None) -> str:
    """The arguments of a call (`text`, between its parentheses) that its macro expands: all
    but those `raw` (per parameter, the last one a variadic's) says it puts in as written."""
    if not raw:
        return text
    args, depth, last = [], 0, 0
    for m in re.finditer(r"[(),]", text):
        depth += {"(": 1, ")": -1}.get(m.group(), 0)
        if m.group() == "," and depth == 0:
            args.append(text[last:m.start()])
            last = m.end()
    args.append(text[last:])
    return " ".join(a for i, a in enumerate(args) if not raw[min(i, len(raw) - 1)])


def closing_parens(code: str) -> dict[int, int]:
    """Each '(' of `code`'s position -> its ')''s (one pass: a long source's many calls are
    not each walked to its end)."""
    opened, closing = [], {}
    for m in re.finditer(r"[()]", code):
        if m.group() == "(":
            opened.append(m.start())
        elif opened:
            closing[opened.pop()] = m.start()
    return closing


def _string_refusal(line: int, word: str, macro: str, pasted: bool) -> Mismatch:
    what = ("a macro that pastes a name together with ## (it may name one a compiler "
            "defines)" if pasted else "a macro a compiler defines")
    return one_program_refusal(
        f"line {line} makes a string of `{word}` (through `{macro}`), {what}",
        f"take `{word}` out of `{macro}`'s arguments.",
        expected="no compiler's macro made a string", got=word,
        differs="the GPU compiler and the CPU executor would compile different strings, and "
                "different kernels")


def logical_code(source: str):
    """The source as its conditionals read (CR and CRLF line ends made LF, line splices
    joined, comments and literals blanked, a /* */ comment's line ends made \v, so that a
    directive goes on past it as the compilers read it), and the function from a position in
    it to the source's line number."""
    # (a \v of the source's own is a space to the compilers, not a line end to count)
    text = source.replace("\r\n", "\n").replace("\r", "\n").replace("\v", " ")
    pieces, joins, last, length = [], [], 0, 0
    for m in _SPLICE.finditer(text):
        pieces.append(text[last:m.start()])
        length += m.start() - last
        joins.append(length)   # where the joined line end was
        last = m.end()
    pieces.append(text[last:])
    code = strip_comments("".join(pieces), "\v")
    return code, lambda pos: (code.count("\n", 0, pos) + code.count("\v", 0, pos)
                              + bisect.bisect_right(joins, pos) + 1)


def _foreign(words: list[str], bodies: dict[str, set[str]], pastes: set[str]
             ) -> tuple[str, str] | None:
    """A word of `words` (the first in their order), or of the bodies of the source's macros
    they name, followed through, that is not one of the source's macros, or that a compiler
    defines too, or a macro that pastes tokens; with why it is refused. None if none."""
    seen, todo = set(), words[::-1]
    while todo:
        word = todo.pop()
        if word in seen or _alike(word, bodies):
            continue
        seen.add(word)
        if word not in bodies:
            return word, "which the source does not define"
        if _predefined(word):
            return word, "which a compiler defines before the source does"
        if word in pastes:
            return word, "a macro that pastes a name together with ## (it may name one a " \
                         "compiler defines)"
        todo.extend(sorted(bodies[word]))
    return None


def _alike(word: str, bodies: dict[str, set[str]]) -> bool:
    """Whether `word` means the same on both builds: one of ALIKE the source does not
    redefine (`#undef __CUDACC__` / `#define __CUDACC__ __x86_64__` is no longer alike)."""
    return (word in ALIKE or word in _CPP_WORDS) and word not in bodies


def _predefined(word: str) -> bool:
    """Whether a compiler may define `word` before the kernel's first line: the CPU build
    does (its compiler's list), NVRTC may; every reserved name where the list is missing."""
    known = prelude_macros()
    return bool(_NVRTC_NAME.fullmatch(word)) or (
        word in known if known is not None else bool(_RESERVED.fullmatch(word)))
