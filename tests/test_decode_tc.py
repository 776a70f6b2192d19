"""The tensor-core decode kernels (kernels/decode_mma.cu, the planner's, and lesson 09's WMMA
source kernels/decode_tc.cu) and bfloat16, on the CPU executor, against the float64 reference.

A representative grid at small sizes (CI has two cores; every case compiles its own
instantiation): each head size of the course, group sizes from 1 (MHA) to 64 (several row
tiles) and past one block's rows, page sizes 1 to 256 and not powers of two, lengths around
the page (1, page-1, page, page+1), split-K partitions merged by the last block, pages shared
by several sequences, NaN in the unused tail slots, outputs poisoned. The full grid runs on
the GPU (tests/test_attention_gpu.py).

These tests need the CPU executor's WMMA (mma.h) and bfloat16 (cuda_bf16.h) support; where
the shim still refuses a header, its tests are skipped with that reason.
"""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import decode_plan as dp

from .decode_cases import check_close, cpu_executor_has, decode_problem, poisoned, reference

needs_wmma = pytest.mark.skipif(not cpu_executor_has("mma.h"),
                                reason="the CPU executor's shim has no WMMA (mma.h) yet")
needs_bf16 = pytest.mark.skipif(not cpu_executor_has("cuda_bf16.h"),
                                reason="the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")


def run(args, dtype, kernel, **kw):
    q = args[0]
    out = pl.paged_attention_decode(*args, out=poisoned(q.shape, dtype), kernel=kernel, **kw)
    check_close(out, reference(args), dtype)
    return out


CASES = [
    # dtype,     heads, kv, head_dim, page, lens, splits
    ("float16", 4, 4, 32, 16, [1, 15, 16, 17], None),      # MHA, one row of 16 used
    ("float16", 8, 2, 64, 7, [1, 6, 7, 8, 50], 3),          # page not a power of two; split
    ("float16", 4, 1, 80, 1, [1, 2, 40], None),             # page 1: a lookup per token
    ("float16", 24, 2, 96, 16, [33, 200], 1),               # group 12; 4 tiles, one partition
    ("float16", 16, 1, 112, 32, [31, 65], None),            # MQA, 16 heads: a full row tile
    ("float16", 6, 2, 128, 256, [255, 257, 3], 2),          # page 256; group 3
    ("float16", 40, 2, 64, 16, [130, 3], 3),                # group 20: two row tiles
    ("float16", 64, 1, 32, 8, [20, 9], 2),                  # group 64: four row tiles
    ("float16", 6, 3, 192, 16, [40, 17], None),             # head 192: 32-token tiles
    ("float16", 4, 2, 256, 16, [70, 1], 3),                 # head 256
    ("bfloat16", 8, 2, 64, 16, [1, 17, 100], 2),
    ("bfloat16", 2, 2, 128, 12, [25, 12], None),
]


@needs_wmma
@pytest.mark.parametrize("impl", dp.TC_IMPLS)
@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,splits", CASES)
def test_tensor_core_decode(rng, monkeypatch, dtype, heads, kv, head_dim, page, lens, splits,
                            impl):
    monkeypatch.setattr(dp, "TC_IMPL", impl)
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    run(args, dtype, "tensor_core", num_splits=splits)


@needs_wmma
def test_tensor_core_shared_pages_and_many_partitions(rng):
    """Three sequences share their first two pages; 9 partitions each, merged."""
    args = decode_problem(rng, [40, 50, 37], page_size=16, num_heads=8, num_kv_heads=2,
                          shared_prefix=2)
    run(args, "float16", "tensor_core", num_splits=9)


@needs_wmma
def test_tensor_core_plan_runs_layers_and_resets_its_counters(rng):
    """Split-K blocks count themselves in counters that the merging block resets: a second
    run of the same plan (another layer) must merge again, correctly."""
    q, k, v, tables, lens = decode_problem(rng, [70, 33, 5], num_heads=8, num_kv_heads=2)
    w = pl.BatchDecodeWrapper().plan(tables, lens, 8, 2, 64, 16, "float16",
                                     kernel="tensor_core", num_splits=4)
    assert w.kernel == "tensor_core" and w.max_parts == 4
    for scale in (None, 0.05):
        out = w.run(q, k, v, out=poisoned(q.shape, "float16"), scale=scale)
        check_close(out, reference((q, k, v, tables, lens), scale), "float16")


@needs_bf16
@pytest.mark.parametrize("heads,kv,head_dim", [(4, 4, 64), (8, 2, 128)])
def test_bfloat16_on_cuda_cores(rng, heads, kv, head_dim):
    args = decode_problem(rng, [1, 16, 17, 90], num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype="bfloat16")
    out = run(args, "bfloat16", "simt", num_splits=2)
    assert out.dtype == args[0].dtype


@needs_bf16
def test_bfloat16_as_numpy_uint16_is_refused_on_the_cpu(rng):
    """uint16 holds bfloat16 bits only on CuPy and in a torch.bfloat16 tensor's view: a NumPy
    uint16 array is integers, refused as paged_attention_decode and write_kv refuse it; its
    .view(ml_dtypes.bfloat16) runs."""
    q, k, v, tables, lens = decode_problem(rng, [9, 30], dtype="bfloat16")
    w = pl.BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 16, "bfloat16")
    bits = [a.view(np.uint16) for a in (q, k, v)]
    with pytest.raises(TypeError, match=r"^q: the plan is for bfloat16: expected dtype "
                                        r"bfloat16, got uint16"):
        w.run(*bits, out=poisoned(q.shape, "bfloat16").view(np.uint16))
    out = w.run(*(b.view(q.dtype) for b in bits), out=poisoned(q.shape, "bfloat16"))
    check_close(out, reference((q, k, v, tables, lens)), "bfloat16")
