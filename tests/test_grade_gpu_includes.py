"""Under the grader, a kernel built on the GPU includes only the CUDA headers.

NVRTC reads any file an #include names, and its log (which the grader shows the learner) echoes
the lines of a file it cannot compile; the CPU build's check of the files its compiler read
(tests/test_grade_attack_hunt36.py) has no NVRTC counterpart. So on the GPU the grader reads the
directives themselves, before anything compiles. These run without a GPU: the refusal comes
before CuPy is asked for anything."""
import pytest

from pagedattn_lab.grading import kernel_runner
from pagedattn_lab.grading.kernel_lint import refuse_unlisted_headers
from pagedattn_lab.grading.kernel_runner import Kernel
from pagedattn_lab.grading.report import Mismatch

KERNEL = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1.0f; }\n'

REFUSED = [
    '#include "/etc/passwd"',
    "#include </etc/passwd>",
    "#include <../include/mma.h>",
    "#include <cmath>",
    "#include <bits/stdc++.h>",
    '  #  include   "a.h"',
    '# /* a comment */ include "a.h"',
    '#\\\ninclude "a.h"',                                     # a continued line
    '%:include "a.h"',                                       # the digraph of #
    '#define F "/etc/passwd"\n#include F',                   # computed
    "#include_next <mma.h>",
    "#import <mma.h>",
    '#embed "a.h"',
    '/* one\n   two */ #include "a.h"',
    # a comment's start inside a literal hides nothing from the preprocessor
    'const char* s = "/*";\n#include "a.h"\n// */',
    "int n = 1'0 + '/*';\n#include \"a.h\"\n/* */",          # a digit separator
    'const char* r = R"x(")x";\n#include "a.h"',             # a quote inside a raw string
    "#include <mma.h> // fine\n#include <stdint.h>",
]

ALLOWED = [
    "#include <mma.h>\n#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include <cuda_fp8.h>",
    '// #include "a.h"',
    '/* #include "a.h" */',
    "/*\n#include \"a.h\"\n*/",
    'const char* s = "#include \\"a.h\\"";',
    "#include <mma.h> /* the fragments */",
]


@pytest.fixture
def graded(monkeypatch):
    monkeypatch.setenv("PAGEDATTN_LAB_GRADING_CXX", "g++")


@pytest.mark.parametrize("include", REFUSED)
def test_under_the_grader_a_gpu_kernel_includes_only_cuda_headers(graded, include):
    with pytest.raises(Mismatch, match="refused by the grader") as refused:
        refuse_unlisted_headers(include + "\n" + KERNEL)
    assert "<mma.h>" in refused.value.hint   # the hint lists what may be included


@pytest.mark.parametrize("include", ALLOWED)
def test_the_cuda_headers_comments_and_literals_pass(graded, include):
    refuse_unlisted_headers(include + "\n" + KERNEL)


def test_outside_the_grader_nothing_is_refused(monkeypatch):
    monkeypatch.delenv("PAGEDATTN_LAB_GRADING_CXX", raising=False)
    refuse_unlisted_headers('#include "my_helpers.cuh"\n' + KERNEL)


def test_the_gpu_kernel_is_refused_before_cupy_compiles(graded, monkeypatch):
    """Kernel (the checks' and the kernel host's) refuses on the GPU before building."""
    monkeypatch.setattr(kernel_runner, "kernel_device", lambda device: "gpu")

    def no_build(*args, **kwargs):
        raise AssertionError("RawKernel was built for a refused kernel")
    monkeypatch.setattr("pagedattn_lab.rawkernel.RawKernel", no_build)
    with pytest.raises(Mismatch, match='#include "/etc/passwd"'):
        Kernel('#include "/etc/passwd"\n' + KERNEL, "k", "gpu")
