"""Review of hunts 99 to 102 and loaded_code.py (hunt 104).

- An index past the rows of a 2-D array (`s[5][0]` of a `float s[4][32]`) was reported against
  the last dimension ("valid 0..31", "gives 5, past the last element (31)"): the check is
  against the first one (4 rows).
- `importlib.reload` of an edited package file made the objects built before it (their code
  is the first import's) look like the learner's code to the own-work check.
- The shift hint said 0..31 and `n >= 32 ? ~0u : ...` for a 64-bit value shifted by 64, and
  spoke of a mask where the amount was negative.
- The compiler's column counts bytes: a non-ASCII character before the subscript on its line
  lost the array's name.
- A variable-length array's type ("float [*]") was reported as one with no elements (such an
  array is now refused when the kernel is built: hunt 113), and an array of none got the
  range 0..-1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pagedattn_lab
from pagedattn_lab.cpu import KernelCompileError, KernelFault, RawKernel
from pagedattn_lab.grading.faults import describe_kernel_exception

_ROWS = r"""
extern "C" __global__ void pick_row(float* out, int r)
{
    __shared__ float s[4][32];
    s[threadIdx.x / 32][threadIdx.x % 32] = (float)threadIdx.x;
    __syncthreads();
    if (threadIdx.x < 32) out[threadIdx.x] = s[r][threadIdx.x];
}
"""


def test_an_index_past_the_rows_of_a_2d_array_names_the_rows_not_a_row():
    kern = RawKernel(_ROWS, "pick_row")
    out = np.zeros(32, np.float32)
    kern((1,), (128,), (out, np.int32(3)))
    assert out.tolist() == list(range(96, 128))
    with pytest.raises(KernelFault) as info:
        kern((1,), (128,), (out, np.int32(5)))
    e = info.value
    assert (e.index, e.size, e.array) == (5, 4, "s[r]")
    assert "float [4][32]: its first index valid 0..3" in str(e), str(e)
    hint = describe_kernel_exception(e)[1]
    assert "4 elements, so its indices run 0..3" in hint and "past the last element (3)" in hint
    assert hint.startswith("that index's dimension of the array has"), hint


def test_an_index_past_a_row_hints_at_the_row_not_the_array():
    src = _ROWS.replace("s[r][threadIdx.x]", "s[0][threadIdx.x + r]")
    with pytest.raises(KernelFault) as info:
        RawKernel(src, "pick_row")((1,), (128,), (np.zeros(32, np.float32), np.int32(1)))
    e = info.value
    assert (e.index, e.size) == (32, 32) and "(float [32]: valid 0..31)" in str(e)
    assert describe_kernel_exception(e)[1].startswith(
        "that index's dimension of the array has 32 elements")


_RELOAD = """
import importlib
from pathlib import Path
import pagedattn_lab.paging as paging
from pagedattn_lab.grading.own_watch import package_code
before = paging.BlockAllocator.allocate.__code__   # an allocator made before the reload
path = Path(paging.__file__)
assert path.is_relative_to(Path.cwd()), path   # the copy, never the checkout's own file
path.write_text("# a line added above everything\\n" + path.read_text())
importlib.reload(paging)
print(package_code(before, paging.__dict__),
      package_code(paging.BlockAllocator.allocate.__code__, paging.__dict__))
"""


def test_code_of_the_import_before_a_reload_of_an_edited_file_is_still_the_package(tmp_path):
    shutil.copytree(Path(pagedattn_lab.__file__).parent, tmp_path / "pagedattn_lab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    done = subprocess.run([sys.executable, "-c", _RELOAD], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


_MASK64 = r"""
extern "C" __global__ void low_mask64(unsigned long long* out, int n)
{
    out[threadIdx.x] = (1ull << (n + (int)threadIdx.x)) - 1ull;
}
"""


def test_a_64_bit_shift_by_64_hints_at_0_to_63_not_an_int_s_0_to_31():
    out = np.zeros(2, np.uint64)
    with pytest.raises(KernelFault) as info:
        RawKernel(_MASK64, "low_mask64")((1,), (2,), (out, np.int32(63)))
    e = info.value
    assert (e.shift, e.bits, e.thread) == (64, 64, (1, 0, 0))
    hint = describe_kernel_exception(e)[1]
    assert "0..63" in hint and "`n >= 64 ? ~0ull : (1ull << n) - 1`" in hint, hint
    assert "31" not in hint and "~0u " not in hint


def test_a_shift_by_a_negative_amount_hints_at_the_sign_not_the_width():
    out = np.zeros(2, np.uint32)
    src = _MASK64.replace("unsigned long long*", "unsigned*").replace("1ull", "1u")
    with pytest.raises(KernelFault) as info:
        RawKernel(src, "low_mask64")((1,), (2,), (out, np.int32(-1)))
    e = info.value
    assert (e.shift, e.bits, e.thread) == (-1, 32, (0, 0, 0))
    assert "of an unsigned int at line 4" in str(e), str(e)
    hint = describe_kernel_exception(e)[1]
    assert "0..31" in hint and "negative (-1)" in hint and "mask" not in hint, hint


def test_the_array_is_named_after_a_non_ascii_character_on_its_line():
    """The compiler gives the subscript's column in bytes: `é` (two bytes in UTF-8) before it
    moved the name's lookup one character past the bracket, and the message said "an
    array"."""
    src = ('extern "C" __global__ void last(float* out, int n)\n{\n    float acc[8];\n'
           '    for (int k = 0; k < 8; ++k) acc[k] = 1.0f;\n'
           '    /* déjà vu */ out[threadIdx.x] = acc[n];\n}\n')
    with pytest.raises(KernelFault) as info:
        RawKernel(src, "last")((1,), (2,), (np.zeros(2, np.float32), np.int32(9)))
    assert info.value.array == "acc[n]" and "array `acc[n]` at line 5" in str(info.value)


_VLA = r"""
extern "C" __global__ void vla(float* out, int n, int i)
{
    float acc[n];
    for (int k = 0; k < n; ++k) acc[k] = 1.0f;
    out[threadIdx.x] = acc[i];
}
"""


def test_a_variable_length_array_is_refused_before_it_runs():
    """GCC names a variable-length array's type "float [*]": its size is not in the type, and
    the message said "it has no elements" of an array of 4. Since hunt 113 such an array is
    refused when the kernel is built, at its line, as NVRTC refuses it: no index past it runs."""
    with pytest.raises(KernelCompileError) as info:
        RawKernel(_VLA, "vla")((1,), (2,), (np.zeros(2, np.float32), np.int32(4), np.int32(6)))
    assert info.value.lineno == 4 and "variable length array" in str(info.value)


def test_the_hint_for_an_array_of_no_elements_gives_no_range_0_to_minus_1():
    e = KernelFault("kernel 'k': out-of-bounds index 0 of array `z[0]` at line 3 (float [0]: "
                    "it has no elements).", region="local or shared array", index=0, size=0,
                    array="z[0]", array_type="float [0]", line=3)
    hint = describe_kernel_exception(e)[1]
    assert "-1" not in hint and hint == "check z[0] at line 3: the index is past the array."
