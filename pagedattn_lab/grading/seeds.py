"""Seeds of the checks' random cases: fixed in a notebook, drawn afresh by the grader.

In a learner's notebook every check is reproducible: a case always gets the same numbers.
The instructor's grader draws a secret salt for each submission, in its own process (the
submission never sees it), and mixes it into every seed, so answers memorized from the
notebook's cases do not pass; each call of a check gets a salt of its own (`call_salt`).
The salt is `submission_salt(seed, the notebook's bytes)`: the grader prints the run's seed,
so grading the same file again with `--seed` meets the same cases (an instructor reproduces
a learner's result), while two different submissions never share their cases.
Checks make their generators with `case_rng(seed)`, never with `np.random.default_rng`
directly (tests/test_grade_protocol.py enforces it).
"""
from __future__ import annotations

import contextlib
import hashlib

import numpy as np

_salt: int | None = None


def case_rng(seed: int) -> np.random.Generator:
    """The generator of the case numbered `seed` (salted under the grader)."""
    if _salt is None:
        return np.random.default_rng(seed)
    return np.random.default_rng([_salt, int(seed)])


def case_ints(seed: int, **bounds: tuple[int, int]) -> dict[str, int]:
    """Python ints drawn by case `seed`'s generator, each within its (low, high), both
    included: a case of fixed numbers alone is the same under the grader, so a table of the
    answers the notebook showed passes it."""
    rng = case_rng(seed)
    return {name: int(rng.integers(low, high, endpoint=True)) for name, (low, high) in
            bounds.items()}


@contextlib.contextmanager
def salted(salt: int):
    """Within the block, every `case_rng` mixes in `salt` (a non-negative int)."""
    global _salt
    previous, _salt = _salt, int(salt)
    try:
        yield
    finally:
        _salt = previous


def call_salt(salt: int, task: str, call: int) -> int:
    """The salt of the `call`-th check of `task` under the grader's `salt`: new for each call.
    With one salt for every call, a learner's code that fails case i on purpose learns, from
    whether the check goes on to case i+1, one bit of case i's answer, and calling the check
    again meets the same case i: bit by bit, its answer. Each call's cases are new ones."""
    digest = hashlib.blake2b(f"{int(salt)}/{task}/{int(call)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def submission_salt(seed: int, notebook: bytes) -> int:
    """The salt of the submission whose file holds `notebook`, in a grading run of `seed`:
    the same file graded with the same seed meets the same cases; any other file, others."""
    digest = hashlib.blake2b(notebook, digest_size=8, key=int(seed).to_bytes(16, "little"))
    return int.from_bytes(digest.digest(), "little") >> 1   # a non-negative 63-bit int
