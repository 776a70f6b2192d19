"""Review of the CPU executor's hardening against attacks through CUDA C (hunt 29): the
object check must read every valid ELF object, and the kernel host's untrusted cache must
not refuse a library this process built because another process built it again."""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.cpu import compiler
from pagedattn_lab.cpu.kernel_object import load_time_code, runtime_internals

KERNEL = r"""
extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }
"""


def _object(tmp_path, code):
    cmd, _, _ = compiler.compiler()
    src = tmp_path / "o.cpp"
    src.write_text(code)
    subprocess.run([*cmd, "-fPIC", "-c", str(src), "-o", str(tmp_path / "o.o")], check=True)
    return tmp_path / "o.o"


def _extended_numbering(data: bytes) -> bytes:
    """The same object with ELF's extended section numbering (what an object of 65,280
    sections or more has): e_shnum 0 and e_shstrndx SHN_XINDEX, the real values in
    section 0's sh_size and sh_link."""
    data = bytearray(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    struct.pack_into("<HH", data, 0x3C, 0, 0xFFFF)
    struct.pack_into("<Q", data, shoff + 0x20, shnum)      # section 0's sh_size
    struct.pack_into("<I", data, shoff + 0x28, shstrndx)   # section 0's sh_link
    return bytes(data)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF objects")
def test_an_object_with_extended_section_numbering_is_read(tmp_path):
    obj = _object(tmp_path, "namespace pal { extern int S; }\nint use() { return pal::S; }\n"
                            "__attribute__((constructor)) static void f() {}\n")
    want = (load_time_code(str(obj), False), runtime_internals(str(obj)))
    assert want[0] and want[1]
    ext = tmp_path / "ext.o"
    ext.write_bytes(_extended_numbering(obj.read_bytes()))
    assert (load_time_code(str(ext), False), runtime_internals(str(ext))) == want


def test_an_elf_file_without_sections_is_read(tmp_path):
    bare = tmp_path / "bare.o"
    bare.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    assert load_time_code(str(bare), True) == [] and runtime_internals(str(bare)) == []


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="sealed copies: Linux")
def test_another_process_building_the_same_kernel_does_not_break_this_ones_launch(
        tmp_path, monkeypatch):
    """Two kernel hosts grading with one cache: both build the same instrumented kernel (its
    bytes differ from build to build: the line tables name the temporary folder). The one
    that built first refused to load its own library: 'changed after it was built'."""
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", "0")
    RawKernel(KERNEL, "k").compile(instrumented=True)
    libs = sorted((tmp_path / "cache").rglob("k-*.so"))
    before = [p.read_bytes() for p in libs]
    other = ("from pagedattn_lab.cpu import RawKernel\n"
             f"RawKernel({KERNEL!r}, 'k').compile(instrumented=True)\n")
    subprocess.run([sys.executable, "-c", other], check=True, env=dict(os.environ))
    assert [p.read_bytes() for p in libs] != before   # the other build replaced it
    x = np.zeros(4, np.float32)
    RawKernel(KERNEL, "k")((1,), (4,), (x,), racecheck=True)
    np.testing.assert_array_equal(x, 1)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="sealed copies: Linux")
def test_a_library_replaced_between_its_build_and_its_load_still_loads(tmp_path, monkeypatch):
    """The other host's build can land between this one's rename into the cache and its
    load; this process built a good library, which it must load (from its sealed copy)."""
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", "0")
    real = compiler.remember

    def then_other_build(paths):   # the last step of this process's build, before loading
        real(paths)
        for p in paths:
            if str(p).endswith(".so"):
                with open(p, "ab") as fh:   # another valid build: other bytes
                    fh.write(b"\0")

    monkeypatch.setattr(compiler, "remember", then_other_build)
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        then_other_build([dst])

    monkeypatch.setattr(compiler.os, "replace", replace)
    x = np.zeros(4, np.float32)
    RawKernel(KERNEL.replace("1.0f", "3.0f"), "k")((1,), (4,), (x,))
    np.testing.assert_array_equal(x, 3)
