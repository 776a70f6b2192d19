"""Lesson 04's online softmax (checks_softmax.py): the checks of the state besides its answer.
A later update() must not write into a value array given at an earlier key (a state that kept
the array itself changes it in place), and result() must leave the state as it was (asked
twice after every key, it answers as when asked once)."""
from __future__ import annotations

import numpy as np

from .compare import changed_input, fmt
from .report import Mismatch, as_array


def kept_value(values, passed, i: int) -> Mismatch | None:
    """A Mismatch where update() of key i wrote into a value given at an earlier key: the
    state kept that array itself (acc = value) and now updates it in place, which in
    attend_one writes into v_cache (each value there is a view of the cache). Seen in the
    notebook; under the grader the sandbox's copy of an earlier value is never copied back
    (attend_one's check still catches it there, as the cache comes back)."""
    for j in range(i):
        changed = changed_input(f"update() of key {i}", {f"the value of key {j}": values[j]},
                                {f"the value of key {j}": passed[j]})
        if changed is not None:
            changed.hint = (f"update() of key {i} wrote into the value array given at key "
                            f"{j}: your state kept that array itself (acc = value) and then "
                            "changed it in place (acc *= ..., acc += ...). The caller still "
                            "owns it (in attend_one it is a view of v_cache): start acc from "
                            "np.zeros(head_dim), or from a copy (value * weight).")
            return changed
    return None


def result_keeps_state(cls, scores, values) -> None:
    """Right when result() is asked once, at the end; the spec's result() is the answer over
    the keys so far at any time. Ask it twice after every key and compare with what a fresh
    state fed the same keys answers when asked once: the same operations, so the same bits
    unless result() changed the state (`acc /= l` is right the first time only), or changed
    it into an equal one (a normalized state: float32 rounding, so a float32 tolerance)."""
    state = cls(values.shape[1])
    for i, (s, v) in enumerate(zip(scores, values)):
        state.update(float(s), v.copy())
        fresh = cls(values.shape[1])
        for s_j, v_j in zip(scores[:i + 1], values[:i + 1]):
            fresh.update(float(s_j), v_j.copy())
        once = as_array(fresh.result(), "result()")
        once_single, once = once.dtype == np.float32, once.astype(np.float64)
        for call in ("first", "second"):
            got = as_array(state.result(), "result()")
            # float32 state may keep itself normalized (acc / l, m + log l, l = 1: the same
            # answer, float32's rounding apart; near scores of -1000 an ulp of m is 6e-5, and
            # each result() rounds m again); in float64 they agree to 1e-12 (a state folded
            # in other steps rounds otherwise; atol for a dim that sums to ~0). A
            # divided-twice state is off by the factor l (1 + the other keys' weights), far
            # past either.
            single = once_single or got.dtype == np.float32
            got = got.astype(np.float64)
            if got.shape == once.shape and np.allclose(got, once, rtol=1e-3 if single else 1e-12,
                                                       atol=1e-5 if single else 1e-12,
                                                       equal_nan=True):
                continue
            same_shape = got.shape == once.shape
            d = int(np.argmax(np.abs(np.nan_to_num(got - once, nan=np.inf)))) \
                if same_shape else 0
            raise Mismatch(f"after {i + 1} of {len(scores)} keys, result() asked once gives "
                           f"'expected'; asked twice after every key, its {call} call there "
                           f"gives 'got' (dim {d})",
                           "result() changed the state: the answer must not depend on whether "
                           "or how often result() was called before. Return acc / l as a new "
                           "array and leave acc, l and m as they are (no /= on them inside "
                           "result()).", expected=fmt(once[d]),
                           got=fmt(got[d]) if same_shape else str(got.shape))
