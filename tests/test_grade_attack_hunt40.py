"""The CPU executor's build path and refusals (hunt 40): loads the access counts did not see
(the CPU's own vector intrinsics, the compiler's atomics), a refusal with a misleading
message (a compiler that lists no files read), and the refusals' common form."""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel, count_accesses
from pagedattn_lab.cpu.errors import KernelCompileError


@pytest.fixture(autouse=True)
def _own_cache(own_kernel_cache):
    """Each test a cache of its own (conftest.py: seeded with the runtime, nothing else)."""


KERNEL = 'extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }\n'


def test_a_refusal_carries_every_hint_given():
    refused = KernelCompileError.refused("k", "k.cu", "is refused", "first", "second", lineno=3)
    assert refused.hints == ["first", "second"] and refused.lineno == 3
    assert str(refused) == "kernel source 'k.cu' (kernel 'k') is refused"


def test_inline_mma_ptx_is_refused_with_both_hints():
    source = ('static void f() { asm volatile("mma.sync.aligned.m16n8k16 {}, {}, {}, {};"); }\n'
              + KERNEL.replace("1.0f;", "1.0f; f();"))
    with pytest.raises(KernelCompileError, match="holds inline assembly") as refused:
        RawKernel(source, "k").compile()
    assert len(refused.value.hints) == 2 and "mma_ptx.cuh" in refused.value.hints[1]
    assert refused.value.lineno == 1


def test_a_grading_compiler_that_lists_no_files_read_is_named_in_the_refusal(tmp_path,
                                                                            monkeypatch):
    """A compiler that ignores -MD wrote no list of the files a kernel read: the refusal blamed
    the kernel ("an #include names no file") for what the grader's compiler did."""
    import shlex
    import stat

    from pagedattn_lab.cpu import compiler
    real = shlex.join(compiler.compiler()[0])
    fake = tmp_path / "no-deps-c++"
    fake.write_text('#!/bin/sh\n# drops -MD and -MF FILE\nfor a in "$@"; do shift\n'
                    '  if [ "$skip" = 1 ]; then skip=0; continue; fi\n'
                    '  case "$a" in -MD) continue;; -MF) skip=1; continue;; esac\n'
                    '  set -- "$@" "$a"\ndone\nexec ' + real + ' "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(compiler.GRADING_CXX, str(fake))
    with pytest.raises(KernelCompileError, match="refused by the grader") as refused:
        RawKernel(KERNEL, "k").compile()
    message = str(refused.value)
    assert "include check could not run" in message and str(fake) in message, message
    assert "names no file" not in message


ONE_THREAD_ROW = r"""
%s
extern "C" __global__ void k(const float *src, float *x, int n) {
    if (threadIdx.x != 0) return;
    for (int i = 0; i < n; i += 8) {
        float t[8];
        %s
        for (int j = 0; j < 8; ++j) x[i + j] = t[j];
    }
}
"""
# (AVX2 enabled in these functions only)
_AVX2 = r"""#include <immintrin.h>
__attribute__((target("avx2"))) static void gather8(const float *p, float *t)
{ _mm256_storeu_ps(t, _mm256_i32gather_ps(p, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), 4)); }
__attribute__((target("avx2"))) static void maskload8(const float *p, float *t)
{ _mm256_storeu_ps(t, _mm256_maskload_ps(p, _mm256_set1_epi32(-1))); }
"""
UNCOUNTED_READS = {   # (what the source needs first, eight floats of src + i into t)
    "gather": (_AVX2, "gather8(src + i, t);"),
    "maskload": (_AVX2, "maskload8(src + i, t);"),
    "sse without a target attribute": (
        "#include <xmmintrin.h>\n",
        "for (int j = 0; j < 8; j += 2) { __m128 v = _mm_loadh_pi(_mm_setzero_ps(), "
        "(const __m64 *)(src + i + j)); float w[4]; _mm_storeu_ps(w, v); t[j] = w[2]; "
        "t[j + 1] = w[3]; }"),
    "builtin pasted together": (
        "typedef float v4 __attribute__((vector_size(16)));\n#define B(x) __builtin_ ## x\n",
        "for (int j = 0; j < 8; j += 2) { v4 v = B(ia32_loadhps)(v4{}, (const float "
        "__attribute__((vector_size(8))) *)(src + i + j)); t[j] = v[2]; t[j + 1] = v[3]; }"),
    "atomic load": ("", "for (int j = 0; j < 8; ++j) t[j] = __uint_as_float(__atomic_load_n("
                        "(const unsigned *)src + i + j, __ATOMIC_RELAXED));"),
    "std::atomic": ("#include <atomic>\n", "for (int j = 0; j < 8; ++j) t[j] = "
                    "reinterpret_cast<const std::atomic<float> *>(src + i + j)->load();"),
}


@pytest.mark.parametrize("how", sorted(UNCOUNTED_READS))
def test_a_counted_launch_refuses_reads_the_counts_cannot_see(how):
    """One thread read the whole row through a CPU vector builtin or a compiler atomic: right
    values, and not one read counted (the instrumentation does not see into builtins)."""
    import platform
    if "86" not in platform.machine() and how != "atomic load":
        pytest.skip("x86 intrinsics")
    head, read = UNCOUNTED_READS[how]
    kern = RawKernel(ONE_THREAD_ROW % (head, read), "k")
    src, x = np.arange(1, 33, dtype=np.float32), np.zeros(32, np.float32)
    kern((1,), (32,), (src, x, np.int32(32)))          # an ordinary launch: as before
    np.testing.assert_array_equal(x, src)
    with pytest.raises(KernelCompileError, match=r"uses (__builtin_ia32_|__atomic_)\w+ \(in "
                       r"(k\.cu|\w+\.h|atomic\w*)\)") as refused:
        count_accesses(kern, (1,), (32,), (src, np.zeros(32, np.float32), np.int32(32)))
    assert "atomicAdd" in refused.value.hints[0]


def test_the_shims_atomics_still_count():
    """The executor's own headers use the compiler's atomics (<cuda_bf16.h>'s atomicAdd):
    not refused, and counted once each."""
    source = ('#include <cuda_bf16.h>\nextern "C" __global__ void k(float *x) { atomicAdd(x, '
              '1.0f); __threadfence(); atomicMax((int *)x + 1, 3); }\n')
    x = np.zeros(2, np.float32)
    counts = count_accesses(RawKernel(source, "k"), (1,), (4,), (x,))
    assert x[0] == 4 and counts.global_writes.sum() == 8
