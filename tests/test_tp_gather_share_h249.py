"""What one rank gives the gather that it cannot send as it is, raised on every rank (none
waits in, or posts another size to, a collective), then the next step runs. Ranks as threads
(tests/thread_ranks.py).

1. The phase-by-phase API's gather given what is not this rank's share of the step (another
   dtype, other rows, not an array), a `refused` that is no exception, or called before any
   tables (raised alike on every rank, before any collective): each crosses as that rank's
   refusal (the gather's size comes from the shared tables).
2. A refusing rank's error whose message is longer when read again (the rank announced one
   size, then broadcast more bytes) or whose str() raises (raised on that rank alone).
"""
import re

import numpy as np
import pytest

from pagedattn_lab.distributed import torch_missing
from tests.test_tp_refusal_h245 import _rank_inputs, _reference, default_decode, step_with_fault
from tests.thread_ranks import run_ranks

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")
SHARE = r"out_local: rank 1's share of this step is a NumPy array of shape \(6, 4, 64\) and " \
        r"dtype float32; got "
BAD_SHARES = {   # what rank 1 gathers in place of its output: (it, what every rank raises)
    "dtype": (lambda o: o.astype(np.float64),
              (ValueError, SHARE + r"ndarray of shape \(6, 4, 64\) and dtype float64$")),
    "rows": (lambda o: o[:3], (ValueError, SHARE + r"ndarray of shape \(3, 4, 64\)")),
    "list": (lambda o: o.tolist(), (ValueError, SHARE + r"list of shape \(\) and dtype None")),
    "not_an_exception": (None, (TypeError, r"refused: expected the exception this rank's step "
                                           r"raised, got str$"))}


def gather_bad_share_rank(rank: int, world_size: int, bad: str) -> dict:
    """A step in phases whose rank 1 gathers BAD_SHARES[bad]; then a good step."""
    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    tp.plan(*tp.share_tables(*shared))
    out_local = tp.attend(q, k, v)
    make = BAD_SHARES[bad][0]
    try:
        if rank == 1 and make is None:
            tp.gather(refused="rank 1 gave up")
        else:
            tp.gather(make(out_local) if rank == 1 else out_local)
        refused = None
    except Exception as error:   # noqa: BLE001 - handed to the test
        refused = (type(error), str(error))
    return {"refused": refused, "out": tp.step(q, k, v, *shared)}


@needs_torch
@pytest.mark.parametrize("bad", list(BAD_SHARES))
def test_a_share_that_is_not_the_steps_is_raised_on_every_rank_then_the_next_step_runs(
        monkeypatch, bad):
    results, errors, _ = run_ranks(monkeypatch, gather_bad_share_rank, 2, bad)
    assert errors == [None, None], errors
    kind, pattern = BAD_SHARES[bad][1]
    for r in results:
        assert r["refused"] is not None and r["refused"][0] is kind, r["refused"]
        assert re.match(pattern, r["refused"][1]), r["refused"][1]
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)


def gather_before_tables_rank(rank: int, world_size: int) -> dict:
    tp = default_decode()
    try:
        tp.gather(refused=ValueError("no tables"))
    except Exception as error:   # noqa: BLE001 - handed to the test
        return {"refused": (type(error), str(error))}
    return {"refused": None}


@needs_torch
def test_a_gather_before_any_tables_is_refused_alike_on_every_rank(monkeypatch):
    results, errors, group = run_ranks(monkeypatch, gather_before_tables_rank, 2)
    assert errors == [None, None], errors
    assert group.log[1:] == []   # (after the sizes' all_gather) no collective was posted
    for r in results:
        assert r["refused"][0] is RuntimeError and \
            r["refused"][1].startswith("gather: no step's tables yet; call share_tables first")


# ---- an error whose message changes, or cannot be read, as it crosses ----------------------

class _Growing(ValueError):
    """A message one byte longer each time it is read: the refusing rank announces one size,
    then must send that many bytes."""
    reads = 0

    def __str__(self):
        self.reads += 1
        return "refused" + "!" * self.reads


class _Unreadable(ValueError):
    def __str__(self):
        raise RuntimeError("no message")


def attend_raises_rank(rank: int, world_size: int, error_class) -> dict:
    """Rank 1's run raises `error_class()`; what each rank raises (its message where it can
    be read), then a good step."""
    def fail(*args, **kwargs):
        raise error_class()

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    error = step_with_fault(tp, rank, 1, tp.wrapper, "run", fail, shared, q, k, v)
    refused = None if error is None else \
        (type(error), None if isinstance(error, error_class) else str(error))
    return {"refused": refused, "out": tp.step(q, k, v, *shared)}


@needs_torch
@pytest.mark.parametrize("error_class, message", [
    (_Growing, "refused!"),
    (_Unreadable, "(_Unreadable: its message could not be read)")], ids=["growing", "unreadable"])
def test_an_error_whose_message_changes_or_fails_is_raised_on_every_rank(
        monkeypatch, error_class, message):
    results, errors, _ = run_ranks(monkeypatch, attend_raises_rank, 2, error_class)
    assert errors == [None, None], errors
    assert results[0]["refused"] == (ValueError, message)
    assert results[1]["refused"] == (error_class, None)
    for r in results:
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)
