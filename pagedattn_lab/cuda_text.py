"""CUDA C source as text: comments and literals blanked, simple macros and typedefs read.

What the launch-argument check (signature.py) and the CPU executor's source checks
(cpu/source.py) read of a kernel before anything compiles it.
"""
from __future__ import annotations

import functools
import re

__all__ = ["strip_comments", "collect_defines"]


@functools.lru_cache(maxsize=64)
def strip_comments(source: str) -> str:
    """`source` with comments and string/char literals blanked, same length and lines."""
    out = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "/" and source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c == "/" and source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", source[i:j]))
            i = j
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
    return found
