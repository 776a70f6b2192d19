"""The probes of kernels/mma_ptx.cuh (tests/kernels/mma_ptx.cu: ldmatrix x1/x2/x4 and .trans,
mma m16n8k16 f16/bf16, movmatrix.trans, pack2, an attention step through registers) on the GPU, for
compute-sanitizer (GPU only): `compute-sanitizer --tool memcheck python
benchmarks/sanitize_mma_ptx.py` (racecheck too). Each result is checked against the PTX ISA's
layout tables, as tests/test_mma_ptx.py does."""
import cupy as cp
import numpy as np

from tests.test_mma_ptx import (BF16, attention_case, attention_want, kern, ldmatrix_case,
                                ldmatrix_expected, mma_case, mma_inputs, mma_want,
                                movmatrix_case, movmatrix_expected, run_ldmatrix, run_mma,
                                run_movmatrix)

launches = 0
for variant in range(6):
    tile, nrows, rows = ldmatrix_case(variant)
    got = run_ldmatrix(tile, nrows, (rows * 8).astype(np.int32), variant, xp=cp)
    np.testing.assert_array_equal(got, ldmatrix_expected(tile, rows, variant, 2))
    launches += 1
for dtype in (np.float16, BF16):
    for alias in (0, 1):
        a, b, c = mma_case(np.random.default_rng(1 + alias), dtype, small=True)
        got = run_mma(*mma_inputs(a, b, c, dtype), dtype is BF16, alias, xp=cp)
        np.testing.assert_array_equal(got, mma_want(a, b, c)[0].astype(np.float32))
        launches += 1
mats, x = movmatrix_case()
got = run_movmatrix(x, xp=cp)
np.testing.assert_array_equal(got, movmatrix_expected(mats))   # the PTX ISA's table
np.testing.assert_array_equal(got, run_movmatrix(x))           # the CPU executor, bit for bit
launches += 1
q, k, v = attention_case()
o = cp.full((16, 16), np.nan, cp.float32)
kern("attention_step")(1, 32, tuple(cp.asarray(x.view(np.uint16)) for x in (q, k, v)) + (o,))
np.testing.assert_array_equal(cp.asnumpy(o), attention_want(q, k, v))
cp.cuda.Device().synchronize()
print(f"sanitize_mma_ptx: {launches + 1} launches, all results match the PTX ISA's tables")
