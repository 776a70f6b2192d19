"""A graded kernel must be one program on both devices (see source_macros.py), in the layout
of its data too. The CPU executor aligns float4, int4, uint4, double2, double4, longlong2...
to their element (4 or 8 bytes), NVRTC to 16: the executor places each buffer with its END
against a guard page, so that an index one past the end faults, and its start is then only
as aligned as the buffer's size; a 16-byte-aligned float4 would let the CPU compiler emit
aligned SSE loads that fault there on a cast the GPU runs (`((const float4*)x)[i]` of a
buffer of 6 floats), and the guard is what catches a learner's index one past the end
(shim_types.h). So a struct, class or union that holds one, or an `alignas` of one, has
another size and other member offsets on the two builds (`struct { float k; float4 v; }`: 32
bytes and .v at 16 on the GPU, 20 and 4 on the CPU): its sizeof, an array of it, a cast of a
buffer to it, dynamic shared memory carved by it would make two programs. The lint refuses
them, and a user template given one (`Pair<char, float4>`), followed through the source's
typedefs, `using` aliases and macros."""
from __future__ import annotations

import re

from ..cuda_text import reaching
from .report import Mismatch
from .source_macros import DEFINE, WORD, logical_code, one_program_refusal

# CUDA's vector types aligned to 16 bytes there, to their element in the executor
# (shim_types.h: PAL_VEC_ALL's A4 of int, uint, float, and the 2- and 4-vectors of 8 bytes)
WIDE_VECTORS = frozenset({"float4", "int4", "uint4", "double2", "double4", "longlong2",
                          "longlong4", "ulonglong2", "ulonglong4"})
_USING = re.compile(r"\busing\s+([A-Za-z_]\w*)\s*=")
_AGGREGATE_KIND = re.compile(r"\b(struct|class|union)\b")
_ALIGNAS = re.compile(r"\balignas\s*\(([^()]*)\)")
# a template's argument list that holds only names (`Pair<char, float4>`), not a cast's
_TEMPLATE_ARGS = re.compile(r"\b([A-Za-z_]\w*)\s*<([\w\s,*&:]*)>")
# what a member declaration may start with that is not its type, and declarations that are no
# data member of each object
_ATTRIBUTES = re.compile(r"\b(?:public|private|protected)\s*:|"
                         r"\b(?:alignas|__align__|__declspec)\s*\([^()]*\)")
_NOT_DATA = re.compile(r"\s*(?:typedef|using|static|friend|template)\b")
_CASTS = frozenset({"static_cast", "reinterpret_cast", "const_cast", "dynamic_cast",
                    "bit_cast", "template"})


def vector_layouts(source: str) -> Mismatch | None:
    """The grader's refusal of the first struct, class or union that holds a 16-byte vector
    type, `alignas` of one, or a template given one (see above); or None."""
    code, line_of = logical_code(source)
    wide = _wide_names(code)
    for start, kind, members in _aggregates(code):
        word = next(filter(None, (_wide_member(d, wide) for d in members.split(";"))), None)
        if word:
            return _refusal(line_of(start), f"a {kind} with `{word}` among its members", word)
    for m in _ALIGNAS.finditer(code):
        word = _first_wide(m.group(1), wide)
        if word:
            return _refusal(line_of(m.start()), f"`alignas({m.group(1).strip()})`", word)
    for m in _TEMPLATE_ARGS.finditer(code):
        word = _first_wide(m.group(2), wide)
        if word and m.group(1) not in _CASTS:
            return _refusal(line_of(m.start()), f"`{m.group(1)}<...>` given `{word}` (a "
                            f"struct of it may hold one)", word)
    return None


def type_aliases(code: str) -> dict[str, set[str]]:
    """The names the source gives types or text (typedef, using, #define) -> the words they
    stand for. (Each statement read once, from the `;` before: a long source of typedefs
    without one is not searched from each.)"""
    aliases = declared_aliases(code)
    for m in DEFINE.finditer(code):
        aliases.setdefault(m.group(1), set()).update(WORD.findall(m.group(2)))
    return aliases


def declared_aliases(code: str) -> dict[str, set[str]]:
    """The names the source's typedefs and `using` aliases give types -> the words they stand
    for (see type_aliases)."""
    aliases: dict[str, set[str]] = {}
    for statement in _statements(code):
        typedef = re.search(r"\btypedef\b", statement)
        using = _USING.search(statement)
        if typedef:   # the last name declares (`typedef float4 F4[2];`: F4)
            words = WORD.findall(re.sub(r"\[[^\]]*\]", " ", statement[typedef.end():]))
            if words:
                aliases.setdefault(words[-1], set()).update(words[:-1])
        elif using:
            aliases.setdefault(using.group(1), set()).update(
                WORD.findall(statement[using.end():]))
    return aliases


def _statements(code: str):
    """Each text between two of ; { } that ends at a `;` (a declaration)."""
    start = 0
    for m in re.finditer(r"[;{}]", code):
        if m.group() == ";":
            yield code[start:m.start()]
        start = m.end()


def _wide_names(code: str) -> set[str]:
    """The 16-byte vector types and the names the source gives one, followed through each
    other."""
    return reaching(set(WIDE_VECTORS), type_aliases(code))


def _aggregates(code: str) -> list[tuple[int, str, str]]:
    """Each struct, class or union: where its keyword is, which, and the text of its body at
    its own depth (its member declarations; the bodies of its member functions and nested
    braces left out); in the order of their keywords. A head is the text from the `;`, `{` or
    `}` before a `{`, its parentheses left out (not a parameter's `struct S*` before a
    function's body). One pass over the braces: nested bodies are not read again."""
    found, opened, head_from = [], [], 0   # per open brace: its aggregate (or None) and text
    for m in re.finditer(r"[^;{}]+|[;{}]", code):
        if m.group() == "{":
            if opened:   # (a member function's head ends here: not read with what follows)
                opened[-1][1].append(";")
            kind = _AGGREGATE_KIND.search(_depth_zero(code[head_from:m.start()]))
            opened.append(((head_from + kind.start(), kind.group(1)) if kind else None, []))
        elif m.group() == "}" and opened:
            head, text = opened.pop()
            if head is not None:
                found.append((*head, " ".join(text)))
        elif opened:
            opened[-1][1].append(m.group())
        if m.group() in ";{}":
            head_from = m.end()
    found += [(*head, " ".join(text)) for head, text in opened if head is not None]
    return sorted(found)


def _depth_zero(text: str) -> str:
    """`text` with what is inside parentheses blanked (same length)."""
    out, depth = [], 0
    for c in text:
        depth += c == "("
        out.append(c if depth == 0 else " ")
        depth -= c == ")" and depth > 0
    return "".join(out)


def _wide_member(declaration: str, wide: set[str]) -> str | None:
    """The 16-byte vector type of a data member that `declaration` holds by value (arrays of
    it too: `float4 v[2]`, `int n, *p; float4 *q, r`), or None: a pointer or reference to
    one, a member function's signature, a typedef or a static member keep the layout."""
    text = _ATTRIBUTES.sub(" ", re.sub(r"\[[^\]]*\]", "[]", declaration)).split("=")[0]
    if "(" in text or _NOT_DATA.match(text) or re.search(r"\boperator\b", text):
        return None
    word = next((w for w in WORD.finditer(text) if w.group() in wide), None)
    if word is None:
        return None
    declarators = text[word.end():].split(",")
    return word.group() if any(not re.search(r"[*&]", d) for d in declarators) else None


def _first_wide(text: str, wide: set[str]) -> str | None:
    return next((w for w in WORD.findall(text) if w in wide), None)


def _refusal(line: int, what: str, word: str) -> Mismatch:
    return one_program_refusal(
        f"line {line} has {what}, whose size and member offsets differ between the builds (the "
        f"GPU aligns {word} to 16 bytes, the CPU executor to its element, so that its guard "
        f"page still catches an index one past a buffer's end)",
        f"keep `{word}` out of structs, unions and templates: hold it in a variable or an "
        f"array of its own ({word} v = ...; then v.x, v.y...).",
        expected="no 16-byte vector type inside a struct, union or template", got=word)
