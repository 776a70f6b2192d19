"""A tensor-parallel step rank 0 refuses, on GPUs through NCCL: the refusal and its message cross
as CuPy buffers, every rank raises rank 0's error, and the next step's tables still arrive
(rank 0's tables CuPy arrays, as a GPU engine keeps them).

tests/test_pack_refusal_h230.py tests the same on the CPU (NumPy buffers, ranks as threads);
here the ranks are processes, one per GPU, as many as this machine has up to two (one rank
still sends and receives both broadcasts through NCCL).
"""
import numpy as np
import pytest

from pagedattn_lab.distributed import launch, torch_missing

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")]

GOOD_LENS = [16, 9]


def refused_then_good_rank(rank: int, world_size: int) -> dict:
    """Rank 0 gives a table with page id -3 where sequence 1 reads, then a good step."""
    import cupy  # noqa: PLC0415 - a GPU rank
    from pagedattn_lab.distributed.decode import TPDecode  # noqa: PLC0415 - ranks import torch
    tp = TPDecode(8, 4, 32, 8, "float16", 2, 2, device="gpu")
    bad = good = (None, None)
    if rank == 0:
        bad = cupy.array([[0, 1], [2, -3]], np.int32), cupy.array(GOOD_LENS, np.int32)
        good = cupy.array([[0, 1], [2, 3]], np.int32), cupy.array(GOOD_LENS, np.int32)
    try:
        tp.share_tables(*bad)
        refused = None
    except ValueError as error:
        refused = str(error)
    tables, lens = tp.share_tables(*good)
    return {"refused": refused, "tables": tables.get().tolist(), "lens": lens.get().tolist()}


def test_every_gpu_rank_raises_rank_0s_refusal_and_takes_the_next_step():
    import cupy  # noqa: PLC0415 - a GPU test
    world = min(2, cupy.cuda.runtime.getDeviceCount())
    ranks = launch(refused_then_good_rank, world, backend="nccl", timeout=120)
    for r in ranks:
        assert r["refused"] is not None and r["refused"].startswith(
            "block_tables[1, 1]: page id -3 is out"), r
        assert r["refused"] == ranks[0]["refused"]
        assert r["tables"] == [[0, 1], [2, 3]] and r["lens"] == GOOD_LENS


def test_every_gpu_rank_raises_a_rank_s_refusal_of_its_own_inputs_then_steps():
    """tests/test_tp_refusal_h245.py's gloo test through NCCL: rank 1 passes q with every head;
    every rank raises its error (none waits in the gather), then the good step's output."""
    import cupy  # noqa: PLC0415 - a GPU test
    from tests.test_tp_refusal_h245 import (  # noqa: PLC0415 - its rank function and checks
        check_every_rank_refused_then_stepped, refuse_then_step_rank)
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("two GPUs: rank 1 refuses while rank 0 waits in the gather")
    ranks = launch(refuse_then_step_rank, 2, "q_shape", device="gpu", backend="nccl",
                   timeout=120)
    # the GPU's float32 kernels round their exponentials otherwise than the CPU executor
    check_every_rank_refused_then_stepped(ranks, "q_shape", prefill=False, atol=1e-4)
