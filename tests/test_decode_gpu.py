"""Decode on the GPU (CuPy, and torch for bfloat16), both kernels, against the float64 reference.

The full grid: every head size of the course (32 .. 256), group sizes 1 .. 64, float32 /
float16 / bfloat16, page sizes 1 .. 256, lengths around the page, split-K partitions (forced
and automatic, one 32k sequence), pages shared by several sequences, NaN in unused tail slots,
outputs poisoned, one plan over several layers, bfloat16 from torch tensors and as uint16 bits.
Marked `gpu`: skipped without one (tests/conftest.py).
"""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import decode_plan as dp

from .decode_cases import check_close, decode_problem, reference

pytestmark = pytest.mark.gpu
HEAD_DIMS = [32, 64, 80, 96, 112, 128, 192, 256]


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def on_gpu(cp, args, dtype):
    """The problem's arrays on the GPU; bfloat16 as uint16 bits (CuPy has no bfloat16)."""
    return [cp.asarray(a.view(np.uint16) if dtype == "bfloat16" and i < 3 else a)
            for i, a in enumerate(args)]


def poisoned_out(cp, dev, dtype):
    out = cp.full(dev[0].shape, np.nan, dtype=np.float32).astype(dev[0].dtype)
    if dtype == "bfloat16":
        out[...] = 0x7fc0   # a bfloat16 NaN
    return out


def run_gpu(cp, args, dtype, kernel="auto", **kw):
    dev = on_gpu(cp, args, dtype)
    out = poisoned_out(cp, dev, dtype)
    res = pl.paged_attention_decode(*dev, out=out, kernel=kernel, **kw)
    assert res is out and isinstance(res, cp.ndarray)
    host = cp.asnumpy(res)
    if dtype == "bfloat16":
        host = host.view(args[0].dtype)
    return check_close(host, reference(args), dtype)


@pytest.mark.parametrize("group", [1, 4, 16, 64])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensor_core_grid(rng, cp, dtype, head_dim, group):
    kv = 2 if group <= 16 else 1
    args = decode_problem(rng, [1, 15, 16, 17, 300], num_heads=group * kv, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    run_gpu(cp, args, dtype, "tensor_core", num_splits=2)


@pytest.mark.parametrize("group", [4, 16, 40])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_wmma_source_grid(rng, cp, monkeypatch, dtype, head_dim, group):
    """Lesson 09's WMMA source (kernels/decode_tc.cu), which plans take when
    decode_plan.TC_IMPL is "wmma" (the grid above runs the planner's, decode_mma.cu)."""
    monkeypatch.setattr(dp, "TC_IMPL", "wmma")
    kv = 2 if group <= 16 else 1
    args = decode_problem(rng, [1, 15, 16, 17, 300], num_heads=group * kv, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    dev = on_gpu(cp, args, dtype)
    w = pl.BatchDecodeWrapper().plan(dev[3], dev[4], group * kv, kv, head_dim, 16, dtype,
                                     kernel="tensor_core", num_splits=2)
    assert w.tc_config.source == "decode_tc"
    host = cp.asnumpy(w.run(*dev[:3], out=poisoned_out(cp, dev, dtype)))
    check_close(host.view(args[0].dtype) if dtype == "bfloat16" else host, reference(args),
                dtype)


@pytest.mark.parametrize("group", [1, 3, 8, 16])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_simt_float32_grid(rng, cp, head_dim, group):
    args = decode_problem(rng, [1, 15, 16, 17, 300], num_heads=2 * group, num_kv_heads=2,
                          head_dim=head_dim, dtype="float32")
    run_gpu(cp, args, "float32", num_splits=2)


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_simt_16_bit(rng, cp, dtype, head_dim, group):
    args = decode_problem(rng, [1, 17, 300], num_heads=2 * group, num_kv_heads=2,
                          head_dim=head_dim, dtype=dtype)
    run_gpu(cp, args, dtype, "simt")


@pytest.mark.parametrize("kernel,dtype", [("tensor_core", "float16"), ("simt", "float32")])
@pytest.mark.parametrize("page_size", [1, 7, 16, 64, 256])
def test_page_sizes(rng, cp, kernel, dtype, page_size):
    lens = [1, max(1, page_size - 1), page_size, page_size + 1, 2 * page_size + 3, 700]
    args = decode_problem(rng, lens, page_size=page_size, num_heads=8, num_kv_heads=2,
                          head_dim=128, dtype=dtype)
    run_gpu(cp, args, dtype, kernel)


@pytest.mark.parametrize("num_splits", [None, 1, 2, 5, 64])
@pytest.mark.parametrize("kernel,dtype", [("tensor_core", "float16"), ("simt", "float16"),
                                          ("simt", "float32")])
def test_split_k(rng, cp, kernel, dtype, num_splits):
    args = decode_problem(rng, [9000, 4097, 513, 1], num_heads=8, num_kv_heads=2,
                          head_dim=128, dtype=dtype)
    run_gpu(cp, args, dtype, kernel, num_splits=num_splits)


def test_one_long_sequence_is_split_to_fill_the_gpu(rng, cp):
    q, k, v, tables, lens = decode_problem(rng, [32768], num_heads=32, num_kv_heads=8,
                                           head_dim=128, spare_pages=0)
    w = pl.BatchDecodeWrapper().plan(cp.asarray(tables), cp.asarray(lens), 32, 8, 128, 16,
                                     "float16")
    assert w.kernel == "tensor_core" and w.max_parts >= 16, w.describe()
    out = w.run(cp.asarray(q), cp.asarray(k), cp.asarray(v))
    check_close(cp.asnumpy(out), reference((q, k, v, tables, lens)), "float16")


@pytest.mark.parametrize("kernel", ["tensor_core", "simt"])
def test_shared_pages(rng, cp, kernel):
    args = decode_problem(rng, [64, 100, 70, 65], num_heads=16, num_kv_heads=2,
                          shared_prefix=4)
    run_gpu(cp, args, "float16", kernel, num_splits=3)


def test_one_plan_over_layers_without_host_sync(rng, cp):
    """Three layers per plan, twice (two steps' worth of runs), no synchronisation between
    runs: the split-K counters reset themselves and each layer gets its own result."""
    q, k, v, tables, lens = decode_problem(rng, [700, 33, 1, 250], num_heads=32,
                                           num_kv_heads=4)
    layers = []
    for i in range(3):
        scale = np.float16(1.0 + 0.5 * i)
        layers.append(tuple(a * scale for a in (q, k, v)))
    w = pl.BatchDecodeWrapper().plan(cp.asarray(tables), cp.asarray(lens), 32, 4, 64, 16,
                                     "float16", num_splits=6)
    dev = [[cp.asarray(a) for a in layer] for layer in layers]
    outs = [cp.full(q.shape, np.nan, cp.float16) for _ in layers]
    for _ in range(2):
        for (lq, lk, lv), out in zip(dev, outs):
            w.run(lq, lk, lv, out=out)
    for (lq, lk, lv), out in zip(layers, outs):
        check_close(cp.asnumpy(out), reference((lq, lk, lv, tables, lens)), "float16")


def test_bfloat16_from_torch(rng, cp):
    torch = pytest.importorskip("torch")
    q, k, v, tables, lens = decode_problem(rng, [5, 300], num_heads=8, num_kv_heads=2,
                                           dtype="bfloat16")
    tq, tk, tv = (torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).cuda()
                  for a in (q, k, v))
    out = pl.paged_attention_decode(tq, tk, tv, cp.asarray(tables), cp.asarray(lens))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.is_cuda
    host = out.view(torch.int16).cpu().numpy().view(q.dtype)
    check_close(host, reference((q, k, v, tables, lens)), "bfloat16")


def test_run_refuses_a_smaller_cache_on_the_gpu(rng, cp):
    q, k, v, tables, lens = (cp.asarray(a) for a in decode_problem(rng, [40, 9], spare_pages=0))
    w = pl.BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 16, "float16")
    with pytest.raises(ValueError, match="k_cache: the plan reads page"):
        w.run(q, k[: w.max_page], v[: w.max_page])


@pytest.mark.parametrize("head_dim, lens, expected", [
    (96, [600 + 37 * i for i in range(20)], "tensor_core"),   # head_dim 96, mean >= 512
    (128, [600 + 37 * i for i in range(20)], "simt"),         # 20 sequences: not "a few"
    (64, [2048, 1999, 17, 3000], "tensor_core"),          # a few long sequences
    (112, [2048, 1999, 17, 3000], "simt"),                # ...but not at 112
    (40, [2048, 1999, 17, 3000], "simt"),                 # ...nor where tensor cores cannot
    (128, [100, 37, 300, 64, 5], "simt"),                 # short sequences
])
def test_multi_head_auto_choice_on_the_gpu(rng, cp, head_dim, lens, expected):
    """decode_choice.mha_kernel's table, planned from GPU tables, against the reference."""
    q, k, v, tables, seq_lens = decode_problem(rng, lens, num_heads=4, num_kv_heads=4,
                                               head_dim=head_dim)
    w = pl.BatchDecodeWrapper().plan(cp.asarray(tables), cp.asarray(seq_lens), 4, 4, head_dim,
                                     16, "float16")
    assert w.kernel == expected, w.describe()
    out = w.run(cp.asarray(q), cp.asarray(k), cp.asarray(v))
    check_close(cp.asnumpy(out), reference((q, k, v, tables, seq_lens)), "float16")
