"""A kernel's stray write cannot switch the sandbox off, nor reach what the host trusts
(hunt 165).

The runtime's variables lie next to the kernel's static `__shared__` section: before, a write
through a shared array's pointer far enough before its start (past the 256-byte guard) set
pal_sandbox_level to 0, and the kernel's next system() ran a shell. Now the sandbox's settings
live alone in a page that is read-only but while the runtime sets them: the write faults, and
is reported with the thread like any wild write, before anything runs. Likewise the library's
GOT (full RELRO), and the launch's results below the array arguments (guards of 1 MiB or the
array's size before each array, 1 MiB around the results)."""
import re
import subprocess
import sys

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox is Linux-only (ld --wrap)")

# Zeroes [s + off, s + off + n) (the sandbox's settings, by the symbol table) through a pointer
# the compiler does not trace to `s`, then runs `cmd`.
_FLIP = r"""
#include <stdlib.h>
extern "C" __global__ void flip(int* out, long long off, long long n, const char* cmd)
{
    __shared__ int s[32];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 3) {
        char* volatile base = (char*)s;   // untraced: GCC's pointer check does not see it
        char* p = base + off;
        for (long long i = 0; i < n; ++i) p[i] = 0;
        out[0] = system(cmd);
    }
}
"""


def _symbols(path: str) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the library's data symbols."""
    out = subprocess.run(["nm", "-S", path], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "dDbB":
            syms[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return syms


def _settings_offset(kern: RawKernel) -> tuple[int, int]:
    """(offset from `s` to the sandbox's settings, their size in bytes)."""
    syms = _symbols(kern.compile()._builds[False][2])
    address, size = syms["pal_sandbox_settings"]
    return address - syms["_ZZ4flipE1s"][0], size


def _command(path) -> np.ndarray:
    return np.frombuffer(f"touch {path}\0".encode(), np.uint8).copy()


@pytest.mark.parametrize("sandbox", ["default", "seccomp"])
def test_a_stray_write_cannot_turn_the_forbidden_call_check_off(monkeypatch, tmp_path, sandbox):
    if sandbox == "seccomp":
        monkeypatch.setenv("PAGEDATTN_LAB_CPU_SANDBOX", "seccomp")
    kern = RawKernel(_FLIP, "flip")
    off, size = _settings_offset(kern)
    assert abs(off) > 256   # past the guards of poison around the section
    marker = tmp_path / "escaped"
    out = np.zeros(1, np.int32)
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (out, np.int64(off), np.int64(size), _command(marker)), workers=1)
    e = info.value
    assert not marker.exists(), "the kernel ran a shell"
    assert (e.access, e.thread, e.block) == ("write", (3, 0, 0), (0, 0, 0)), str(e)
    assert getattr(e, "syscall", None) is None, str(e)


def test_the_settings_follow_the_environment_from_launch_to_launch(monkeypatch, tmp_path):
    """In-process (checked=False) the runtime sets them in this process, read-only in between:
    each launch unprotects, sets and protects them again (a write to a still read-only page
    would end this process). $PAGEDATTN_LAB_CPU_SANDBOX=0 lets the call through; unset, it
    is refused again; a checked launch after them still faults on the stray write."""
    kern = RawKernel(_FLIP, "flip")
    out = np.zeros(1, np.int32)
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_SANDBOX", "0")
    kern((1,), (32,), (out, np.int64(0), np.int64(0), _command(tmp_path / "a")), checked=False)
    assert (tmp_path / "a").exists() and out[0] == 0
    monkeypatch.delenv("PAGEDATTN_LAB_CPU_SANDBOX")
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (out, np.int64(0), np.int64(0), _command(tmp_path / "b")),
             checked=False)
    assert info.value.syscall == "system" and not (tmp_path / "b").exists()
    off, size = _settings_offset(kern)
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (out, np.int64(off), np.int64(size), _command(tmp_path / "c")))
    assert info.value.access == "write" and not (tmp_path / "c").exists()


# Reads 8 bytes at s + off (a slot of the library's GOT) and writes them back unchanged.
_REWRITE = r"""
extern "C" __global__ void rewrite(long long* out, long long off)
{
    __shared__ int s[32];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 5) {
        char* volatile base = (char*)s;
        volatile long long* slot = (volatile long long*)(base + off);
        out[0] = *slot;
        *slot = out[0];
    }
}
"""


def _got_slot(path: str) -> int:
    """Address of the last slot of the table of the addresses the library calls through."""
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True,
                         check=True).stdout
    sections = {m.group(1): (int(m.group(2), 16), int(m.group(3), 16)) for m in re.finditer(
        r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", out)}
    address, size = sections[".got.plt" if ".got.plt" in sections else ".got"]
    return address + size - 8


def test_the_table_of_function_addresses_is_read_only():
    """Before: .got.plt stayed writable (lazy binding), so a stray write there sent a later
    call, the runtime's own too (its __real_system), wherever the written value pointed; the
    rewrite of a slot's own value passed unseen. Now (full RELRO) it faults, named."""
    kern = RawKernel(_REWRITE, "rewrite")
    path = kern.compile()._builds[False][2]
    shared = _symbols(path)["_ZZ7rewriteE1s"][0]
    out = np.zeros(1, np.int64)
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (out, np.int64(_got_slot(path) - shared)))
    assert (info.value.access, info.value.thread) == ("write", (5, 0, 0)), str(info.value)


_BEFORE = r"""
extern "C" __global__ void before(float* x, float* y, long long off, int write)
{
    if (threadIdx.x == 2) {
        if (write) x[off] = 0.0f;
        else y[0] = x[off];
    }
}
"""


@pytest.mark.parametrize("write", [0, 1])
@pytest.mark.parametrize("kib", [65, 80, 1000])   # (1300, past x's guard: hunt 174's test)
def test_an_index_far_before_an_array_faults(kib, write):
    """Before: 64 KiB of guard preceded an array, and the launch's results (pal_ctl, ~1.4 MB,
    mapped just below) lay past it: `x[-1 * stride]` with a stride over 64 KiB (a block
    table's -1 times a KV block's size) read 0 or changed the results the parent trusts, and
    the launch passed. Now the guard before is as large as the one after (max(1 MiB, size):
    the access is named as x's; past x's guard the results have guards of their own:
    test_cpu_mends_hunt174)."""
    x, y = np.zeros(16384, np.float32), np.zeros(1, np.float32)
    off = -kib * 1024 // 4
    with pytest.raises(KernelFault) as info:
        RawKernel(_BEFORE, "before")((1,), (32,), (x, y, np.int64(off), np.int32(write)))
    e = info.value
    assert (e.thread, e.access) == ((2, 0, 0), "write" if write else "read"), str(e)
    assert (e.buffer, e.index) == ("x", off), str(e)
