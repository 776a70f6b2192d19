"""Launch arguments the CPU executor must treat as cupy.RawKernel on a GPU does."""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.signature import check_launch_args, parse_kernel_signature

SCALE = r'''
extern "C" __global__ void scale(float* out, double f, long long k, bool neg) {
  extern __shared__ float tmp[];
  int i = threadIdx.x;
  out[i] = (float)(f * (double)(k + i)) * (neg ? -1.f : 1.f);
}
'''


@pytest.fixture(scope="module")
def scale():
    return RawKernel(SCALE, "scale")


def test_python_scalars_of_cupys_types_are_passed(scale):
    # CuPy passes a float as a double, an int as a long long, a bool as a bool: all right here.
    out = np.zeros(4, np.float32)
    scale(1, 4, (out, 0.5, 10, True))
    np.testing.assert_array_equal(out, -0.5 * np.arange(10, 14, dtype=np.float32))


def test_python_int_for_int_names_what_cupy_passes():
    sig = parse_kernel_signature("__global__ void f(int n, bool b) {}", "f")
    with pytest.raises(TypeError, match=r"'n', int\).*as a 64-bit long long, which the "
                                        r"kernel misreads as int; pass np\.int32\(3\)"):
        check_launch_args(sig, (3, True), "f", (np.ndarray,))
    with pytest.raises(TypeError, match=r"'b', bool\).*Python float as a 64-bit double"):
        check_launch_args(sig, (np.int32(3), 1.0), "f", (np.ndarray,))


def test_shared_mem_over_the_opt_in_is_refused_as_on_a_gpu(scale):
    out = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"shared_mem=65536 .*max_dynamic_shared_size_bytes "
                                         r"\(49152\).*CUDA_ERROR_INVALID_VALUE"):
        scale(1, 4, (out, 0.5, 1, False), shared_mem=65536)
    scale.max_dynamic_shared_size_bytes = 65536
    try:
        scale(1, 4, (out, 0.5, 1, False), shared_mem=65536)
    finally:
        scale.max_dynamic_shared_size_bytes = 48 * 1024


@pytest.mark.parametrize("bad", [1.5, None, "64"])
def test_shared_mem_must_be_an_int(scale, bad):
    with pytest.raises(TypeError, match=r"shared_mem: expected an int"):
        scale(1, 4, (np.zeros(4, np.float32), 0.5, 1, False), shared_mem=bad)


@pytest.mark.parametrize("block, message", [
    ((1, 1, 65), r"block\.z = 65 is over CUDA's limit of 64"),
    ((1025,), r"block\.x = 1025 is over CUDA's limit of 1024"),
    ((32, 64), r"at most 1024 threads per block; got 2048"),
])
def test_block_limit_names_the_dimension(scale, block, message):
    with pytest.raises(ValueError, match=message):
        scale(1, block, (np.zeros(4, np.float32), 0.5, 1, False))


def test_grid_limit_names_the_dimension(scale):
    with pytest.raises(ValueError, match=r"grid\.y = 65536 is over CUDA's limit of 65535"):
        scale((1, 65536), 4, (np.zeros(4, np.float32), 0.5, 1, False))
