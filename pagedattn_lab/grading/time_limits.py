"""Time limits for a check's cases: `time_limit` raises CaseTimeout when a case (the
learner's code) runs too long; `held()` keeps it from landing in the middle of a frame of
the grader's channel.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time


class CaseTimeout(Exception):
    """A case ran past its time limit (an endless loop in the learner's code)."""


CASE_TIME_LIMIT = 30.0  # seconds per case


class _Held:
    """`held()`: within the block, a time limit that expires waits for the block's end.

    The grader's channel (channel.py) moves each frame from the socket to where its wait
    finds it inside `held()`: a CaseTimeout raised in between would lose the frame and
    leave the two sides waiting for each other. A signal mask cannot promise that: another
    thread of the process (e.g. a BLAS worker) takes a signal the main thread blocks, and
    Python still runs the handler in the main thread; so the handler itself defers."""

    depth = 0
    expired: CaseTimeout | None = None

    def __enter__(self):
        _Held.depth += 1

    def __exit__(self, kind, exc, tb):
        _Held.depth -= 1
        if _Held.depth == 0 and _Held.expired is not None:
            expired, _Held.expired = _Held.expired, None
            if kind is None:   # (another exception already ends the case)
                raise expired
        return False


def held() -> _Held:
    return _Held()


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CaseTimeout in this thread after `seconds` (Unix main thread; else no limit).

    Nested limits keep the outer one: it still ends when it would have (a check's own short
    limit inside a case's, or a request the grader's judge nests inside another)."""
    usable = (hasattr(signal, "setitimer") and seconds and
              threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        expired = CaseTimeout(f"the case ran longer than {seconds:g} s")
        if _Held.depth:
            _Held.expired = expired   # raised where the held block ends
            return
        raise expired

    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer_left and outer_left <= seconds:   # the outer limit ends first: it stays as is
        yield
        return
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:   # the outer limit rings as planned (at once if its time has passed)
            signal.setitimer(signal.ITIMER_REAL,
                             max(1e-4, outer_left - (time.monotonic() - started)))
