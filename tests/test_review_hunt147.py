"""Review of hunts 140 to 145 (hunt 147): what those changes let through or refused wrongly."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading.submissions import not_graded
from tests.test_grade_macros_hunt140 import _CPU_ONLY_BARRIER


# -- submissions: a folder the grader cannot open gets a row ---------------------------------
# find_notebooks walked the folders with rglob, which passes over a folder it cannot open (its
# permissions, where the grader does not run as root) without a word: its notebooks had no
# row, against the README's "every file in a folder given has a row". (Links to folders and
# dangling links: hunt 152, test_docs_hunt152.)
def _walked(tmp_path, monkeypatch):
    sub = tmp_path / "submissions"
    for name in ("bob", "dave"):
        (sub / name).mkdir(parents=True)
        (sub / name / "01_page_table.ipynb").write_text("{}")
    scandir = os.scandir   # (the tests run as root, whom chmod 000 does not stop)

    def refuse_dave(path="."):
        if Path(path) == sub / "dave":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refuse_dave)
    others = []
    found = grade.find_notebooks([sub], others)
    return [name for _, name in found], {name: not_graded(path, name).message
                                         for path, name in others}


def test_a_folder_the_grader_cannot_open_gets_a_row(tmp_path, monkeypatch):
    found, rows = _walked(tmp_path, monkeypatch)
    assert found == ["bob/01_page_table.ipynb"]
    assert "a folder the grader could not open" in rows["dave"], rows


def test_the_folder_given_unreadable_is_the_runs_error_naming_it(tmp_path, monkeypatch):
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(path))) if Path(path) == tmp_path
        else scandir(path))
    with pytest.raises(RuntimeError, match=f"^{re.escape(str(tmp_path))}: the grader could not "
                                           "open this folder"):
        grade.find_notebooks([tmp_path])


# -- the grader's lint: a guard that defines the executor's own macro on the GPU only ----------
# A name the source #defines counted as its own wherever it was tested: under `#ifndef
# __PAGEDATTN_LAB_CPU__` / `#define __PAGEDATTN_LAB_CPU__ 0` (defined on the GPU only: the
# executor's shim defines it 1), `#if __PAGEDATTN_LAB_CPU__` kept the barrier on the CPU side,
# and the kernel passed the race check that the GPU would fail.
_GUARDED_BARRIER = ("#ifndef __PAGEDATTN_LAB_CPU__\n#define __PAGEDATTN_LAB_CPU__ 0\n#endif\n"
                    + _CPU_ONLY_BARRIER.replace("#ifdef __PAGEDATTN_LAB_CPU__",
                                                "#if __PAGEDATTN_LAB_CPU__"))


@pytest.mark.parametrize("source, word", [
    (_GUARDED_BARRIER, "__PAGEDATTN_LAB_CPU__"),
    # its guard's own body: a macro of the source's defined on the GPU only
    ("#ifndef __PAGEDATTN_LAB_CPU__\n#define __PAGEDATTN_LAB_CPU__\n#define ON_GPU 1\n#endif\n"
     "#ifdef ON_GPU\n#endif\n", "__PAGEDATTN_LAB_CPU__"),
    ("#ifndef __CUDA_ARCH__\n#define __CUDA_ARCH__ 0\n#endif\n#if __CUDA_ARCH__ >= 800\n#endif\n",
     "__CUDA_ARCH__"),
])
def test_a_compilers_name_the_source_defines_after_testing_it_is_refused(source, word):
    from pagedattn_lab.grading.source_macros import device_conditional
    refused = device_conditional(source)
    assert refused is not None and refused.got == word, refused and refused.message
    assert f"tests `{word}`, which a compiler defines before the source does" in refused.message


@pytest.mark.parametrize("source", [
    "#ifndef PAGED_KERNEL_H\n#define PAGED_KERNEL_H\n#pragma once\n#pragma unroll\n#endif\n",
    "#define __TILE__ 16\n#if __TILE__ > 8\n#endif\n",   # defined before its test: alike
    "#define TILE 16\n#ifndef TILE\n#define TILE 8\n#endif\n#if 0\n#elif TILE == 16\n#endif\n",
    # C++'s #if literals and alternative operators: no macros (they were refused as undefined)
    "#if false\n#elif true\n#endif\n",
    "#define TILE 16\n#if TILE > 8 and not (TILE % 8) or TILE == 4\n#endif\n",
])
def test_guards_and_names_defined_before_their_test_pass(source):
    from pagedattn_lab.grading.source_macros import device_conditional
    refused = device_conditional(source)
    assert refused is None, refused.message


# -- the CPU executor: a read past an array, deferred, then a bad shift -------------------------
# ubsan.cpp defers a read through a pointer past an array to the thread's next barrier or bad
# access; the index check reported the earlier read first, the shift check did not: a read of
# the neighbouring variable whose value became a shift amount was reported as the shift alone.
_READ_THEN_SHIFT = r"""
extern "C" __global__ void read_then_shift(const float* x, int* out, int i, int s)
{
    float a[4];
    float b[4];
    for (int j = 0; j < 4; ++j) { a[j] = x[j]; b[j] = 2.0f * x[j]; }
    float *p = a;
    const int r = (int)p[i];
    out[threadIdx.x] = (int)b[3] + (1 << (r + s));
}
"""


def test_a_deferred_read_is_reported_before_a_later_bad_shift():
    from pagedattn_lab.cpu import KernelFault, RawKernel
    from pagedattn_lab.cpu.compiler import compiler
    if compiler()[2]:
        pytest.skip("GCC's object-size check (Clang builds go without it)")
    kern = RawKernel(_READ_THEN_SHIFT, "read_then_shift")
    x, out = np.zeros(4, np.float32), np.zeros(2, np.int32)
    kern((1,), (2,), (x, out, np.int32(3), np.int32(4)))
    assert out.tolist() == [16, 16]
    with pytest.raises(KernelFault, match="a shift by 40 of an int at line 9"):
        kern((1,), (2,), (x, out, np.int32(3), np.int32(40)))   # the shift alone
    with pytest.raises(KernelFault) as info:
        kern((1,), (2,), (x, out, np.int32(5), np.int32(40)))   # p[5], then the shift
    e = info.value
    assert (e.thread, e.line, e.array, e.access) == ((0, 0, 0), 8, "p[i]", "read"), str(e)
    assert "out-of-bounds read of a float through `p[i]` past the end of a local array" \
        in str(e), str(e)


# -- the judge's heap bound (RLIMIT_DATA) and OpenBLAS's threads --------------------------------
# The judge inherited the grader's environment: at NumPy's import OpenBLAS started a thread per
# core (up to its 64), each with a 32 MiB buffer and an 8 MiB stack, private writable memory
# that RLIMIT_DATA counts (measured here: VmData 40 MiB more per thread). On a grader of 64
# cores, 2.5 GiB of Limits.judge_mb's 8 GiB was gone before a check ran. The sandboxes had one
# thread already (isolation.runner_env); the judge now has the same.
def test_a_judge_runs_blas_on_one_thread(tmp_path, monkeypatch):
    import socket
    import time

    threads = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    for key in threads:
        monkeypatch.setenv(key, "64")   # the grader's own setting, whatever it is
    judge_end, box_end = socket.socketpair()
    judge_kernel_end, kernel_end = socket.socketpair()
    judge = grade._start_judge(judge_end.fileno(), judge_kernel_end.fileno(), tmp_path,
                               salt=1, tasks=["visible_keys"], memory_mb=1024)
    try:
        environ = b""
        for _ in range(100):   # (empty for a moment after the exec)
            environ = Path(f"/proc/{judge.pid}/environ").read_bytes()
            if environ:
                break
            time.sleep(0.05)
        environ = environ.split(b"\0")
    finally:
        for end in (judge_end, judge_kernel_end, box_end, kernel_end):
            end.close()
        grade._judge_report(judge, tmp_path)
    for key in threads:
        assert f"{key}=1".encode() in environ, key


# -- the simt plan's int32 refusal: num_splits offered only where shorter partitions help ------
# (the tensor-core kernels' own bounds: tests/test_int32_bounds_hunt150.py)
def test_the_simt_refusal_offers_num_splits_only_where_shorter_partitions_help():
    from pagedattn_lab.decode_simt_plan import check_token_range
    with pytest.raises(ValueError) as info:   # not split: no num_splits brings it under
        check_token_range(np.array([2**31 - 1]), 2**31 - 1)
    assert "last load step's end passes 2^31 - 1 (at most 2147481600 tokens)" in \
        str(info.value) and "num_splits" not in str(info.value), str(info.value)
    with pytest.raises(ValueError, match=r"a partition's end passes .* num_splits cuts them "
                                         r"shorter\)$"):
        check_token_range(np.array([1_500_000_000]), 750_000_000)


# -- the executor's asm hint against the grader's lint -------------------------------------------
# The CPU executor's hint for inline PTX said "guard it with #ifndef __PAGEDATTN_LAB_CPU__";
# the grader (hunt 140) refuses exactly that kernel. A learner following the hint in a
# workbook met the refusal next; the hint now says where it does not hold.
def test_the_asm_hint_says_a_graded_kernel_cannot_guard_it():
    from pagedattn_lab.cpu.compile_errors import inline_asm_error
    from pagedattn_lab.grading.source_macros import device_conditional
    guarded = ('#ifndef __PAGEDATTN_LAB_CPU__\nasm("nop;");\n#endif\n'
               'extern "C" __global__ void k(float* a) {}\n')
    assert device_conditional(guarded).got == "__PAGEDATTN_LAB_CPU__"   # the grader's word
    hint = " ".join(inline_asm_error("k", "k.cu", guarded).hints)
    assert "#ifndef __PAGEDATTN_LAB_CPU__" in hint and "not in a graded kernel" in hint, hint
