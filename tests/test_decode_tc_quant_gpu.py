"""The tensor-core decode kernels' shapes and compressed pages on the GPU (CuPy), against the
float64 reference: the cases of test_decode_tc_quant.py at GPU sizes (every head size, the
sm_89+ e4m3 conversion instruction, which the CPU executor does not run), on lesson 09's WMMA
source and on decode_mma.cu (codes in registers at head_dim 128 and 256). Marked `gpu`."""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp

from .decode_cases import check_close, decode_problem, reference
from .test_decode_tc_quant import launch, planned, quantized

pytestmark = pytest.mark.gpu
HEAD_DIMS = [32, 64, 80, 96, 112, 128, 192, 256]


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def nan_out(cp, shape):
    return cp.full(shape, np.nan, dtype=np.float16)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("impl,head_dim", [("wmma", d) for d in HEAD_DIMS]
                         + [("mma", 128), ("mma", 256)])
@pytest.mark.parametrize("group", [4, 16])
def test_compressed_pages(rng, cp, kv_dtype, scheme, head_dim, group, impl):
    check_compressed_gpu(rng, cp, kv_dtype, scheme, head_dim, group, impl)


def check_compressed_gpu(rng, cp, kv_dtype, scheme, head_dim, group, impl):
    """Source `impl` ("wmma", "mma", "rows") over int8/fp8 pages on the GPU, 2 KV heads,
    lengths around the page, NaN-poisoned output, against the float64 reference."""
    kv = 2
    args = decode_problem(rng, [1, 15, 16, 17, 300], num_heads=group * kv, num_kv_heads=kv,
                          head_dim=head_dim)
    q, k, v, tables, lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    cfg = dp.tc_config("float16", head_dim, group, dp.KV_QUANT_IDS[kv_dtype],
                       scheme == "per_token", impl=impl)
    assert cfg.impl == impl
    dev = [cp.asarray(a) for a in (q, kc, vc, ks, vs, tables, lens)]
    w = planned((dev[0], None, None, dev[5], dev[6]), group * kv, kv, head_dim, 16, "float16",
                2, cfg)
    out = launch(w, dev[0], dev[1], dev[2], dev[3], dev[4], nan_out(cp, q.shape))
    check_close(cp.asnumpy(out), reference((q, kd, vd, tables, lens)), "float16")


@pytest.mark.parametrize("warps,tile,stages", [(1, 16, 8), (2, 32, 4), (2, 32, 3), (3, 48, 3),
                                               (4, 64, 2), (1, 16, 6)])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("impl", dp.TC_IMPLS)
def test_kernel_shapes(rng, cp, warps, tile, stages, head_dim, impl):
    args = decode_problem(rng, [1, 17, 300, 1000], num_heads=8, num_kv_heads=2,
                          head_dim=head_dim)
    q, k, v, tables, lens = args
    cfg = dp.tc_config("float16", head_dim, 4, warps=warps, tile_t=tile, stages=stages, impl=impl)
    dev = [cp.asarray(a) for a in args]
    w = planned(dev, 8, 2, head_dim, 16, "float16", 3, cfg)
    out = w.run(*dev[:3], out=nan_out(cp, q.shape))
    check_close(cp.asnumpy(out), reference(args), "float16")
