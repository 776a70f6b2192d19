"""Seeds of the checks' random cases: fixed in a notebook, drawn afresh by the grader.

In a learner's notebook every check is reproducible: a case always gets the same numbers.
The instructor's grader draws a secret salt for each submission, in its own process (the
submission never sees it), and mixes it into every seed, so answers memorized from the
notebook's cases do not pass. Checks make their generators with `case_rng(seed)`, never
with `np.random.default_rng` directly (tests/test_grade_protocol.py enforces it).
"""
from __future__ import annotations

import contextlib

import numpy as np

_salt: int | None = None


def case_rng(seed: int) -> np.random.Generator:
    """The generator of the case numbered `seed` (salted under the grader)."""
    if _salt is None:
        return np.random.default_rng(seed)
    return np.random.default_rng([_salt, int(seed)])


@contextlib.contextmanager
def salted(salt: int):
    """Within the block, every `case_rng` mixes in `salt` (a non-negative int)."""
    global _salt
    previous, _salt = _salt, int(salt)
    try:
        yield
    finally:
        _salt = previous
