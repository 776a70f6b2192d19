"""`__constant__` declarations made to compile as they do under NVRTC: shim.h makes the keyword
`const` (read-only data, which the access counts leave out, as a GPU reads constant memory
through its cache), and `constant_once` blanks it, or a macro that stands for it alone,
where that would be wrong: `const const`, or a pointer's pointee made const.
"""
from __future__ import annotations

import re

from ..cuda_text import any_word, macro_aliases, strip_comments

__all__ = ["constant_once"]

_DECLARATOR_END = re.compile(r"[;={(\[]")
_DIRECTIVE = re.compile(r"^[ \t]*#.*$", re.M)


def constant_once(source: str, options=()) -> str:
    """`source` with `__constant__`, or a macro that stands for it alone (`#define CMEM
    __constant__`, followed through others, or the compile's `options`' `-DCMEM=__constant__`,
    whose use shim.h's `const` reaches as well), replaced by a comment or blanks of its width
    where its declaration (from the statement's start, or a directive's line, to its
    declarator's `=`, `[`, `(`, `{` or `;`) says `const` or `constexpr` itself: shim.h's
    `const` would make it `const const`, which GCC refuses ("duplicate 'const'") and NVRTC
    accepts. In a directive (a #define's body) only the directive's own line counts: the
    macro's uses are judged where they stand. A pointer declared without `const` gets its
    `const` after the `*` instead (`_const_pointers`)."""
    text = strip_comments(source)
    names = macro_aliases(text, {"__constant__"}, whole=True, options=options)
    directives = [(d.start(), d.end()) for d in _DIRECTIVE.finditer(text)]
    uses = re.finditer(any_word(names), text)
    for m in reversed(list(uses)):
        directive = next(((a, b) for a, b in directives if a <= m.start() < b), None)
        if directive is not None:
            if m.group() != "__constant__":
                continue   # (a macro's name or another's body: judged at its uses)
            declaration = text[directive[0]:directive[1]]
        else:
            start = max([text.rfind(c, 0, m.start()) + 1 for c in ";{}"]
                        + [b for a, b in directives if b <= m.start()])
            end = _DECLARATOR_END.search(text, m.end())
            declaration = text[start:end.start() if end else len(text)]
        blank = "/*constant*/" if m.group() == "__constant__" else " " * len(m.group())
        if re.search(r"\bconst(expr)?\b", declaration):
            source = f"{source[:m.start()]}{blank}{source[m.end():]}"
        elif directive is None and _POINTER_DECLARATOR.search(text, m.end(), start + len(
                declaration)):
            source = _const_pointers(source, m, start + len(declaration) - m.end(), blank)
    return source


# a declarator's last `*`, just before its name (`float *p, **q`)
_POINTER_DECLARATOR = re.compile(r"\*(?=\s*[A-Za-z_])")


def _const_pointers(source: str, keyword: re.Match, length: int, blank: str) -> str:
    """`source` with the `__constant__` of `keyword` blanked and `const` put after each
    pointer declarator's `*` in the `length` characters past it: on a GPU the pointer
    variable lives in constant memory (the kernel may not change it) and what it points at
    is writable, where shim.h's `const` in front would make the pointee const (`p[i] = x`
    did not compile). The line's later columns move by 7 per pointer."""
    rest = source[keyword.end():keyword.end() + length]
    rest = _POINTER_DECLARATOR.sub("* const ", rest)
    return f"{source[:keyword.start()]}{blank}{rest}{source[keyword.end() + length:]}"
