"""The shim precompiled (cpu/pch.py): the same assembly, GCC really reads it, and none where
the cache is not trusted or the grader compiles."""
import re
import subprocess

import pytest

from pagedattn_lab.cpu import compiler, pch

SOURCE = """
#include <cuda_fp16.h>
extern "C" __global__ void halve(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __half2float(__float2half(x[i]) * __float2half(0.5f));
}
"""

pytestmark = pytest.mark.skipif(compiler.compiler()[2], reason="no precompiled shim for Clang")


def _compile(monkeypatch, tmp_path, *, instrumented=False, with_pch=True):
    """(the assembly, the compile's command) of SOURCE built into a cache of its own."""
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path / ("pch" if with_pch else "none")))
    if not with_pch:
        monkeypatch.setattr(compiler, "shim_pch_flags", lambda *args: [])
    seen = {}
    real_run = compiler.run_tool

    def run(cmd):
        result = real_run(cmd)
        if "-S" in cmd:
            asm = cmd[cmd.index("-o") + 1]
            tmp = asm.rsplit("/", 1)[0]
            text = open(asm).read()
            # an instrumented build's debug lines name the build folder, and its debug
            # strings come in another order (.LASF labels): instructions and data compared
            seen["asm"] = "\n".join(line for line in text.splitlines()
                                    if tmp not in line and ".LASF" not in line and
                                    not line.lstrip().startswith((".file", ".string")))
            seen["cmd"] = cmd
            seen["tu"] = open(cmd[cmd.index("-S") + 1]).read()
        return result
    monkeypatch.setattr(compiler, "run_tool", run)
    compiler.compile_source(SOURCE, ["halve"], ("-DUNUSED_BY_THE_SHIM=3",), filename="halve.cu",
                            kernel="halve", instrumented=instrumented)
    monkeypatch.undo()
    tu = tmp_path / "kernel.cpp"   # the build folder is gone: the unit again, for GCC's -H
    tu.write_text(seen["tu"])
    return seen["asm"], [*seen["cmd"][:seen["cmd"].index("-S")], str(tu)]


@pytest.mark.parametrize("instrumented", [False, True])
def test_the_precompiled_shim_is_read_and_changes_no_instruction(monkeypatch, tmp_path,
                                                                 instrumented):
    with_pch, cmd = _compile(monkeypatch, tmp_path, instrumented=instrumented)
    without, plain_cmd = _compile(monkeypatch, tmp_path, instrumented=instrumented,
                                  with_pch=False)
    assert "-include" in cmd and "-include" not in plain_cmd
    assert with_pch == without
    # GCC says which headers it read: "!" before a precompiled header it used, "x" before one
    # it refused (then it reads the text header, correctly but at no gain)
    heard = subprocess.run([*cmd[:-1], "-H", "-fsyntax-only", cmd[-1]], capture_output=True,
                           text=True).stderr
    assert re.search(r"^! .*pal_shim\.h\.gch$", heard, re.M), heard[:2000]


@pytest.mark.parametrize("env", [{"PAGEDATTN_LAB_CPU_TRUST_CACHE": "0"},
                                 {"PAGEDATTN_LAB_GRADING_CXX": "c++"}])
def test_no_precompiled_shim_where_the_cache_is_not_trusted_or_under_the_grader(
        monkeypatch, tmp_path, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cmd, _, is_clang = compiler.compiler()
    assert pch.shim_pch_flags(cmd, is_clang, ("-std=c++17",), compiler.HERE / "shim.h",
                              "0" * 64, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_compiler_that_cannot_precompile_leaves_the_compiles_as_they_were(tmp_path):
    assert pch.shim_pch_flags(("false",), False, ("-std=c++17",), compiler.HERE / "shim.h",
                              "1" * 64, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_cache_deleted_while_the_process_runs_is_built_again(tmp_path):
    cmd, _, is_clang = compiler.compiler()
    args = (cmd, is_clang, ("-std=c++17", "-I", str(compiler.INCLUDE_DIR)),
            compiler.HERE / "shim.h", "2" * 64, tmp_path)
    first = pch.shim_pch_flags(*args)
    assert first and (tmp_path / ("pch-" + "2" * 24) / "pal_shim.h.gch").is_file()
    for p in tmp_path.rglob("*"):   # (the cache may be deleted at any time)
        if p.is_file():
            p.unlink()
    assert pch.shim_pch_flags(*args) == first
    assert (tmp_path / ("pch-" + "2" * 24) / "pal_shim.h.gch").is_file()
