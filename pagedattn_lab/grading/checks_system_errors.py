"""Lesson 07's decode step (checks_system.py): the errors a step raises, read as the mistakes
they show. A ValueError of the attention's or the cache's (tables of every live sequence, one
token's k[i] appended), an OutOfPagesError's counts (needed, free, total), and an error of the
learner's own where the step cannot fit (the engine catches OutOfPagesError only)."""
from __future__ import annotations

import re
from numbers import Integral

from .. import paging
from ..paging import OutOfPagesError
from .escaped_errors import raising_line, raising_module
from .report import Mismatch


def refused_step(exc: ValueError, where: str) -> Exception:
    """The Mismatch naming the mistake a step's ValueError shows (tables of every live
    sequence, one token's k[i] passed to append), else `exc` itself, to be raised."""
    text = str(exc)
    if text.startswith(("block_tables", "seq_lens")) and "(one per " in text:
        return Mismatch(f"{where}: {text}", "build the block tables for exactly this step's "
                        "sequences, in the order of seq_ids: self.cache.block_tables(seq_ids) "
                        "(without arguments it lists every live sequence).")
    if text.startswith(("k:", "v:")) and "expected 3 dimensions" in text:
        return Mismatch(f"{where}: {text}", "cache.append takes [n_tokens, num_kv_heads, "
                        "head_dim]: pass k[i:i+1] (one token, still 3-D), not k[i].")
    return exc


def error_counts(exc: OutOfPagesError, want: tuple, what: str,
                 sequences: int | None = None) -> None:
    """The error says what the step needed and what the pool had (the engine reads them):
    `want`, (needed, num_free, num_pages) before the step, or what a failed append of a step
    undone by the cache's transaction reports (no more free, as many needed as were missing).
    `sequences`: the step's sequences, a count of one page each gives."""
    got = tuple(getattr(exc, name, None) for name in ("requested", "free", "total"))
    needed, num_free, num_pages = want
    requested, free, total = got
    if all(isinstance(n, Integral) for n in got) and total == num_pages and \
            0 <= free <= num_free and free < requested <= needed:
        return
    if (free, total) == (num_pages, num_free):
        hint = ("num_free and num_pages are swapped: raise pl.OutOfPagesError(needed, "
                "num_free, num_pages), in that order.")
    elif (free, total) == (num_pages - num_free, num_pages):
        # (with no page free, the pages in use are the whole pool: either was passed)
        what = "the pages in use (num_used)" + (" or in the pool" if not num_free else "")
        hint = (f"free says {free}: {what}, not the free ones: raise pl.OutOfPagesError("
                "needed, allocator.num_free, num_pages).")
    elif sequences is not None and requested == sequences != needed and \
            (free, total) == (num_free, num_pages):
        hint = (f"needed is {requested}, one page for each of the step's {sequences} "
                f"sequences, but only {needed} of them takes a page: sum pages_for_next_token "
                "over seq_ids (a sequence whose last page has room, and is its own, takes "
                "none).")
    else:
        hint = ("raise pl.OutOfPagesError(needed, num_free, num_pages): the pages the whole "
                "step needs, the pages free, the pages in the pool.")
    raise Mismatch(f"{what}; the OutOfPagesError says: {exc}", hint,
                   "requested %d, free %d, total %d" % want,
                   "requested %s, free %s, total %s" % got)


def other_error(exc: Exception, what: str) -> Exception:
    """A step that cannot fit raised an error of its own (RuntimeError("out of pages")...);
    any other error (a NotImplementedError, a kernel's) is returned as it is, to be raised."""
    if type(exc) not in (RuntimeError, MemoryError):
        return exc
    return Mismatch(f"{what}: raised {type(exc).__name__}: {exc}", "raise pl.OutOfPagesError("
                    "needed, num_free, num_pages): the engine catches that type (to preempt or "
                    "wait), not any error.", "OutOfPagesError", type(exc).__name__)


# a raise statement of the learner's own (after an `if ...:` on the same line too); a bare
# `raise` passes on the pool's error it caught
_OWN_RAISE = re.compile(r"\braise\s+[^\s#]")


def raised_by_the_pool(exc: OutOfPagesError) -> bool | None:
    """Whether the pool itself raised `exc` (an append that ran out of pages), not the
    learner's own test; None where nothing tells. An error sent back by the grader's sandbox
    has the channel's traceback, but names the learner's line it came through
    (remote_errors.learner_frame): their own raise statement, or the call that led to the
    pool's."""
    where = getattr(exc, "remote_frame", None)
    if isinstance(where, str):
        return None if not where else _OWN_RAISE.search(raising_line(where)) is None
    if exc.__traceback__ is None:
        return None
    return raising_module(exc) == paging.__name__
