"""`__constant__` declarations made to compile as they do under NVRTC: shim.h makes the keyword
`const` (read-only data, which the access counts leave out, as a GPU reads constant memory
through its cache), and `constant_once` blanks it, or a macro that stands for it alone,
where that would be wrong: `const const`, or a pointer's pointee made const.
`constant_options` does the same in the compile's `-D` options, whose bodies the source
does not hold.
"""
from __future__ import annotations

import re

from ..cuda_text import any_word, collect_defines, macro_aliases, strip_comments

__all__ = ["constant_once", "constant_options"]

_DECLARATOR_END = re.compile(r"[;={(\[]")
_DIRECTIVE = re.compile(r"^[ \t]*#(?:.*\\\n)*.*$", re.M)   # (with its continued lines)
# a #define's name and parameters: its body's uses are judged by the #define's lines
_DEFINE_HEAD = re.compile(r"[ \t]*#[ \t]*define[ \t]+\w+(?:\([^)\n]*\))?")
_FUNCTION_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)\([^)\n]*\)[ \t]*"
                              r"([^\n]*?)[ \t]*$", re.M)
_SAYS_CONST = re.compile(r"\bconst(expr)?\b")
_CALL_OPENING = re.compile(r"\s*\(")


def constant_once(source: str, options=()) -> str:
    """`source` with `__constant__`, or a macro that stands for it alone (`#define CMEM
    __constant__`, followed through others, or the compile's `options`' `-DCMEM=__constant__`,
    whose use shim.h's `const` reaches as well; a function-like one's call, `CM(1)` of
    `#define CM(x) __constant__`, whole), replaced by a comment or blanks of its width
    where its declaration (from the statement's start, or a directive's lines, to its
    declarator's `=`, `[`, `(`, `{` or `;`) says `const` or `constexpr` itself: shim.h's
    `const` would make it `const const`, which GCC refuses ("duplicate 'const'") and NVRTC
    accepts. In a directive only its own lines (those continued with a backslash) count
    (`#define TABLE CMEM const float t[2]`: its CMEM is blanked), and a #define's name is
    left as it is: the macro's uses are judged where they stand. A pointer declared without
    `const` gets its `const` after the `*` instead (`_const_pointers`)."""
    text = strip_comments(source)
    directives = [(d.start(), d.end()) for d in _DIRECTIVE.finditer(text)]
    for start, end in reversed(_alias_uses(text, options)):
        directive = next(((a, b) for a, b in directives if a <= start < b), None)
        if directive is not None:
            head = _DEFINE_HEAD.match(text, directive[0])
            if head and start < head.end():
                continue   # (the macro's own name)
            declaration = text[directive[0]:directive[1]]
        else:
            begin = max([text.rfind(c, 0, start) + 1 for c in ";{}"]
                        + [b for a, b in directives if b <= start])
            found = _DECLARATOR_END.search(text, end)
            stop = found.start() if found else len(text)
            declaration = text[begin:stop]
        used = text[start:end]
        blank = "/*constant*/" if used == "__constant__" else re.sub(r"[^\n]", " ", used)
        if _SAYS_CONST.search(declaration):
            source = f"{source[:start]}{blank}{source[end:]}"
        elif directive is None and _POINTER_DECLARATOR.search(text, end, stop):
            source = _const_pointers(source, start, end, stop, blank)
    return source


def constant_options(flags, source: str = "") -> list[str]:
    """`flags` (the compiler's, `-DNAME=body` each) with `__constant__`, and the macros that
    stand for it (of `source` or of `flags`, as constant_once finds them), taken out of
    each `-D` body that says `const` or `constexpr` itself: `-DCC="__constant__ const"`
    becomes `-DCC= const`, as `#define CC __constant__ const` in the source is blanked
    there (the option's body is in no line to rewrite)."""
    flags = list(flags)
    text = strip_comments(source)
    for i, flag in enumerate(flags):
        head, equals, body = flag.partition("=")
        if flag.startswith("-D") and equals and _SAYS_CONST.search(body):
            spans = _alias_uses(f"{text}\n{body}", flags)
            offset = len(text) + 1
            for start, end in reversed([(a - offset, b - offset) for a, b in spans
                                        if a >= offset]):
                body = body[:start] + body[end:]
            flags[i] = f"{head}={body}"
    return flags


def _alias_uses(text: str, options) -> list[tuple[int, int]]:
    """(start, end) of each use in comment-free `text` of `__constant__`, of an object-like
    macro that stands for it alone, and of a call of a function-like one (`CM(1)`: to its
    closing parenthesis; its name without one calls nothing)."""
    names = macro_aliases(text, {"__constant__"}, whole=True, options=options)
    calls = _function_aliases(text, names, options)
    uses = []
    for m in re.finditer(any_word(names | calls), text):
        end = _call_end(text, m.end()) if m.group() in calls else m.end()
        if end is not None:
            uses.append((m.start(), end))
    return uses


def _function_aliases(text: str, names: set[str], options) -> set[str]:
    """The function-like macros, of `text` or `-D` options, whose body is one of `names`."""
    bodies = {m.group(1): m.group(2) for m in _FUNCTION_DEFINE.finditer(text)}
    for name, body in collect_defines("", options).items():
        if "(" in name:
            bodies[name.partition("(")[0].strip()] = body
    return {name for name, body in bodies.items() if body.strip() in names}


def _call_end(text: str, at: int) -> int | None:
    """Where the parenthesized arguments that follow `at` (after blanks) end, or None where
    no `(` follows or it is not closed."""
    opening = _CALL_OPENING.match(text, at)
    if not opening:
        return None
    depth = 0
    for i in range(opening.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return None


# a declarator's last `*`, just before its name (`float *p, **q`)
_POINTER_DECLARATOR = re.compile(r"\*(?=\s*[A-Za-z_])")


def _const_pointers(source: str, start: int, end: int, stop: int, blank: str) -> str:
    """`source` with the `__constant__` at `start:end` blanked and `const` put after each
    pointer declarator's `*` from `end` to `stop`: on a GPU the pointer variable lives in
    constant memory (the kernel may not change it) and what it points at is writable, where
    shim.h's `const` in front would make the pointee const (`p[i] = x` did not compile). The
    line's later columns move by 7 per pointer."""
    rest = _POINTER_DECLARATOR.sub("* const ", source[end:stop])
    return f"{source[:start]}{blank}{rest}{source[stop:]}"
