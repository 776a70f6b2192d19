"""CUDA C source as text: comments and literals blanked, simple macros and typedefs read,
a set of names found as whole words.

What the launch-argument check (signature.py), the CPU executor's source checks
(cpu/source.py) and the grader's (grading/source_*.py) read of a kernel before anything
compiles it.
"""
from __future__ import annotations

import functools
import re

__all__ = ["strip_comments", "collect_defines", "reaching", "macro_aliases", "any_word"]


# A raw string's prefix just before its quote (R, u8R, uR, UR, LR, as a token of its own),
# and its opening: the delimiter up to the '(' (at most 16 characters, no space or backslash).
_RAW_PREFIX = re.compile(r"(?<!\w)(?:u8|[uUL])?R\Z")
_RAW_OPEN = re.compile(r'"([^ ()\\\t\v\f\n]{0,16})\(')
# A quote inside a number is a digit separator (C++14: 1'000'000, 0x1'F'), not a character
# literal's; a name's (u8'c', L'c') opens one. A number starts with a digit that no name
# character goes before, and goes on over name characters and dots.
_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


@functools.lru_cache(maxsize=64)
def strip_comments(source: str, comment_line_end: str = "\n") -> str:
    """`source` with comments and string/char literals blanked, same length and lines; a line
    end inside a /* */ comment becomes `comment_line_end` (the compilers read the comment as
    one space: a directive goes on past it)."""
    out = []
    i, n = 0, len(source)
    in_number = False
    while i < n:
        c = source[i]
        # (a token ends where a comment or literal starts: no number goes on past one)
        in_number = in_number and (c in _NAME_CHARS or c in ".'") or (
            c.isdigit() and (i == 0 or source[i - 1] not in _NAME_CHARS))
        if c == "/" and source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c == "/" and source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", source[i:j]).replace("\n", comment_line_end))
            i = j
        elif c == '"' and _RAW_PREFIX.search(source, max(0, i - 3), i) and \
                (raw := _RAW_OPEN.match(source, i)):
            # a raw string R"d(...)d": no escapes, may span lines and hold quotes and /*
            end = source.find(f'){raw.group(1)}"', raw.end())
            j = n if end < 0 else end + len(raw.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", source[i:j]))
            i = j
        elif c == "'" and in_number:
            out.append(c)   # a digit separator (1'000'000), no character literal
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and source[j] != c and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", source[i + 1:j - 1]) + (c if j - i > 1 else ""))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def collect_defines(source: str, options=()) -> dict[str, str]:
    """Simple object-like macros and typedefs of the source, plus -D options: name -> text."""
    options = tuple(options or ())
    try:
        return dict(_defines(source, options))
    except TypeError:   # an unhashable option: read without the memory
        return dict(_defines.__wrapped__(source, options))


@functools.lru_cache(maxsize=128)
def _defines(source: str, options: tuple) -> tuple[tuple[str, str], ...]:
    """collect_defines's pairs, remembered: every plan's kernels read the same sources again."""
    text = strip_comments(source)
    found: dict[str, str] = {}
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([^\n]*?)[ \t]*$", text, re.M):
        found[m.group(1)] = m.group(2)
    for m in re.finditer(r"\btypedef\s+([\w\s:]+?)\s+(\w+)\s*;", text):
        found[m.group(2)] = m.group(1)
    for m in re.finditer(r"\busing\s+(\w+)\s*=\s*([\w\s:]+?)\s*;", text):
        found[m.group(1)] = m.group(2)
    opts = list(options or ())
    for i, opt in enumerate(opts):
        d = None
        if opt in ("-D", "--define-macro") and i + 1 < len(opts):
            d = opts[i + 1]
        elif opt.startswith("--define-macro="):
            d = opt.split("=", 1)[1]
        elif opt.startswith("-D") and len(opt) > 2:
            d = opt[2:]
        if d:
            name, _, value = d.partition("=")
            found[name.strip()] = value.strip() if value else "1"
    return tuple(found.items())


def any_word(names, *, capture: bool = True) -> str:
    """A pattern that matches any one of `names` as a whole word (escaped, tried in sorted
    order); with `capture`, the name is group 1, else the group captures nothing (a caller
    that adds groups of its own numbers them from 1)."""
    group = "(" if capture else "(?:"
    return r"\b" + group + "|".join(map(re.escape, sorted(names))) + r")\b"


def reaching(seed: set[str], graph: dict[str, set[str]]) -> set[str]:
    """seed and every name of graph whose words hold one of them, followed through each other
    (a worklist over each word's users: a chain of names is read once, not once per link)."""
    users: dict[str, list[str]] = {}
    for name, words in graph.items():
        for word in words:
            users.setdefault(word, []).append(name)
    found, todo = set(seed), list(seed)
    while todo:
        for name in users.get(todo.pop(), ()):
            if name not in found:
                found.add(name)
                todo.append(name)
    return found


def macro_aliases(source: str, words: set[str], *, whole: bool = False,
                  options=()) -> set[str]:
    """`words` and the names of the source's object-like macros (and typedefs) and of the
    `-D` options' macros (`options`, the compile's: `-DLOG=printf` defines LOG for the
    compiler as a #define would) whose body names one of them, followed through each other
    (`#define LOG printf`, `#define CMEM __constant__`); with `whole`, only object-like ones
    whose body is that one word. A `-D` function-like macro (`-DLOG(...)=printf(...)`) is
    known by its name."""
    graph: dict[str, set[str]] = {}
    for name, body in collect_defines(source, options).items():
        name, params, _ = name.partition("(")
        if not whole or not params and re.fullmatch(r"[A-Za-z_]\w*", body):
            graph[name.strip()] = set(re.findall(r"[A-Za-z_]\w*", body))
    return reaching(set(words), graph)
