"""The grader's lint refuses a kernel whose preprocessor conditionals test a macro the source
does not define (grading/source_macros.py): `#ifdef __PAGEDATTN_LAB_CPU__` could keep a
`__syncthreads()` on the CPU executor's side only, where the race check runs, and the GPU
would run the kernel without it. Before, such a kernel passed the race check."""
import numpy as np
import pytest

from pagedattn_lab.grading.kernel_lint import lint
from pagedattn_lab.grading.kernel_runner import Kernel
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.source_macros import device_conditional

# A block sum whose barrier only the CPU build compiles: on the GPU thread 0 reads the tile
# before the others wrote it.
_CPU_ONLY_BARRIER = r"""
extern "C" __global__ void block_sum(const float* x, float* out)
{
    __shared__ float tile[64];
    tile[threadIdx.x] = x[threadIdx.x];
#ifdef __PAGEDATTN_LAB_CPU__
    __syncthreads();
#endif
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 64; ++i) s += tile[i];
        out[0] = s;
    }
}
"""


def test_a_barrier_under_the_executors_macro_is_refused_before_anything_runs():
    with pytest.raises(Mismatch) as info:
        Kernel(_CPU_ONLY_BARRIER, "block_sum", "cpu")
    e = info.value
    assert e.message.startswith("the kernel was refused by the grader: #ifdef at line 6 "
                                "tests `__PAGEDATTN_LAB_CPU__`, which the source does not "
                                "define"), e.message
    assert e.got == "__PAGEDATTN_LAB_CPU__" and "one program on both devices" in e.hint
    # without the #ifdef (the barrier for both devices) it builds and runs
    fixed = _CPU_ONLY_BARRIER.replace("#ifdef __PAGEDATTN_LAB_CPU__\n", "").replace(
        "#endif\n", "")
    out = Kernel(fixed, "block_sum", "cpu").launch((1,), (64,), [np.ones(64, np.float32),
                                                                 np.zeros(1, np.float32)],
                                                   outputs=(1,))
    assert out[0].tolist() == [64.0]


@pytest.mark.parametrize("conditional, word", [
    ("#ifndef __CUDA_ARCH__", "__CUDA_ARCH__"),
    ("#if defined(__GNUC__) && TILE > 8", "__GNUC__"),
    ("#if ON_CPU", "ON_CPU"),   # defined nowhere in the source: a compiler may predefine it
    ("#define ON_CPU __x86_64__\n#if ON_CPU", "__x86_64__"),   # through the source's macro
    ("#define HOST(x) (x + __linux__)\n#if HOST(1)", "__linux__"),
    ("#elif __clang__", "__clang__"),
    ("# if \\\n  __PAGEDATTN_LAB_CPU__", "__PAGEDATTN_LAB_CPU__"),   # a continued line
])
def test_a_conditional_on_a_macro_the_source_does_not_define_is_named(conditional, word):
    refused = device_conditional("#define TILE 16\n" + conditional + "\n#endif\n")
    assert refused is not None and refused.got == word, refused and refused.message


@pytest.mark.parametrize("source", [
    "#define TILE 16\n#if TILE > 8 && TILE % 8 == 0\n#endif\n",
    "#define SQUARE(n) ((n) * (n))\n#define TILE 4\n#if SQUARE(TILE) == 16u\n#endif\n",
    "#ifndef TILE\n#define TILE 32\n#endif\n",   # a guard of the source's own macro
    "#if defined(__CUDACC__) && __cplusplus >= 201703L\n#endif\n",   # alike on both
    "// #ifdef __PAGEDATTN_LAB_CPU__ in a comment\n#if 0\n#endif\n",
    'const char *s = "#ifdef __GNUC__";\n',
])
def test_conditionals_that_are_alike_on_both_devices_pass(source):
    assert device_conditional(source) is None


def test_the_lint_runs_it():
    with pytest.raises(Mismatch, match="tests `__CUDA_ARCH__`"):
        lint('#ifdef __CUDA_ARCH__\n#endif\nextern "C" __global__ void k(float* a) {}\n', "k")
