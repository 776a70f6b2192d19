"""Tensor-parallel decode (pagedattn_lab.distributed): the heads split over two processes
talking through torch.distributed's gloo, the CPU executor in each, against the same step in
one process and the float64 reference.

`make test` installs torch (the `dist` extra) so these run in CI; where torch is missing they
skip and say so. Each launch starts two Pythons that import torch: about 3 s.
"""
import socket
import subprocess
import sys

import numpy as np
import pytest

from pagedattn_lab.distributed import (check_split, head_range, launch, pack_tables, reassemble,
                                       shard_cache, step_bytes, torch_missing, unpack_tables)
from pagedattn_lab.distributed.demo import (DEFAULT_CASE, make_tables, run_tp_decode,
                                            run_tp_prefill, single_process_decode,
                                            single_process_prefill, tp_decode_rank)
from pagedattn_lab.reference import reference_decode, reference_prefill_packed

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")

FP16_MQA = dict(seq_lens=(9, 130, 1, 64, 47, 129, 8), forks=((4, 3), (5, 1), (6, 0)),
                num_heads=8, num_kv_heads=2, head_dim=128, page_size=8, num_pages=80,
                dtype="float16", seed=3)


def _reference(one):
    return reference_decode(one["q"], one["k_cache"], one["v_cache"], one["block_tables"],
                            one["seq_lens"])


@needs_torch
def test_two_ranks_equal_one_process_and_reference():
    ranks = run_tp_decode(2)
    one = single_process_decode()
    ref = _reference(one)
    for r in ranks:
        assert not np.isnan(r["out"]).any()
        np.testing.assert_allclose(r["out"], one["out"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(r["out"], ref, rtol=0, atol=1e-5)
    # Every rank ends the step with the same whole output.
    np.testing.assert_array_equal(ranks[0]["out"], ranks[1]["out"])


@needs_torch
def test_fp16_group4_split_k_bitwise_equal_and_shards_hold_only_their_heads():
    ranks = run_tp_decode(2, FP16_MQA, num_splits=3)
    one = single_process_decode(FP16_MQA, num_splits=3)
    for r in ranks:   # the same partitions per head: the same float operations, bit for bit
        np.testing.assert_array_equal(r["out"], one["out"])
    np.testing.assert_allclose(ranks[0]["out"], _reference(one), rtol=0, atol=2e-3)
    c = FP16_MQA
    for r in ranks:
        h = head_range(r["rank"], 2, c["num_heads"], c["num_kv_heads"])
        assert r["heads"] == tuple(h)
        assert r["k_shape"] == (c["num_pages"], c["page_size"], 1, c["head_dim"])
        np.testing.assert_array_equal(r["k"], one["k_cache"][:, :, h.kv_start:h.kv_stop])
        # rank 0's tables, as every rank received them
        np.testing.assert_array_equal(r["tables"], one["block_tables"])
        assert set(r["timings"]) == {"broadcast", "plan", "attend", "gather"}


@needs_torch
def test_prefill_two_ranks_bitwise_equal_one_process():
    """Packed prefill (BatchPrefillWrapper, fp16 tensor cores): a new prompt, chunks over a
    cached prefix, decode rows, forked sequences over shared pages."""
    ranks = run_tp_prefill(2)
    one = single_process_prefill()
    f32 = {name: one[name].astype(np.float32) for name in ("q", "k_cache", "v_cache")}
    ref = reference_prefill_packed(f32["q"], f32["k_cache"], f32["v_cache"], one["qo_indptr"],
                                   one["block_tables"], one["seq_lens"])
    for r in ranks:
        assert r["out"].shape == one["q"].shape and not np.isnan(r["out"]).any()
        np.testing.assert_array_equal(r["out"], one["out"])
    np.testing.assert_allclose(ranks[0]["out"], ref, rtol=0, atol=4e-3)


@pytest.fixture
def taken_port():
    """A port another process could have taken after free_port found it free: one this test
    listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def hand_out_ports(monkeypatch, *first):
    """launch's free_port gives the ports `first`, then free ones; returns every port given."""
    launch_module = sys.modules["pagedattn_lab.distributed.launch"]
    free, queue, given = launch_module.free_port, list(first), []

    def next_port():
        given.append(queue.pop(0) if queue else free())
        return given[-1]
    monkeypatch.setattr(launch_module, "free_port", next_port)
    return given


@needs_torch
def test_row_parallel_layer_all_reduce_equals_one_process(monkeypatch, taken_port):
    """Column-parallel Wq, each rank's heads, row-parallel Wo, one all_reduce. The first
    MASTER_PORT handed out is taken, as another process may take it before rank 0 listens:
    every rank starts again on a new port."""
    from pagedattn_lab.distributed.layer import single_process_layer, tp_layer_rank
    given = hand_out_ports(monkeypatch, taken_port)
    ranks = launch(tp_layer_rank, 2)
    assert given[0] == taken_port and len(given) == 2
    one = single_process_layer()
    for r in ranks:
        assert r["reduce_bytes"] == one.nbytes
        np.testing.assert_allclose(r["out"], one, rtol=1e-5, atol=1e-5)
    # The partial sums are not the answer: the all_reduce did the work.
    assert np.abs(one).max() > 0.1


def test_bad_split_refused_before_any_process_starts(monkeypatch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")
    monkeypatch.setattr(subprocess, "Popen", no_process)
    with pytest.raises(ValueError, match=r"world_size: 3 ranks cannot split 4 KV heads"):
        run_tp_decode(3)
    with pytest.raises(ValueError, match="num_heads: 6 is not a multiple"):
        run_tp_decode(2, dict(num_heads=6))
    with pytest.raises(ValueError, match="world_size: 8 ranks cannot split 4 KV heads"):
        run_tp_prefill(8)


def test_missing_torch_is_named_before_any_process_starts(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("process started"))
    with pytest.raises(ImportError, match=r"pip install 'pagedattn-lab\[dist\]'"):
        launch(tp_decode_rank, 2)


def test_a_function_the_ranks_cannot_import_is_refused():
    def local(rank, world):
        return rank
    with pytest.raises(TypeError, match="inside another function"):
        launch(local, 2)
    with pytest.raises(ValueError, match="backend"):
        launch(tp_decode_rank, 2, backend="mpi")


@needs_torch
def test_a_failing_rank_is_reported_with_its_traceback(monkeypatch):
    # One rank (one process start): the wrapper refuses float64 inside it; no second start.
    given = hand_out_ports(monkeypatch)
    with pytest.raises(RuntimeError, match=r"(?s)rank 0 of 1 failed.*float64"):
        launch(tp_decode_rank, 1, dict(dtype="float64"))
    assert len(given) == 1


@needs_torch
def test_every_port_taken_is_reported_with_the_count(monkeypatch, taken_port):
    monkeypatch.setattr(sys.modules["pagedattn_lab.distributed.launch"], "PORT_TRIES", 2)
    given = hand_out_ports(monkeypatch, taken_port, taken_port)
    with pytest.raises(RuntimeError, match=r"(?s)^2 ports tried for MASTER_PORT.*rank 0 of 1 "
                                           r"failed.*address already in use"):
        launch(tp_decode_rank, 1)
    assert given == [taken_port, taken_port]


def bind_a_taken_port(rank, world_size, port):
    """A rank function whose own socket finds its port taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@needs_torch
def test_a_rank_function_failing_on_its_own_port_is_not_retried(monkeypatch, taken_port):
    """Only MASTER_PORT taken starts the ranks again: the rank function's own "address
    already in use" is its failure, reported at once (a retry would run its work again)."""
    given = hand_out_ports(monkeypatch)
    with pytest.raises(RuntimeError, match=r"(?s)^rank 0 of 1 failed.*already in use"):
        launch(bind_a_taken_port, 1, taken_port)
    assert len(given) == 1


# ---- the bookkeeping, no processes ----------------------------------------------------------

def test_tp_prefill_refuses_the_decode_only_num_splits():
    """TPPrefill inherits TPDecode's keywords; it once took num_splits and dropped it (the
    prefill wrapper has no split-K). Refused before torch.distributed is asked anything."""
    from pagedattn_lab.distributed import TPPrefill
    with pytest.raises(TypeError, match="num_splits"):
        TPPrefill(4, 2, 64, 16, "float16", 2, 4, num_splits=3)


def test_head_ranges_tile_the_heads_in_whole_groups():
    for heads, kv, world in ((8, 4, 2), (32, 8, 4), (64, 8, 8), (4, 4, 1), (12, 6, 3)):
        ranges = [head_range(r, world, heads, kv) for r in range(world)]
        assert [(h.kv_start, h.q_start) for h in ranges][0] == (0, 0)
        for a, b in zip(ranges, ranges[1:]):
            assert (a.kv_stop, a.q_stop) == (b.kv_start, b.q_start)
        assert (ranges[-1].kv_stop, ranges[-1].q_stop) == (kv, heads)
        group = heads // kv
        for h in ranges:    # every query head's KV head lives on the same rank
            assert h.q_start // group == h.kv_start and h.q_stop // group == h.kv_stop
    with pytest.raises(ValueError, match="rank"):
        head_range(2, 2, 8, 4)


def test_check_split_names_the_divisors():
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 8\)"):
        check_split(32, 8, 3)


def test_tables_cross_in_one_fixed_size_buffer():
    tables, lens = make_tables((37, 1, 16, 70), 16, 20, forks=((3, 0),))
    buf = pack_tables(tables, lens, max_batch=6, max_pages=7)
    assert buf.dtype == np.int32 and buf.size == 2 + 6 + 6 * 7
    got_tables, got_lens = unpack_tables(buf, max_batch=6)
    np.testing.assert_array_equal(got_tables, tables)
    np.testing.assert_array_equal(got_lens, lens)
    indptr = np.array([0, 37, 38, 40, 41], np.int32)
    buf = pack_tables(tables, lens, max_batch=6, max_pages=7, qo_indptr=indptr)
    assert buf.size == 2 + 6 + 6 * 7 + 7
    for got, want in zip(unpack_tables(buf, max_batch=6, max_pages=7), (tables, lens, indptr)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"qo_indptr: expected shape \(5,\)"):
        pack_tables(tables, lens, 6, 7, qo_indptr=indptr[:4])
    with pytest.raises(ValueError, match="at most 6 rows of 4 pages"):
        pack_tables(tables, lens, max_batch=6, max_pages=4)
    assert tables[3, :2].tolist() == tables[0, :2].tolist()    # the fork shares full pages
    assert tables[3, 2] != tables[0, 2]


def test_reassemble_puts_rank_blocks_on_their_heads():
    batch, heads, dim, world = 3, 8, 2, 4
    full = np.arange(batch * heads * dim).reshape(batch, heads, dim)
    blocks = [full[:, r * 2:(r + 1) * 2] for r in range(world)]
    gathered = np.concatenate([b.ravel() for b in blocks])    # what all_gather leaves
    np.testing.assert_array_equal(reassemble(gathered, world, batch, heads, dim), full)


def test_shard_cache_and_step_bytes():
    k = np.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
    s = shard_cache(k, head_range(1, 3, 12, 6))
    assert s.shape == (2, 4, 2, 3) and s.flags.c_contiguous
    np.testing.assert_array_equal(s, k[:, :, 2:4])
    b = step_bytes(DEFAULT_CASE["seq_lens"], 32, 8, 128, 16, 2)
    assert b.output == 6 * 32 * 128 * 2 and b.output_share == b.output // 2
    assert b.kv_read == sum(DEFAULT_CASE["seq_lens"]) * 2 * 4 * 128 * 2
    assert b.tables == 4 * (2 + 6 + 6 * 5)


def test_the_package_never_imports_torch_itself():
    import sys
    code = ("import sys, pagedattn_lab, pagedattn_lab.distributed, pagedattn_lab.check; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
