"""A tensor-parallel step that one rank refuses: every rank raises the lowest refusing rank's
error, none is left waiting in the output's gather, and the next step runs on every rank.

Before, a rank whose own q/k/v the wrapper refused raised alone while the others waited in the
all_gather; and a refusal message over 1024 bytes reached the other ranks cut. Here two ranks
are processes talking through gloo (`launch`, whose timeout makes a hang fail the test, every
rank stopped); the collectives each step posts are counted with the ranks as threads
(tests/thread_ranks.py).
"""
import re

import numpy as np
import pytest

from pagedattn_lab.backend import to_numpy
from pagedattn_lab.distributed import launch, torch_missing
from pagedattn_lab.distributed.demo import (DEFAULT_CASE, PREFILL_CASE, _prefill_inputs, kv_pool,
                                            make_q, make_tables)
from pagedattn_lab.distributed.shard import REFUSAL_KINDS, head_range, table_capacity
from pagedattn_lab.reference import reference_decode, reference_prefill_packed
from tests.thread_ranks import run_ranks

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")
HANG = 120   # seconds a launch may take (~5 s idle; a loaded 2-core CI is slower): then hung
# Over 1024 bytes (the cap that cut refusal messages before), with 2-, 3- and 4-byte characters
LONG = "seq_lens: é…𝄞 " * 130
BAD = {   # the refusing rank, its inputs made from the good ones (q with every head too)
    "q_shape": (1, lambda q, k, v, q_all: (q_all, k, v)),
    "small_cache": (0, lambda q, k, v, q_all: (q, k[:1].copy(), v[:1].copy())),
    "dtype": (1, lambda q, k, v, q_all: (q.astype(np.float64), k, v)),
    "long_message": (1, lambda q, k, v, q_all: (q, k, v)),   # its wrapper's run raises LONG
    "long_table_message": (0, lambda q, k, v, q_all: (q, k, v))}   # its packing raises LONG
MATCH = {
    "q_shape": r"q_local: rank 1 owns query heads 4\.\.7 \(4 of 8\), so axis 1 holds 4; got "
               r"shape \((6|79), 8, 64\): pass q\[:, 4:8\]$",   # (decode, prefill)
    "small_cache": r"k_cache: the plan reads page \d+, but the cache has only 1 page$",
    "dtype": r"q: the plan is for float32: expected dtype float32, got float64$",
    "long_message": re.escape(LONG) + "$",
    "long_table_message": re.escape(LONG) + "$"}
REPLACED = {"long_message": "run", "long_table_message": "_pack"}   # by _raise_long


def _raise_long(*args, **kwargs):
    raise ValueError(LONG)


def default_decode():
    """Rank `dist.get_rank()`'s TPDecode of the demo's decode case (inside a rank)."""
    from pagedattn_lab.distributed import TPDecode  # noqa: PLC0415 - ranks' torch
    c = DEFAULT_CASE
    return TPDecode(c["num_heads"], c["num_kv_heads"], c["head_dim"], c["page_size"], c["dtype"],
                    len(c["seq_lens"]), -(-max(c["seq_lens"]) // c["page_size"]))


def step_with_fault(tp, rank, faulty, owner, name, fault, shared, q, k, v, phases=False):
    """One decode step in which rank `faulty`'s `owner.<name>` is `fault` (a function that
    raises), in `step` or, with `phases`, in the phases called one by one (a failing attend's
    error gathered, as step does); the replacement is removed after. Returns the error this
    rank raised, or None."""
    if rank == faulty:
        setattr(owner, name, fault)
    try:
        if phases:
            tp.plan(*tp.share_tables(*shared))
            try:
                out_local = tp.attend(q, k, v)
            except BaseException as error:   # noqa: BLE001 - gathered, as step does
                tp.gather(refused=error)
            else:
                tp.gather(out_local)
        else:
            tp.step(q, k, v, *shared)
    except BaseException as error:   # noqa: BLE001 - handed to the test
        return error
    finally:
        if rank == faulty:
            delattr(owner, name)
    return None


def _rank_inputs(tp, rank, prefill):
    """(rank 0's step arguments, this rank's q, k, v, and q with every head)."""
    c = PREFILL_CASE if prefill else DEFAULT_CASE
    tables, lens = make_tables(c["seq_lens"], c["page_size"], c["num_pages"], c["forks"],
                               c["seed"])
    h = tp.heads
    if prefill:
        q, k, v, indptr = _prefill_inputs(c, h, tables, lens)
        q_all = _prefill_inputs(c, head_range(0, 1, c["num_heads"], c["num_kv_heads"]),
                                tables, lens)[0]
        shared = (tables, lens, indptr)
    else:
        k, v = kv_pool(c["seed"], h, c["num_pages"], c["page_size"], c["head_dim"],
                       c["dtype"], tables, lens)
        q_all = make_q(c["seed"], len(lens), c["num_heads"], c["head_dim"], c["dtype"])
        q = np.ascontiguousarray(q_all[:, h.q_start:h.q_stop])
        shared = (tables, lens)
    return (shared if rank == 0 else (None,) * len(shared)), q, k, v, q_all


def refuse_then_step_rank(rank: int, world_size: int, bad: str, prefill: bool = False,
                          refuser: int | None = None, device: str = "cpu") -> dict:
    """A step whose refusing rank (BAD[bad]'s, or `refuser`) passes BAD[bad]'s inputs, then
    the same step with good ones on every rank; returns (the error's kind and message, or
    None), the message of the error it was raised from (or None) and the good output.
    device "gpu": every array CuPy, on this rank's GPU."""
    from pagedattn_lab.distributed import TPDecode, TPPrefill  # noqa: PLC0415 - ranks' torch
    c = PREFILL_CASE if prefill else DEFAULT_CASE
    tp = (TPPrefill if prefill else TPDecode)(
        c["num_heads"], c["num_kv_heads"], c["head_dim"], c["page_size"], c["dtype"],
        len(c["seq_lens"]), -(-max(c["seq_lens"]) // c["page_size"]), device=device)
    shared, *arrays = _rank_inputs(tp, rank, prefill)
    shared = tuple(None if a is None else tp.xp.asarray(a) for a in shared)
    q, k, v, q_all = (tp.xp.asarray(a) for a in arrays)
    refuser, inputs = (BAD[bad][0] if refuser is None else refuser), BAD[bad][1]
    given = (q, k, v)
    if rank == refuser:
        given = inputs(q, k, v, q_all)
        if bad in REPLACED:
            setattr(tp.wrapper if bad == "long_message" else tp, REPLACED[bad], _raise_long)
    try:
        tp.step(*given, *shared, out=tp.xp.full_like(q, np.nan))
        refused = cause = None
    except Exception as error:   # noqa: BLE001 - handed to the test
        refused, cause = (type(error), str(error)), error.__cause__
    if rank == refuser and bad in REPLACED:   # the class's method again
        delattr(tp.wrapper if bad == "long_message" else tp, REPLACED[bad])
    out = tp.step(q, k, v, *shared, out=tp.xp.full_like(q, np.nan))
    return {"refused": refused, "cause": None if cause is None else str(cause),
            "out": to_numpy(out)}


def _reference(prefill):
    """The float64 reference of the good step, every head (of the ranks' rounded inputs)."""
    c = PREFILL_CASE if prefill else DEFAULT_CASE
    tables, lens = make_tables(c["seq_lens"], c["page_size"], c["num_pages"], c["forks"],
                               c["seed"])
    every = head_range(0, 1, c["num_heads"], c["num_kv_heads"])
    if prefill:
        q, k, v, indptr = _prefill_inputs(c, every, tables, lens)
    else:
        k, v = kv_pool(c["seed"], every, c["num_pages"], c["page_size"], c["head_dim"],
                       c["dtype"], tables, lens)
        q = make_q(c["seed"], len(lens), c["num_heads"], c["head_dim"], c["dtype"])
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    if prefill:
        return reference_prefill_packed(q, k, v, indptr, tables, lens)
    return reference_decode(q, k, v, tables, lens)


def check_every_rank_refused_then_stepped(ranks, bad, prefill, atol=None):
    refuser = BAD[bad][0]
    kind, message = ranks[refuser]["refused"]
    assert re.match(MATCH[bad], message), message
    for r in ranks:   # the refusing rank's own error; the others' is rebuilt from its kind
        assert r["refused"] is not None, r
        assert r["refused"][1] == message
        rebuilt = next(k for k in REFUSAL_KINDS if issubclass(kind, k))
        assert issubclass(kind, r["refused"][0]) and issubclass(r["refused"][0], rebuilt)
    ref = _reference(prefill)
    for r in ranks:
        np.testing.assert_allclose(r["out"], ref, rtol=0,
                                   atol=atol or (4e-3 if prefill else 1e-5))


@needs_torch
@pytest.mark.parametrize("bad", ["q_shape", "small_cache", "dtype", "long_message"])
def test_a_rank_refusing_its_inputs_is_raised_on_every_rank_then_the_next_step_runs(bad):
    ranks = launch(refuse_then_step_rank, 2, bad, timeout=HANG)
    check_every_rank_refused_then_stepped(ranks, bad, prefill=False)


@needs_torch
def test_a_prefill_rank_refusing_its_inputs_is_raised_on_every_rank():
    ranks = launch(refuse_then_step_rank, 2, "q_shape", prefill=True, timeout=HANG)
    check_every_rank_refused_then_stepped(ranks, "q_shape", prefill=True)


# ---- the ranks as threads: what each step posts, and ranks that both refuse ----------------

OUT_SHARE = 6 * 4 * 64 * 4   # DEFAULT_CASE: 6 sequences x 4 heads a rank x 64 x float32


@needs_torch
def test_a_refused_step_posts_every_collective_a_good_one_does_then_the_message(monkeypatch):
    results, errors, group = run_ranks(monkeypatch, refuse_then_step_rank, 2, "q_shape")
    assert errors == [None, None], errors
    message = len(results[1]["refused"][1].encode())
    capacity = 4 * table_capacity(6, 5)
    # each rank's output share, then its 16 bytes of status
    assert group.log[1:] == [("broadcast", capacity), ("all_gather", OUT_SHARE + 16),
                             ("broadcast", message),   # rank 1's, whole
                             ("broadcast", capacity), ("all_gather", OUT_SHARE + 16)]


@needs_torch
def test_rank_0s_long_refusal_of_its_tables_arrives_whole(monkeypatch):
    """The broadcast path (rank 0's tables): the same whole message, ranks as threads."""
    results, errors, _ = run_ranks(monkeypatch, refuse_then_step_rank, 2, "long_table_message")
    assert errors == [None, None], errors
    check_every_rank_refused_then_stepped(results, "long_table_message", prefill=False)


def both_refuse_rank(rank: int, world_size: int) -> dict:
    """Rank 0 passes a cache of one page, rank 1 a float64 q; then a good step."""
    return refuse_then_step_rank(rank, world_size, "small_cache" if rank == 0 else "dtype",
                                 refuser=rank)


@needs_torch
def test_ranks_that_both_refuse_raise_the_lowest_ones_error_each_keeping_its_own(monkeypatch):
    results, errors, _ = run_ranks(monkeypatch, both_refuse_rank, 2)
    assert errors == [None, None], errors
    for r in results:
        assert r["refused"][0] is ValueError and re.match(MATCH["small_cache"],
                                                          r["refused"][1]), r
    assert re.match(MATCH["dtype"], results[1]["cause"]), results[1]
    assert results[0]["cause"] is None
    np.testing.assert_allclose(results[0]["out"], _reference(False), rtol=0, atol=1e-5)


FAILURES = {   # what rank 1's run raises: (the error, what every rank then raises)
    "another_kind": (KeyError("rank 1's cache was freed"),
                     (RuntimeError, 'KeyError: "rank 1\'s cache was freed"')),
    "empty_message": (ValueError(), (ValueError, ""))}   # (no message to broadcast)


def attend_fails_rank(rank: int, world_size: int, failure: str, phases: bool) -> dict:
    """Rank 1's run raises FAILURES[failure], in `step` or, with `phases`, in the phases
    called one by one (rank 1 then passes its error to gather)."""
    def fail(*args, **kwargs):
        raise FAILURES[failure][0]

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    error = step_with_fault(tp, rank, 1, tp.wrapper, "run", fail, shared, q, k, v, phases)
    return {"refused": None if error is None else (type(error), str(error))}


@needs_torch
@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("phases", [False, True], ids=["step", "phases"])
def test_any_error_of_a_rank_is_raised_on_every_rank(monkeypatch, failure, phases):
    results, errors, _ = run_ranks(monkeypatch, attend_fails_rank, 2, failure, phases)
    assert errors == [None, None], errors
    error, rebuilt = FAILURES[failure]
    assert results[0]["refused"] == rebuilt
    assert results[1]["refused"] == (type(error), str(error))
