"""An index past a local array (`float acc[8]; acc[8] = x;`) or past a static `__shared__`
array stops the thread with a KernelFault that names the thread, the block, the line, the
array, the index and the array's size (-fsanitize=bounds, handled by the executor's runtime:
cpu/ubsan.cpp); before, the write landed on the thread's other locals or the next array (or
the compiler dropped it) and the launch passed. The shift check, which shared GCC's trap
with it, now names its line and amount too."""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel
from pagedattn_lab.grading.faults import describe_kernel_exception

_LOCAL = r"""
extern "C" __global__ void partial_sums(const float* x, float* out, int n)
{
    float acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = 0.0f;
    for (int k = 0; k < n; ++k)
        acc[k] += x[threadIdx.x];
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc[0] + acc[7];
}
"""

_SHARED = r"""
extern "C" __global__ void shifted_copy(const float* x, float* out, int shift)
{
    __shared__ float tile[32];
    __shared__ float other[32];
    other[threadIdx.x] = 1.0f;
    tile[threadIdx.x + shift] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x] * other[threadIdx.x];
}
"""

_LOCAL_READ = r"""
extern "C" __global__ void last_of(const int* x, int* out, int i)
{
    int v[4] = {x[0], x[1], x[2], x[3]};
    out[threadIdx.x] = v[i - (int)threadIdx.x];
}
"""


def test_a_write_past_a_local_array_names_thread_block_line_array_index_and_size():
    kern = RawKernel(_LOCAL, "partial_sums")
    x, out = np.arange(4, dtype=np.float32), np.zeros(8, np.float32)
    kern((2,), (4,), (x, out, np.int32(8)))
    assert out.tolist() == [0.0, 2.0, 4.0, 6.0] * 2   # acc[0] + acc[7]: x + x
    out[:] = -1
    with pytest.raises(KernelFault) as info:
        kern((2,), (4,), (x, out, np.int32(9)))
    e = info.value
    assert e.thread == (0, 0, 0) and e.block == (0, 0, 0)
    assert (e.index, e.size, e.array, e.line, e.buffer) == (8, 8, "acc[k]", 7, None)
    msg = str(e)
    for part in ("out-of-bounds index 8", "`acc[k]`", "line 7", "float [8]", "valid 0..7",
                 "thread (0,0,0) of block (0,0,0)"):
        assert part in msg, (part, msg)
    assert out.tolist() == [-1.0] * 8   # a failed launch changes nothing
    message, hint = describe_kernel_exception(e)   # the grader's words
    assert message.startswith("out-of-bounds index 8 of array `acc[k]`"), message
    assert hint.startswith("the array has 8 elements, so its indices run 0..7; acc[k] at "
                           "line 7 gives 8, past the last element (7)")


def test_a_write_past_a_static_shared_array_is_caught_by_the_thread_that_made_it():
    kern = RawKernel(_SHARED, "shifted_copy")
    x, out = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    kern((1,), (32,), (x, out, np.int32(0)))
    assert out.tolist() == x.tolist()
    with pytest.raises(KernelFault) as info:   # thread 31 writes tile[32]: `other`'s first
        kern((1,), (32,), (x, out, np.int32(1)))
    e = info.value
    assert e.thread == (31, 0, 0) and e.block == (0, 0, 0)
    assert (e.index, e.size) == (32, 32)
    msg = str(e)
    for part in ("index 32", "__shared__ array `tile[threadIdx.x + shift]`", "line 7",
                 "valid 0..31"):
        assert part in msg, (part, msg)


def test_a_read_before_a_local_array_names_the_negative_index():
    kern = RawKernel(_LOCAL_READ, "last_of")
    x, out = np.array([5, 6, 7, 8], np.int32), np.zeros(4, np.int32)
    kern((1,), (4,), (x, out, np.int32(3)))
    assert out.tolist() == [8, 7, 6, 5]
    with pytest.raises(KernelFault) as info:   # thread 3 reads v[-1]
        kern((1,), (4,), (x, out, np.int32(2)))
    e = info.value
    assert e.thread == (3, 0, 0) and (e.index, e.size) == (-1, 4)
    assert "index -1 of array `v[i - (int)threadIdx.x]`" in str(e) and "int [4]" in str(e)
    assert "gives -1, below 0" in describe_kernel_exception(e)[1]


def test_the_instrumented_build_catches_it_too():
    kern = RawKernel(_SHARED, "shifted_copy")
    x, out = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    kern((1,), (32,), (x, out, np.int32(0)), racecheck=True)
    assert out.tolist() == x.tolist()
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (x, out, np.int32(1)), racecheck=True)
    assert info.value.thread == (31, 0, 0) and "`tile[threadIdx.x + shift]`" in str(info.value)


_SHIFT = r"""
extern "C" __global__ void low_mask(unsigned* out, int n)
{
    out[threadIdx.x] = (1u << (n + (int)threadIdx.x)) - 1u;
}
"""


def test_a_shift_by_the_width_names_its_line_and_amount():
    out = np.zeros(2, np.uint32)
    with pytest.raises(KernelFault) as info:
        RawKernel(_SHIFT, "low_mask")((1,), (2,), (out, np.int32(31)))
    e = info.value
    assert e.thread == (1, 0, 0)
    assert "a shift by 32 of an unsigned int at line 4" in str(e) and "clamps" in str(e)
    assert (e.shift, e.line) == (32, 4)
    message, hint = describe_kernel_exception(e)
    assert message.startswith("an undefined shift: a shift by 32") and "0..31" in hint


_ROW = r"""
extern "C" __global__ void row_read(float* out, int j)
{
    __shared__ float s[4][32];
    s[threadIdx.x / 32][threadIdx.x % 32] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[0][threadIdx.x + j];
}
"""


@pytest.mark.parametrize("checked", [True, False])
def test_an_index_past_a_row_of_a_2d_shared_array_is_caught_checked_or_not(checked):
    kern = RawKernel(_ROW, "row_read", checked=checked)
    out = np.zeros(32, np.float32)
    kern((1,), (32,), (out, np.int32(0)))
    assert out.tolist() == list(range(32))
    with pytest.raises(KernelFault) as info:   # a GPU would read s[1][...]: inside the array
        kern((1,), (32,), (out, np.int32(1)))
    e = info.value
    assert e.thread == (31, 0, 0) and (e.index, e.size) == (32, 32)
    assert "`s[0][threadIdx.x + j]`" in str(e) and "another row" in str(e)
