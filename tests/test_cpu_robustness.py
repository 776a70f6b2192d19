"""The CPU executor holds its promise: whatever a kernel does, Python survives, the launch is
reported with the thread and block, and no process is left behind.

Every test here would kill or hang the test process if the protection it checks were gone
(a kernel that sends SIGKILL to its parent, or calls exit()), so this file running to the
end is part of the proof.
"""
import ctypes
import errno
import functools
import mmap
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pagedattn_lab.cpu.launch as launch
from pagedattn_lab.cpu import ExecutorUnavailableError, KernelFault, RawKernel

KERNELS = Path(__file__).parent / "kernels"
linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the sandbox is Linux-only (ld --wrap, seccomp)")


@functools.lru_cache(maxsize=None)
def kern(name: str) -> RawKernel:
    return RawKernel((KERNELS / "escape.cu").read_text(), name, filename="escape.cu")


def gone(pid: int, wait: float = 5.0) -> bool:
    """True when process `pid` no longer runs (absent, or a zombie awaiting its reaper)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@linux
@pytest.mark.parametrize("sandbox", ["default", "seccomp"])
@pytest.mark.parametrize("name, call, block, thread", [
    ("calls_fork", "fork", (1, 0, 0), (3, 0, 0)),
    ("calls_exit", "exit", (2, 0, 0), (5, 0, 0)),
    ("calls_quick_exit", "_exit", (0, 0, 0), (7, 0, 0)),
    ("calls_abort", "abort", (0, 0, 0), (9, 0, 0)),
    ("signals_parent", "kill", (3, 0, 0), (1, 0, 0)),
    ("signals_group", "kill", (0, 0, 0), (2, 0, 0)),
    ("calls_system", "system", (0, 0, 0), (1, 0, 0)),
])
def test_escapes_are_reported_with_thread_and_block(monkeypatch, sandbox, name, call, block,
                                                    thread):
    if sandbox == "seccomp":
        monkeypatch.setenv("PAGEDATTN_LAB_CPU_SANDBOX", "seccomp")
    out = np.zeros(2, np.int32)
    with pytest.raises(KernelFault) as info:
        kern(name)(4, 32, (out,), workers=2, timeout=20)
    e = info.value
    assert (e.block, e.thread, e.syscall) == (block, thread, call)
    assert f"called {call}()" in str(e) and "cannot" in str(e)
    assert not out.any()   # a failed launch writes nothing back


@linux
def test_the_seccomp_filter_catches_calls_the_wrappers_do_not_see(monkeypatch):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.setenv("PAGEDATTN_LAB_CPU_SANDBOX", "seccomp")
        with pytest.raises(KernelFault) as info:
            kern("signals_indirectly")(2, 32, (np.zeros(2, np.int32), np.int32(victim.pid)))
        e = info.value
        assert (e.syscall, e.signal, e.thread) == ("tgkill", "SIGSYS", (4, 0, 0))
        assert victim.poll() is None   # the signal never left
    finally:
        victim.kill()
        victim.wait()


@linux
def test_unchecked_launches_are_protected_too():
    """In-process: exit() or kill(getppid()) would end this test process."""
    for name in ("calls_exit", "signals_parent", "calls_abort"):
        with pytest.raises(KernelFault, match="called"):
            kern(name)(4, 32, (np.zeros(2, np.int32),), checked=False)


@linux
def test_without_the_sandbox_the_process_group_is_killed(monkeypatch):
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_SANDBOX", "0")
    out = np.zeros(2, np.int32)
    t0 = time.monotonic()
    kern("calls_fork")(4, 32, (out,), timeout=20)
    assert time.monotonic() - t0 < 10   # not held up by the child's sleep(60)
    child = int(out[1])
    assert child > 0 and out[0] == child   # the fork happened...
    assert gone(child)                     # ...and the child is gone with the launch


def test_fork_failure_raises_instead_of_running_unprotected(monkeypatch):
    k = kern("calls_exit").compile()

    class NoFork:   # the runtime library, with pal_launch_begin failing as fork() would
        def __init__(self, lib):
            self._lib = lib

        def __getattr__(self, name):
            return getattr(self._lib, name)

        @staticmethod
        def pal_launch_begin(cfg):
            ctypes.set_errno(errno.EAGAIN)
            return None

    real_run = launch.run
    monkeypatch.setattr(launch, "run", lambda lib, *a, **kw: real_run(NoFork(lib), *a, **kw))
    out = np.full(2, 7, np.int32)
    with pytest.raises(ExecutorUnavailableError, match="worker processes") as info:
        k(4, 32, (out,))
    assert os.strerror(errno.EAGAIN) in str(info.value) and "calls_exit" in str(info.value)
    assert (out == 7).all()


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), -float("inf")])
def test_timeout_must_be_positive_and_finite(bad):
    out = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="timeout"):
        kern("calls_abort")(1, 32, (out,), timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        RawKernel((KERNELS / "escape.cu").read_text(), "calls_abort", timeout=bad)


def test_timeout_of_the_wrong_type_and_bad_environment(monkeypatch):
    out = np.zeros(2, np.int32)
    with pytest.raises(TypeError, match="timeout"):
        kern("calls_abort")(1, 32, (out,), timeout="10")
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TIMEOUT", "0")
    with pytest.raises(ValueError, match="PAGEDATTN_LAB_CPU_TIMEOUT"):
        kern("calls_abort")(1, 32, (out,))


# ---- read-only arrays, worker counts, and a machine that cannot start a launch -------------

WRITES_BOTH = r'''
extern "C" __global__ void writes_both(float* out, float* ro, int write_ro)
{
    out[threadIdx.x] = 1.0f;
    if (write_ro) ro[threadIdx.x] = 2.0f;
}
'''


def test_a_write_to_a_read_only_argument_discards_every_write():
    """`out` lies before `ro` in memory, so its buffer was copied back first: the launch
    raised for `ro` with `out` already overwritten ('the writes were discarded' held for ro
    alone)."""
    kernel = RawKernel(WRITES_BOTH, "writes_both")
    base = np.zeros(8, np.float32)
    out, ro = base[:4], base[4:].copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^the kernel wrote to read-only array argument\(s\) "
                                         r"'ro'; all of the launch's writes were discarded"):
        kernel(1, 4, (out, ro, np.int32(1)))
    assert not out.any() and not ro.any()
    kernel(1, 4, (out, ro, np.int32(0)))   # a read-only argument the kernel leaves alone
    assert (out == 1).all() and not ro.any()


@pytest.mark.parametrize("env, want", [("3", 3), ("0", 1), ("100000", launch.abi.MAX_WORKERS)])
def test_the_worker_count_from_the_environment(monkeypatch, env, want):
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_WORKERS", env)
    assert launch.default_workers(1) == want


def test_a_worker_count_that_is_no_number_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_WORKERS", "many")
    with pytest.raises(ValueError, match=r"^workers: \$PAGEDATTN_LAB_CPU_WORKERS must be a "
                                         r"whole number of worker processes, got 'many'"):
        launch.default_workers(64, 2048)


def test_worker_count_without_affinity(monkeypatch):
    """Without sched_getaffinity (macOS) the CPU count decides."""
    monkeypatch.delenv("PAGEDATTN_LAB_CPU_WORKERS", raising=False)
    monkeypatch.delattr(launch.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 3)
    assert launch.default_workers(64, 2048) == 3
    monkeypatch.setattr(launch.os, "cpu_count", lambda: None)
    assert launch.default_workers(64, 2048) == 1


class _NoMemory:
    """A stand-in executor library whose every allocation and launch fails."""
    def pal_buffer_alloc(self, *args):
        return 0

    def pal_launch_begin(self, cfg):
        return 0


class _AddressSpaceLeft:
    """A stand-in executor library that refuses a reservation over `room` bytes (the address
    space left) and maps the rest as one page, the data at its end (as pal_buffer_alloc
    places it)."""
    def __init__(self, room):
        self.room, self.asked = room, []
        self.page = mmap.mmap(-1, mmap.PAGESIZE)

    def pal_buffer_alloc(self, nbytes, guard_before, guard_after, base, length):
        self.asked.append(guard_after)
        if nbytes + guard_before + guard_after > self.room:
            return 0
        start = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        base._obj.value, length._obj.value = 0, 0   # (nothing for _Buffer to unmap)
        return start + mmap.PAGESIZE - nbytes


def _guards_asked(monkeypatch, room, address_space_limit):
    """The guards after a float32 array that _Buffer asked for, where `room` bytes of
    address space are left and RLIMIT_AS is `address_space_limit`; its data checked."""
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        address_space_limit, address_space_limit) if which == resource.RLIMIT_AS
        else pytest.fail(f"getrlimit({which}): only RLIMIT_AS was expected"))
    x = np.arange(16, dtype=np.float32)
    lo = x.__array_interface__["data"][0]
    lib = _AddressSpaceLeft(room)
    launch._Buffer(lib, lo, lo + x.nbytes, x.dtype)
    assert bytes(lib.page[-x.nbytes:]) == x.tobytes()
    return lib.asked


@pytest.mark.parametrize("room, guards", [(1 << 40, [(1 << 20) + launch.WRAP_GUARD]),
                                          (1 << 30, [(1 << 20) + launch.WRAP_GUARD, 1 << 20])])
def test_an_array_is_followed_by_room_for_a_wrapped_index_where_it_can_be(monkeypatch, room,
                                                                          guards):
    """`x[threadIdx.x - 1]` at thread 0 lands 2^32 elements past x: the guard after an array
    covers that for elements of up to 16 bytes (a float4), and where the address space is
    used up the array still gets a guard of its own."""
    assert launch.WRAP_GUARD >= (1 << 32) * 16
    assert _guards_asked(monkeypatch, room, resource.RLIM_INFINITY) == guards


def test_under_an_address_space_limit_an_array_has_its_own_guard_only(monkeypatch):
    """Under an RLIMIT_AS (here 1 TiB) no array reserves the 64 GiB: each would take it while
    it fit, and leave the rest of the launch (stacks, the results' guard) a few pages."""
    assert _guards_asked(monkeypatch, 1 << 40, 1 << 40) == [1 << 20]


def test_failed_mappings_and_launches_are_named():
    with pytest.raises(MemoryError, match=r"^cannot map a guarded buffer of 64 bytes for a "
                                          r"kernel argument$"):
        launch._Buffer(_NoMemory(), 4096, 4096 + 64)
    args = dict(kernel="k", sig=[], args=[], grid=(1, 1, 1), block=(1, 1, 1), shared_mem=0,
                timeout=None, workers=1, stack_bytes=1 << 16)
    with pytest.raises(launch.KernelError, match=r"^kernel 'k': the CPU executor could not "
                                                 r"start \(out of memory\?\)"):
        launch.run(_NoMemory(), 0, checked=False, **args)
    with pytest.raises(ExecutorUnavailableError, match=r"^kernel 'k': the CPU executor could "
                                                       r"not start its worker processes"):
        launch.run(_NoMemory(), 0, checked=True, **args)
