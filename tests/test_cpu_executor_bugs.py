"""The CPU executor reports a kernel's bugs: planted ones, each caught with the right argument,
index, thread and block named, and a process that survives all of them (the last test here,
run after the others, proves it). The kernels against NumPy: tests/test_cpu_executor.py.
"""
import mmap
import time

import numpy as np
import pytest

from pagedattn_lab.cpu import (CompilerNotFoundError, KernelAssertionError, KernelCompileError,
                               KernelDeadlock, KernelFault, KernelTimeout, RawKernel,
                               WarpSyncError)
from tests.test_cpu_executor import f32, kern


BUGS = "bugs.cu"


def test_off_by_one_read_names_buffer_index_and_thread():
    n = 1000
    a, out = np.ones(n, np.float32), np.zeros(n, np.float32)
    with pytest.raises(KernelFault) as info:
        kern(BUGS, "read_past_end")(8, 128, (a, out, np.int32(n)))
    e = info.value
    assert (e.buffer, e.arg_index, e.index, e.size, e.access) == ("a", 0, n, n, "read")
    assert (e.thread, e.block) == ((n % 128, 0, 0), (n // 128, 0, 0))
    assert e.kernel == "read_past_end"
    msg = str(e)
    assert "'a'" in msg and "element 1000" in msg and "1000 elements" in msg
    assert "thread (104,0,0)" in msg and "block (7,0,0)" in msg


def test_write_past_end():
    n = 1000
    a, out = np.ones(n, np.float32), np.zeros(n, np.float32)
    with pytest.raises(KernelFault) as info:
        kern(BUGS, "write_past_end")(8, 128, (a, out, np.int32(n)))
    e = info.value
    assert (e.buffer, e.index, e.size, e.access) == ("out", n, n, "write")
    assert (e.thread, e.block) == (((n - 1) % 128, 0, 0), ((n - 1) // 128, 0, 0))
    assert (out == 0).all()   # a failed launch leaves the arrays as they were


_SHIFTED = r"""
extern "C" __global__ void read_at(const float* a, float* out, int shift)
{
    out[threadIdx.x] = a[(int)threadIdx.x + shift];
}
extern "C" __global__ void write_at(const float* a, float* out, int shift)
{
    out[(int)threadIdx.x + shift] = a[threadIdx.x];
}
"""


PAGE = mmap.PAGESIZE


@pytest.mark.parametrize("n", [5, 1000, PAGE // 4])   # slack before the array: most of a page, none
def test_a_read_just_before_an_array_is_nan_not_zero(n):
    """No guard page can sit less than a page before an array; what is there reads as NaN,
    so a kernel that reads element -1 cannot pass on a plausible 0."""
    a, out = np.arange(1, n + 1, dtype=np.float32), np.zeros(2, np.float32)
    RawKernel(_SHIFTED, "read_at")(1, 2, (a, out, np.int32(0)))
    assert (out == [1, 2]).all()
    try:
        RawKernel(_SHIFTED, "read_at")(1, 2, (a, out, np.int32(-1)))
    except KernelFault as e:   # an array of whole pages: the guard itself faults
        assert (e.buffer, e.index, e.access) == ("a", -1, "read") and n * 4 % PAGE == 0
    else:
        assert np.isnan(out[0]) and out[1] == 1 and n * 4 % PAGE != 0


@pytest.mark.parametrize("n", [5, 1000])
def test_a_write_just_before_an_array_is_reported(n):
    a, out = np.ones(n, np.float32), np.zeros(n, np.float32)
    with pytest.raises(KernelFault, match=r"'out'.*element -1, before the array's start") as info:
        RawKernel(_SHIFTED, "write_at")(1, 2, (a, out, np.int32(-1)))
    e = info.value
    assert (e.buffer, e.arg_index, e.index, e.size, e.access) == ("out", 1, -1, n, "write")
    assert (out == 0).all()   # a failed launch leaves the arrays as they were


def test_a_write_before_an_array_passed_twice_names_the_writable_one():
    a = np.ones(5, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(_SHIFTED, "write_at")(1, 1, (a, a, np.int32(-1)))
    assert (info.value.buffer, info.value.arg_index) == ("out", 1)


def test_barrier_skipped_by_half_the_block_is_a_deadlock():
    a, out = np.ones(128, np.float32), np.zeros(128, np.float32)
    with pytest.raises(KernelDeadlock) as info:
        kern(BUGS, "early_return")(1, 128, (a, out, np.int32(64)))
    e = info.value
    assert e.num_waiting == 64 and e.block == (0, 0, 0)
    assert e.exited_threads == [(i, 0, 0) for i in range(64, 128)]
    assert "threads 0..63 wait at __syncthreads() (line 23)" in str(e)
    assert "threads 64..127 already exited" in str(e)


def test_full_mask_shuffle_in_a_partial_warp():
    a, out = np.ones(48, np.float32), np.zeros(48, np.float32)
    with pytest.raises(WarpSyncError) as info:
        kern(BUGS, "partial_warp")(1, 48, (a, out))
    assert info.value.bad_lanes == list(range(16, 32)) and info.value.warp == 1
    assert "lanes 16..31" in str(info.value) and "do not exist" in str(info.value)


def test_shuffle_naming_lanes_that_returned():
    a, out = np.ones(32, np.float32), np.zeros(32, np.float32)
    with pytest.raises(WarpSyncError, match=r"lanes 16\.\.31 that already exited") as info:
        kern(BUGS, "shuffle_after_return")(1, 32, (a, out))
    assert info.value.bad_lanes == list(range(16, 32))


def test_python_int_scalar_is_refused():
    a, out = np.ones(10, np.float32), np.zeros(10, np.float32)
    with pytest.raises(TypeError, match=r"argument 2 of 3 \('n', int\).*np\.int32\(10\)"):
        kern(BUGS, "read_past_end")(1, 32, (a, out, 10))


def test_float64_array_for_float_pointer_is_refused():
    with pytest.raises(TypeError, match=r"argument 0 of 3 \('a', const float\*\): expected a "
                                        r"float32 array, got a float64"):
        kern(BUGS, "read_past_end")(1, 32, (np.ones(10), np.zeros(10, np.float32), np.int32(10)))


def test_endless_loop_times_out():
    spin = kern(BUGS, "spin").compile()   # (an empty cache's build, 2 s here, is not timed)
    t0 = time.perf_counter()
    with pytest.raises(KernelTimeout) as info:
        spin(1, 32, (np.zeros(1, np.int32),), timeout=0.5)
    assert time.perf_counter() - t0 < 5
    assert info.value.thread == (0, 0, 0) and "did not finish within 0.5 s" in str(info.value)
    assert "An endless loop?" in str(info.value) and "own kernels" not in str(info.value)


def test_the_packages_kernels_get_an_hour_and_a_timeout_that_blames_the_size(monkeypatch):
    """A learner's kernel gets 30 s, where a loop is the likely cause; the course's own kernels
    are tested to finish, and a large problem may run for minutes on the CPU executor."""
    from pagedattn_lab.cpu.kernel import DEFAULT_TIMEOUT, TRUSTED_TIMEOUT, _env_timeout
    from pagedattn_lab.kernels import kernel as package_kernel
    monkeypatch.delenv("PAGEDATTN_LAB_CPU_TIMEOUT", raising=False)
    assert package_kernel("decode", "paged_decode").cpu.trusted
    assert not kern(BUGS, "spin").trusted
    assert (_env_timeout(), _env_timeout(TRUSTED_TIMEOUT)) == (DEFAULT_TIMEOUT, 3600.0)
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TIMEOUT", "45")   # a limit set by hand holds for all
    assert _env_timeout(TRUSTED_TIMEOUT) == 45.0
    spin = kern(BUGS, "spin", trusted=True)
    with pytest.raises(KernelTimeout) as info:
        spin(1, 32, (np.zeros(1, np.int32),), timeout=0.5)
    assert "course's own kernels" in str(info.value) and "endless loop" not in str(info.value)
    # the knob a caller of paged_attention_prefill & co. has: they take no timeout=
    assert "raise the limit with PAGEDATTN_LAB_CPU_TIMEOUT" in str(info.value)


def test_stack_overflow_is_reported():
    out = np.zeros(4, np.float32)
    with pytest.raises(KernelFault, match="stack overflow") as info:
        kern(BUGS, "big_local")(1, 4, (out, np.int32(1 << 20)))
    assert info.value.region == "stack"


def test_dynamic_shared_memory_without_shared_mem():
    with pytest.raises(KernelFault, match=r"shared_mem=0.*pass shared_mem=") as info:
        kern(BUGS, "needs_smem")(1, 32, (np.zeros(32, np.float32),))
    assert info.value.region == "dynamic shared memory" and info.value.thread == (0, 0, 0)


def test_device_assert():
    x = np.ones(100, np.int32)
    x[70] = -5
    with pytest.raises(KernelAssertionError,
                       match=r"bugs\.cu:\d+: asserts: Assertion `x\[i\] >= 0`") as info:
        kern(BUGS, "asserts")(2, 64, (x, np.int32(100)))
    assert (info.value.thread, info.value.block) == ((6, 0, 0), (1, 0, 0))


def test_infinity_compile_error_has_hint_and_kernel_line():
    with pytest.raises(KernelCompileError) as info:
        kern("infinity.cu", "running_max").compile()
    e = info.value
    assert e.lineno == 4 and e.filename == "infinity.cu"
    assert "infinity.cu:4:" in str(e) and "float m = -INFINITY;" in str(e)
    assert "NVRTC does not define INFINITY either" in str(e)
    assert "__int_as_float(0xff800000)" in str(e)


@pytest.mark.parametrize("name, hinted", [("div", True), ("rand", True), ("halve", False)])
def test_a_kernel_named_like_a_c_library_function_gets_a_rename_hint(name, hinted):
    source = (f'extern "C" __global__ void {name}(float *x, int n)\n'
              '{ int i = threadIdx.x; if (i < n) x[i] = x[i] * 0.5f + undeclared; }\n')
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, name, filename=f"{name}.cu").compile()
    hint = f"`{name}` is also a C library function"
    assert (hint in str(info.value)) == hinted, str(info.value)
    assert "undeclared" in str(info.value)


def test_two_declarations_of_the_kernels_own_function_get_no_c_library_hint():
    """gcc reports them in the C library clash's words; the previous declaration is the
    kernel's own, so renaming is not the fix."""
    source = ('extern "C" __device__ float scale_one(float x);\n'
              'extern "C" __device__ int scale_one(int x) { return x; }\n'
              'extern "C" __global__ void scale(float *x, int n)\n'
              '{ int i = threadIdx.x; if (i < n) x[i] = scale_one(x[i]); }\n')
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "scale", filename="scale.cu").compile()
    assert "scale_one" in str(info.value) and "C library" not in str(info.value)


def test_compile_error_reports_kernel_line():
    with pytest.raises(KernelCompileError) as info:
        kern("syntax_error.cu", "scale").compile()
    assert info.value.lineno == 6 and "syntax_error.cu:6:" in str(info.value)
    assert "scael" in str(info.value)


def test_missing_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-pagedattn")
    with pytest.raises(CompilerNotFoundError, match="apt install g\\+\\+|xcode-select"):
        RawKernel("extern \"C\" __global__ void k() {}\n// unique 1", "k").compile()


def test_process_survived_and_still_works(rng):
    n = 1000
    a, b, c = f32(rng, n), f32(rng, n), np.full(n, np.nan, np.float32)
    kern("vector_add.cu", "vector_add")((8,), (128,), (a, b, c, np.int32(n)), workers=2)
    np.testing.assert_array_equal(c, a + b)
