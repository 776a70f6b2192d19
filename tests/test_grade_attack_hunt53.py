"""The grader attacked from the learner's side (hunt 53).

The CPU executor's builtins scan (cpu/builtins.py) failed open: it skipped the chunks of the
preprocessed source whose line marker named a file of the executor's folder, and a kernel
writes its own line markers (#line, a GNU marker, %:line) naming any file; a kernel's macros
changed what <cuda_bf16.h>, read after them, counted (PAL_NOTE_ATOMIC or sizeof defined as
nothing or 0); and an output without the kernel's marker passed. Each time one thread read a
whole row with right values and not one read counted.

The judge checked every task of the course for every notebook: workbook 00 got a "pass" row
for lesson 02's kv_offset.
"""
import os

import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel, builtins, compiler, count_accesses
from pagedattn_lab.cpu.errors import KernelCompileError


@pytest.fixture(autouse=True)
def _own_cache(own_kernel_cache):
    """Each test a cache of its own (conftest.py: seeded with the runtime, nothing else)."""


SHIM_BF16 = os.path.join(os.path.dirname(compiler.__file__), "shim_bf16.h")
ATOMIC_ROW = r"""
extern "C" __global__ void k(const float *src, float *x, int n) {
    if (threadIdx.x != 0) return;
    for (int i = 0; i < n; ++i)
        x[i] = __uint_as_float(__atomic_load_n((const unsigned *)src + i, __ATOMIC_RELAXED));
}
"""
RENAMED = {
    "#line": f'int before;\n#line 1 "{SHIM_BF16}"\n',
    "GNU line marker entering a header": f'int before;\n# 1 "{SHIM_BF16}" 1 3\n',
    "%:line": f'int before;\n%:line 1 "{SHIM_BF16}"\n',
    "#line continued": f'int before;\n#li\\\nne 1 "{SHIM_BF16}"\n',
}


def _row_read(source):
    """One thread reads the row: (values right, reads counted)."""
    src, x = np.arange(1, 33, dtype=np.float32), np.zeros(32, np.float32)
    counts = count_accesses(RawKernel(source, "k"), (1,), (32,), (src, x, np.int32(32)))
    return bool((x == src).all()), int(counts.global_reads.sum())


@pytest.mark.parametrize("how", sorted(RENAMED))
def test_a_line_marker_of_the_kernel_hides_no_builtin_from_the_scan(how):
    with pytest.raises(KernelCompileError, match=r"uses __atomic_load_n \(in shim_bf16\.h\)"):
        _row_read(RENAMED[how] + ATOMIC_ROW)


# bf16 atomicAdd of zero returns the old bits: one read of the row per call
BF16_ROW = r"""
%s
#include <cuda_bf16.h>
extern "C" __global__ void k(const float *src, float *x, int n) {
    if (threadIdx.x != 0) return;
    for (int i = 0; i < n; ++i) {
        __nv_bfloat162 zero; memset(&zero, 0, 4);
        __nv_bfloat162 old = atomicAdd((__nv_bfloat162 *)(src + i), zero);
        memcpy(x + i, &old, 4);
    }
}
"""
MACROS = {
    "none": "",
    "PAL_NOTE_ATOMIC defined away": "#undef PAL_NOTE_ATOMIC\n#define PAL_NOTE_ATOMIC(a) ((void)0)",
    "sizeof defined as 0": "#define sizeof(x) 0",
    "an overload of the note": 'extern "C++" void __pal_note_atomic(__nv_bfloat162 *, unsigned);',
}


@pytest.mark.parametrize("how", sorted(MACROS))
def test_a_kernels_macros_do_not_change_what_the_bf16_atomics_count(how):
    if how == "an overload of the note":   # declared after the type it takes
        source = BF16_ROW.replace("#include <cuda_bf16.h>", "#include <cuda_bf16.h>\n"
                                  + MACROS[how]) % "" + \
            "void __pal_note_atomic(__nv_bfloat162 *, unsigned) {}\n"
    else:
        source = BF16_ROW % MACROS[how]
    assert _row_read(source) == (True, 32)


def test_the_bf16_atomics_still_add_and_count_once_each():
    """(Their loop now lives in the shim, before the kernel: shim_device.h.)"""
    source = ('#include <cuda_bf16.h>\nextern "C" __global__ void k(__nv_bfloat16 *s, '
              '__nv_bfloat162 *p) { atomicAdd(s, __float2bfloat16(1.0f)); '
              'atomicAdd(p, __floats2bfloat162_rn(1.0f, 2.0f)); }\n')
    s, p = np.zeros(1, np.uint16), np.zeros(2, np.uint16)
    counts = count_accesses(RawKernel(source, "k"), (1,), (32,), (s, p))
    as_float = lambda bits: (bits.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    assert as_float(s).tolist() == [32.0] and as_float(p).tolist() == [32.0, 64.0]
    assert counts.global_reads.sum() == counts.global_writes.sum() == 64


def test_no_marker_of_the_kernel_in_the_preprocessed_output_is_refused(tmp_path):
    """The scan cannot tell the kernel's lines from the shim's: refused, not passed."""
    assert builtins.uncounted_builtins('# 1 "other.cu"\n__atomic_load_n(p, 0);\n',
                                       "k.cu") is None
    tu = tmp_path / "kernel.cpp"
    tu.write_text("\n")
    with pytest.raises(KernelCompileError, match="has no line of its own in the compiler's "
                       "preprocessed output"):   # `true -E`: an output with no line marker
        builtins.refuse_uncounted_builtins(("true",), [], tu, "k.cu", kernel="k",
                                           filename="k.cu")


def test_a_workbook_gets_no_row_for_another_lessons_task(tmp_path):
    """The judge checked every task of the course for every notebook: workbook 00 that
    called check.kv_offset (lesson 02's, handed a right answer) got a
    "kv_offset pass" row of its own. A workbook's judge checks that workbook's tasks only; a
    notebook of no known workbook keeps every task."""
    import nbformat

    from pagedattn_lab import grade
    code = ("from pagedattn_lab import check\n"
            "def kv_offset(slot, kv_head, dim, num_kv_heads, head_dim):\n"
            "    return (slot * num_kv_heads + kv_head) * head_dim + dim\n"
            "check.kv_offset(kv_offset)\n")
    for name in ("00_why_paging.ipynb", "scratch.ipynb"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        (tmp_path / "subs").mkdir(exist_ok=True)
        nbformat.write(nb, tmp_path / "subs" / name)
    table = {(r.notebook, r.task): r for r in grade.grade([tmp_path / "subs"], timeout=60,
                                                          jobs=2, isolation_level="none")}
    assert ("00_why_paging.ipynb", "kv_offset") not in table, table
    note = table[("00_why_paging.ipynb", "(notebook)")].message
    assert "'kv_offset' is not a task of this workbook" in note and "pages_needed" in note
    assert table[("scratch.ipynb", "kv_offset")].result == "pass"


def test_a_change_to_the_refusing_checks_makes_new_cache_entries():
    """The compile cache's key hashed the shim and the runtime but not the Python checks that
    refuse a kernel before it is cached: a kernel built before a check was fixed (hunt 53's
    line marker) was served from the cache, never refused (found by hunt 47). Every module
    whose refuse_* (or inline_assembly) compiler.py calls is in the key."""
    import inspect
    from pathlib import Path

    from pagedattn_lab.cpu import compiler
    refusing = {Path(inspect.getsourcefile(f)).name for name, f in vars(compiler).items()
                if inspect.isfunction(f) and f.__module__.startswith("pagedattn_lab.cpu.")
                and (name.startswith("refuse_") or name in ("inline_assembly",
                                                              "inline_asm_error"))}
    refusing |= {"compiler.py", "source.py"}   # the translation unit and the checks' calls
    assert refusing <= set(compiler.REFUSING), refusing - set(compiler.REFUSING)
