"""Bad input and failures halfway, eighth round. Each case here failed before its fix.

1. A tensor-parallel step stopped on one rank by a BaseException that is no Exception (a
   KeyboardInterrupt, a SystemExit) from its plan, its run or rank 0's packing: the rank left
   the step at once, and every other rank waited in the collective it never posted (under
   torchrun, until the process group's timeout). Ranks as threads (tests/thread_ranks.py).
   A RuntimeError crossed as "RuntimeError: ..." (its kind's name, which the rebuilt
   RuntimeError already has, said twice).
2. TPDecode's `timed` taken as a truth value ("no" timed), and a broadcast buffer past the
   memory failing in NumPy, naming no argument.
3. head_range, step_bytes and plot_head_split given NumPy ints: floats (int64 over uint64)
   or wrapped int8 counts.
4. launch's timeout unchecked: NaN never timed out, 0 stopped the ranks as they started.
5. unpack_tables calling a negative count in a buffer's header "more than" the sizes.
6. generate() failing while it queued its prompts left the first ones queued.
"""
import importlib
import re

import numpy as np
import pytest

from pagedattn_lab.distributed import (head_range, pack_tables, step_bytes, torch_missing,
                                       unpack_tables)
from pagedattn_lab.distributed.shard import refusal_error, refusal_header, refusal_message
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from tests.test_tp_refusal_h245 import _rank_inputs, _reference, default_decode, step_with_fault
from tests.thread_ranks import run_ranks

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")


# ---- 1. a rank interrupted mid-step --------------------------------------------------------

class _Interrupt(KeyboardInterrupt):
    """A KeyboardInterrupt the test can tell from a real Ctrl-C."""


STOPS = {   # where the step stops: (the rank, what raises, the phase API or step)
    "plan": (1, "plan", False),
    "run": (1, "run", False),
    "pack": (0, "_pack", False),
    "gather_refused": (1, "run", True)}


def interrupted_rank(rank: int, world_size: int, stop: str) -> dict:
    """STOPS[stop]'s rank raises an _Interrupt in one step; each rank's error, then a good
    step on every rank."""
    def interrupt(*args, **kwargs):
        raise _Interrupt("stop")

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    stopper, name, phases = STOPS[stop]
    owner = tp if name == "_pack" else tp.wrapper
    error = step_with_fault(tp, rank, stopper, owner, name, interrupt, shared, q, k, v, phases)
    stopped = None if error is None else (type(error), str(error))
    return {"stopped": stopped, "out": tp.step(q, k, v, *shared)}


@needs_torch
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_rank_interrupted_mid_step_stops_every_rank_and_the_next_step_runs(monkeypatch, stop):
    results, errors, group = run_ranks(monkeypatch, interrupted_rank, 2, stop)
    assert errors == [None, None], errors
    stopper = STOPS[stop][0]
    assert results[stopper]["stopped"] == (_Interrupt, "stop")   # its own, re-raised
    assert results[1 - stopper]["stopped"] == (
        RuntimeError, f"_Interrupt on rank {stopper} stopped this step on every rank: stop")
    for r in results:
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)


def test_an_interrupt_crosses_as_a_runtime_error_naming_it():
    """refusal_header and refusal_message refused a KeyboardInterrupt as "no exception"."""
    error = KeyboardInterrupt("stop")
    rebuilt = refusal_error(refusal_header(4, error), refusal_message(error))
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "KeyboardInterrupt: stop"


def test_a_runtime_error_crosses_without_its_kind_said_twice():
    error = RuntimeError("rank 1's stream was lost")
    rebuilt = refusal_error(refusal_header(4, error), refusal_message(error))
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "rank 1's stream was lost"


# ---- 2. TPDecode's own sizes and flags -----------------------------------------------------

def _build_rank(rank: int, world_size: int, prefill: bool, **changed):
    """TPDecode (or TPPrefill) of small sizes, with `changed` ones."""
    from pagedattn_lab.distributed import TPDecode, TPPrefill  # noqa: PLC0415 - ranks' torch
    sizes = dict(num_heads=8, num_kv_heads=2, head_dim=64, page_size=4,
                 dtype="float16" if prefill else "float32", max_batch=4, max_pages=4)
    return (TPPrefill if prefill else TPDecode)(**{**sizes, **changed})


@needs_torch
@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_a_broadcast_buffer_past_the_memory_is_refused_by_name_on_every_rank(monkeypatch,
                                                                             prefill):
    """max_batch x max_pages sizes the buffer every step's tables cross in: NumPy's
    MemoryError (or "array is too big") named neither, and smaller, it was allocated lazily,
    to get the process killed when first written."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes",
                        lambda device: 2**20)
    _, errors, group = run_ranks(monkeypatch, _build_rank, 2, prefill,
                                 max_batch=1024, max_pages=1024)   # 4 MiB of int32 tables
    for error in errors:
        assert type(error) is ValueError and str(error).startswith(
            "max_batch, max_pages: the broadcast buffer (1024 rows of 1024 pages) would take "
            "4.0 MiB, more than the 1.0 MiB of memory this machine has"), error
    assert [name for name, _ in group.log] == ["all_gather"]   # the sizes' only


@needs_torch
@pytest.mark.parametrize("timed", ["no", 0, None])
def test_timed_is_a_bool(monkeypatch, timed):
    """A string or None was taken as a truth value ("no" timed every phase)."""
    _, errors, group = run_ranks(monkeypatch, _build_rank, 2, False, timed=timed)
    for error in errors:
        assert type(error) is TypeError and str(error) == \
            f"timed: expected True or False, got {timed!r} ({type(timed).__name__})", error
    assert group.log == []   # refused before any collective


# ---- 3. head counts given as NumPy ints ----------------------------------------------------

def test_head_range_of_numpy_ints_is_python_ints():
    """An int64 over a uint64 world size is a float64 in NumPy: the range came back as
    floats, which shard_cache then refused as no ints."""
    heads = head_range(1, np.uint64(2), np.int64(4), np.int64(2))
    assert heads == (1, 2, 2, 4) and all(type(n) is int for n in heads), heads


def test_step_bytes_of_numpy_int8_heads_does_not_wrap():
    """int8 head counts kept their dtype through the products: the output's bytes wrapped to
    -128 (and a longer batch raised NumPy's OverflowError, naming nothing)."""
    got = step_bytes([5000, 3000], np.int8(4), np.int8(2), 8, 4, np.uint64(2))
    tables = 4 * (2 + 2 + 2 * 1250)   # int32 words: header, lengths, 2 rows of 1250 pages
    assert got == step_bytes([5000, 3000], 4, 2, 8, 4, 2) == (tables, 64, 128, 256000)
    assert all(type(n) is int for n in got), got


class _Counted(Exception):
    """Stops plot_head_split at its size check, carrying the count it checked."""


def test_plot_head_split_counts_the_boxes_of_numpy_int8_heads_without_wrapping(monkeypatch):
    """64 + 64 heads and a page of 65 boxes made 193, which int8 wrapped to -63: a count
    the size check let through whatever it was."""
    from pagedattn_lab.viz import tensor_parallel

    def counted(cells, *args, **kwargs):
        raise _Counted(cells)

    monkeypatch.setattr(tensor_parallel, "check_cells", counted)
    with pytest.raises(_Counted) as checked:
        tensor_parallel.plot_head_split(np.int8(64), np.int8(64), 1, [0])
    assert checked.value.args[0] == 193 and type(checked.value.args[0]) is int


# ---- 4. launch's timeout -------------------------------------------------------------------

def _never_started(*args, **kwargs):
    raise AssertionError("the ranks were started")


def rank_identity(rank: int, world_size: int) -> int:
    return rank


@needs_torch
@pytest.mark.parametrize("timeout, error", [
    ("5", TypeError), (True, TypeError), (None, TypeError),
    (float("nan"), ValueError), (float("inf"), ValueError), (0, ValueError), (-1.5, ValueError)])
def test_launch_refuses_a_timeout_that_is_no_positive_number_before_any_rank_starts(
        monkeypatch, timeout, error):
    """NaN never timed out (a hung rank hung the caller for good), 0 or less stopped the
    ranks as they started, True was one second, and "5" failed in the deadline's sum,
    naming nothing."""
    # (the package's name `launch` is the function)
    launch_module = importlib.import_module("pagedattn_lab.distributed.launch")
    monkeypatch.setattr(launch_module, "_run_ranks", _never_started)
    with pytest.raises(error, match=rf"^timeout: expected seconds, a finite number > 0, got "
                                    rf"{re.escape(repr(timeout))}"):
        launch_module.launch(rank_identity, 1, timeout=timeout)


# ---- 5. a table buffer whose header holds a negative count ---------------------------------

@pytest.mark.parametrize("word, value", [(0, -7), (1, -3)], ids=["batch", "pages"])
def test_unpack_tables_names_a_negative_count_as_such(word, value):
    """It was called "more than max_batch=2, max_pages=None", which no sizes could mend."""
    buf = pack_tables(np.array([[0, 1], [2, -1]], np.int32), np.array([5, 3], np.int32), 2, 2)
    buf[word] = value
    rows, pages = (value, 2) if word == 0 else (2, value)
    with pytest.raises(ValueError, match=rf"^buf: its header says {rows} rows of {pages} pages, "
                                         rf"a negative count that pack_tables never writes"):
        unpack_tables(buf, 2)


# ---- 6. generate() failing while it queues its prompts -------------------------------------

@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    return LlamaModel(config, random_weights(config, seed=0), device="cpu")


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_generate_failing_while_queueing_leaves_nothing_queued(model, monkeypatch, failure):
    """The prompts were queued before generate's clean-up began: a failure queueing the
    second left the first queued, and the next generate() refused to start, blaming
    add_request."""
    engine = LLMEngine(model, EngineConfig(num_pages=64, page_size=8))
    add, calls = engine.scheduler.add, []

    def fails_second(req):
        calls.append(req)
        if len(calls) == 2:
            raise failure("interrupted while queueing")
        add(req)

    monkeypatch.setattr(engine.scheduler, "add", fails_second)
    params = SamplingParams(max_tokens=2)
    with pytest.raises(failure, match="interrupted while queueing"):
        engine.generate([[1, 2, 3], [4, 5]], params)
    monkeypatch.undo()
    assert not engine.has_unfinished()
    assert engine.stats.prompt_tokens == 0 and engine.kv.pool.num_used == 0
    assert [o.finish_reason for o in engine.generate([[1, 2, 3]], params)] == ["length"]
