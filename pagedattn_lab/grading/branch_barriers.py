"""A shared-memory race whose two lines have a __syncthreads() between them in the source, the
barrier inside an if (or else) whose branch does not hold both lines: the race proves
that the threads did not both wait there, and the if is why (the executor, like a GPU, lets
the threads that skip the branch run on past it). The race's own words, "no __syncthreads()
between", would send the learner looking for a barrier that is there."""
from __future__ import annotations

import re

from ..cuda_text import strip_comments

_SYNC = re.compile(r"\b__syncthreads\s*\(")
_BRANCH = re.compile(r"\b(?:if\s*\(|else\b)")


def _opener(lines: list[str], n: int, col: int) -> tuple[int, str] | None:
    """(line number, the text before the brace) of the `{` that opens the block holding
    line n's column col (1-based lines), or None at the function's own level."""
    depth = 0
    for k in range(n, 0, -1):
        text = lines[k - 1][:col] if k == n else lines[k - 1]
        for i in range(len(text) - 1, -1, -1):
            if text[i] == "}":
                depth += 1
            elif text[i] == "{":
                if depth == 0:
                    before = text[:i]
                    if not before.strip() and k > 1:   # a brace alone on its line
                        before = lines[k - 2]
                    return k, before
                depth -= 1
    return None


def _closer(lines: list[str], n: int, col: int) -> int:
    """The line number of the `}` that closes the block holding line n's column col (past
    the last line where none does)."""
    depth = 0
    for k in range(n, len(lines) + 1):
        text = lines[k - 1][col:] if k == n else lines[k - 1]
        for c in text:
            if c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    return k
                depth -= 1
    return len(lines) + 1


def barrier_in_branch(source: str, line, other_line) -> int | None:
    """The line of a __syncthreads() between race lines `line` and `other_line` that sits in
    an if's or an else's branch that does not hold both lines (one holding both is a branch
    that both threads took), or None."""
    if line is None or other_line is None or line == other_line:
        return None
    lines = strip_comments(source).split("\n")
    lo, hi = sorted((line, other_line))
    for n in range(lo, min(hi, len(lines))):
        sync = _SYNC.search(lines[n - 1])
        if sync is None or (n == lo and ";" not in lines[n - 1][:sync.start()]):
            continue   # (on the first line, only a barrier after a statement is between)
        if _BRANCH.search(lines[n - 1][:sync.start()]):
            return n   # if (c) __syncthreads();
        opened = _opener(lines, n, sync.start())
        holds_both = opened is not None and opened[0] <= lo and \
            _closer(lines, n, sync.start()) >= hi
        if opened is not None and not holds_both and _BRANCH.search(opened[1]):
            return n
    return None


def branch_barrier_hint(n: int) -> str:
    return (f"the __syncthreads() at line {n} sits inside an if: only the threads that take "
            "the branch reach it, and the others run on past it without waiting (on a GPU, a "
            "barrier that some threads of the block skip may hang or order nothing). Every "
            "thread must reach every __syncthreads(): put it after the if, outside the "
            "branch.")
