"""Reading a learner's CUDA C source for what no run can show: a barrier between the copies
into shared memory and the WMMA loads that read them (the CPU executor's WMMA calls wait for
the whole warp, and a GPU usually gives the right scores without the barrier).

A few regular expressions, not a compiler: macros are expanded by name and helper functions
inlined by name, enough for the ways a kernel of one page is written (tests/
test_check_mistakes_tc_decode.py holds the right answers it must pass: macros, helpers before
and after the kernel, cooperative groups, inline asm). A kernel with no load it can find
passes: a check that fails a right answer is worse than one that misses a rare wrong one.
"""
from __future__ import annotations

import re

from ..cuda_text import any_word, strip_comments
from .report import Mismatch

MAX_READ = 1 << 20   # characters of code, macros and helpers expanded (a kernel: thousands)

_BARRIER = re.compile(r"\b(?:__syncwarp|__syncthreads(?:_count|_and|_or)?|__barrier_sync"
                      r"|__asm_barrier__)\s*\("
                      r"|\.sync\s*\(\s*\)"              # a cooperative group's g.sync()
                      r"|::sync\s*\(\s*[^)\s]")         # cooperative_groups::sync(g)
_LOAD = re.compile(r"\bload_matrix_sync\s*\(")
_NOT_CALLS = {"if", "for", "while", "switch", "return", "sizeof", "catch"}


def _macros_expanded(code: str) -> str:
    """The code with each #define's name replaced by its body (its arguments left after it:
    enough to see a barrier or a load written through a macro), the #define lines removed."""
    macros = []
    def keep(m):
        macros.append((m.group(1), m.group(2).replace("\\\n", " ")))
        return "\n"
    code = re.sub(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(?:\([^)\n]*\))?((?:\\\n|[^\n])*)", keep,
                  code, flags=re.M)
    for name, body in macros:
        code = _replaced(code, re.compile(rf"\b{name}\b"), f" {body} ")
    return code


def _replaced(code: str, pattern: re.Pattern, text: str) -> str:
    """`code` with each match of `pattern` replaced by `text`, or a Mismatch when that makes
    more than MAX_READ characters: macros or helpers that expand into each other (each
    #define naming the next one twice) doubled the text at each step, hours and gigabytes
    from a few hundred characters, and no compiler would ever see that text."""
    size = len(code) + sum(1 for _ in pattern.finditer(code)) * len(text)
    if size > MAX_READ:
        raise Mismatch(f"the kernel's macros and helper functions, each read where it is "
                       f"used, make more than {MAX_READ} characters of code: the check "
                       f"cannot look for the barrier in it",
                       "write the kernel plainly: macros and helpers used where they are "
                       "needed, none expanding into others over and over.")
    return pattern.sub(lambda _: text, code)


def _functions(code: str) -> dict:
    """name -> body of each function defined in `code` (braces matched)."""
    out, closing, opened = {}, {}, []
    for brace in re.finditer(r"[{}]", code):   # each brace's match, in one pass: matching
        if brace[0] == "{":                    # from each head again took minutes on
            opened.append(brace.start())       # thousands of nested heads
        elif opened:
            closing[opened.pop()] = brace.start()
    for head in re.finditer(r"\b(\w+)\s*\([^;{}]*\)\s*(?:const\s*)?\{", code):
        if head.group(1) not in _NOT_CALLS and head.group(1) not in out:
            out[head.group(1)] = code[head.end():closing.get(head.end() - 1, len(code))]
    return out


def _kernel_inlined(code: str, name: str) -> str:
    """The kernel's body, each call of a helper function defined in the source replaced by the
    helper's body (twice over, for a helper calling a helper)."""
    funcs = _functions(code)
    body = funcs.pop(name, code)
    for _ in range(2):
        for helper, text in funcs.items():
            body = _replaced(body, re.compile(rf"(?<![\w.:>])\b{helper}\s*(?=\()"),
                             f" {{ {text} }} ")
    return body


def barrier_before_loads(source: str, kernel: str) -> bool:
    """Whether `kernel` has a __syncwarp() (or __syncthreads(), a cooperative group's sync(),
    an inline-asm bar.sync) between the last write into a shared array that its WMMA loads
    read and its first load_matrix_sync; True when it has no such load. Without the barrier a
    lane may load elements another lane has not written yet. Macros and helper functions are
    read where they are used (a load or a barrier in a helper counts where the kernel calls it)."""
    # an inline-asm barrier (asm volatile("bar.sync 0;")) kept as a token: strings go next
    source = re.sub(r'"[^"\n]*\b(?:bar|barrier)(?:\.warp)?\.sync\b[^"\n]*"',
                    '"" __asm_barrier__()', source)
    full = _macros_expanded(strip_comments(source))
    full = re.sub(r"\b__launch_bounds__\s*\([^)]*\)", " ", full)
    code = _kernel_inlined(full, kernel)
    load = _LOAD.search(code)
    if load is None:
        return True
    shared = set(re.findall(r"__shared__[^;]*?\b(\w+)\s*\[", full))
    # the arrays the loads read (an array written after the barrier that no load reads, a
    # staging buffer for the scores, needs no barrier before the loads); all if none is named
    loaded = {n for n in shared for call in re.findall(r"\bload_matrix_sync\s*\([^;]*", code)
              if re.search(rf"\b{n}\b", call)} or shared
    writes = list(re.finditer(any_word(loaded, capture=False) + r"\s*\[[^;]*?\]\s*=(?!=)",
                              code[:load.start()])) if loaded else []
    after = writes[-1].end() if writes else 0
    return _BARRIER.search(code[after:load.start()]) is not None


def missing_barrier_in_source(source: str) -> None:
    """tc_tile_scores' source check: a Mismatch unless a barrier stands between the
    copies into shared memory and the first WMMA load."""
    if barrier_before_loads(source, "tc_tile_scores"):
        return
    raise Mismatch("no __syncwarp() between the copies into shared memory and the first "
                   "wmma::load_matrix_sync",
                   "the lanes load fragment elements that other lanes copied into q_tile and "
                   "k_tile: call __syncwarp() after the copies, before the first "
                   "load_matrix_sync. The scores can come out right without it (here, and "
                   "often on a GPU), so the check reads the source.",
                   "__syncwarp() after the copies", "none")
