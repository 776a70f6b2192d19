"""A kernel cannot switch the variable-length-array check off with a diagnostic pragma (the
read-through of session 30): `#pragma GCC diagnostic ignored "-Wvla"` above `float acc[n];`
built and ran on the CPU executor, where NVRTC refuses the array. Such pragmas are refused by
line; a pragma that does not lower a diagnostic (`#pragma unroll`) still builds."""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, RawKernel

_KERNEL = r"""
extern "C" __global__ void row_sums(const float* x, float* out, int n)
{
PRAGMA
    float acc[8];
    for (int k = 0; k < n; ++k) acc[k] = x[k];
    out[threadIdx.x] = acc[n - 1];
}
"""


@pytest.mark.parametrize("pragma", [
    '#pragma GCC diagnostic ignored "-Wvla"',
    '  #  pragma clang diagnostic warning "-Wvla"',
    '_Pragma("GCC diagnostic ignored \\"-Wvla\\"")',
])
def test_a_pragma_that_lowers_a_diagnostic_is_refused_at_its_line(pragma):
    with pytest.raises(KernelCompileError) as info:
        RawKernel(_KERNEL.replace("PRAGMA", pragma), "row_sums").compile()
    assert info.value.lineno == 4
    assert "lowers a compiler diagnostic" in str(info.value)


def test_a_pragma_in_a_comment_or_unroll_builds():
    # (`#pragma unroll` before its loop: Clang refuses one that precedes anything else)
    src = _KERNEL.replace("PRAGMA", '// #pragma GCC diagnostic ignored "-Wvla"').replace(
        "    for", "#pragma unroll\n    for")
    out = np.zeros(1, np.float32)
    RawKernel(src, "row_sums")((1,), (1,), (np.arange(8, dtype=np.float32), out, np.int32(8)))
    assert out.tolist() == [7.0]
