"""kernels/mma_ptx.cuh's failures: a planted bug that the layout tests catch, a lane that skips
a warp-collective call, raw PTX that the CPU cannot run, and the GPU branch that nvcc must
accept (the layout tests themselves are in test_mma_ptx.py)."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, WarpSyncError
from pagedattn_lab.cpu import RawKernel as CpuRawKernel
from pagedattn_lab.rawkernel import RawKernel

from .test_mma_ptx import (VARIANTS, call_line, i32, kern, movmatrix_case, movmatrix_expected,
                           source, u32)


@pytest.mark.parametrize("bug", ["{ return __pal_movmatrix_trans(line, (x >> 16) | (x << 16)); }",
                                 "{ (void)line; return x; }"], ids=["halves", "no_transpose"])
def test_the_movmatrix_test_fails_on_a_planted_bug(bug):
    """A movmatrix that swapped the halves of its input, or did not transpose, fails the
    comparison with the table (the probe built with that bug planted in the header)."""
    good = "{ return __pal_movmatrix_trans(line, x); }"
    assert good in source()
    buggy = RawKernel(source().replace(good, bug, 1), "movmatrix_probe", filename="mma_ptx.cu")
    mats, x = movmatrix_case()
    out = np.zeros(x.size, u32)
    buggy(1, x.size, (x, out))
    assert (out != movmatrix_expected(mats)).sum() >= 32


@pytest.mark.parametrize("which, name", [(0, "ldmatrix_x4"), (1, "mma_m16n8k16"),
                                         (2, "movmatrix_trans")])
def test_a_lane_that_skips_the_call_is_reported(which, name):
    out = np.zeros(32, u32)
    with pytest.raises(WarpSyncError) as info:
        kern("lane_skips").cpu(1, 32, (out, i32(5), i32(which)))
    e = info.value
    assert e.bad_lanes == [5] and e.warp == 0
    assert name in str(e) and "all 32 lanes" in str(e) and "already exited" in str(e)
    call = ["ldmatrix_x4(", "if (which == 1) mma_m16n8k16(", "movmatrix_trans("][which]
    assert e.lines == [call_line("lane_skips", call)]
    kern("lane_skips").cpu(1, 32, (out, i32(-1), i32(which)))   # everyone calls: fine


def test_a_warp_with_missing_lanes_is_reported():
    with pytest.raises(WarpSyncError, match="do not exist") as info:
        kern("lane_skips").cpu(1, 40, (np.zeros(40, u32), i32(-1), i32(0)))
    assert info.value.bad_lanes == list(range(8, 32))


@pytest.mark.parametrize("constraint", ["f", "r"])
def test_raw_mma_asm_is_refused_with_a_hint_to_the_header(constraint):
    """Raw PTX still does not run on the CPU ("f" operands fail in the C++ compiler, "r"
    ones in the assembler): the error points to mma_ptx.cuh."""
    src = ('extern "C" __global__ void raw(float* d) {\n'
           '    unsigned a = 0u;\n'
           '    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0}, {%1}, {%1}, '
           f'{{%1}};" : "={constraint}"(d[0]) : "r"(a));\n}}\n')
    with pytest.raises(KernelCompileError) as info:
        CpuRawKernel(src, "raw", filename="raw.cu").compile()
    assert info.value.lineno == 3 and any("mma_ptx.cuh" in h for h in info.value.hints)


def test_the_gpu_branch_compiles(tmp_path):
    """One inline-asm instruction per function, for sm_90 (nvcc stands in for NVRTC; skipped
    without a CUDA toolkit)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).is_file():
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    (tmp_path / "probe.cu").write_text(source())
    r = subprocess.run([nvcc, "-arch=sm_90", "-ptx", "-std=c++17", "probe.cu", "-o", "out.ptx"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ptx = (tmp_path / "out.ptx").read_text()
    for mark in ["mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                 "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                 "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32",
                 "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32",
                 "cvt.rn.f16x2.f32", "cvt.rn.bf16x2.f32",
                 "movmatrix.sync.aligned.m8n8.trans.b16"] + [
            f"ldmatrix.sync.aligned.m8n8.x{n}{'.trans' if tr else ''}.shared.b16"
            for n, tr in VARIANTS]:
        assert re.search(re.escape(mark) + r"\s", ptx), mark
