"""The CPU executor's -D macros and writable globals (hunt 194).

(1) The compile's -D macros were not seen by the source's own checks: `-DCMEM=__constant__`
then `CMEM const float h = 0.5f;` did not compile ("duplicate 'const'"; NVRTC accepts it),
and with `-DLOG=printf` a kernel's `LOG(...)` output was not kept in block order (its blocks
ran last first, on several workers). constant_once and uses_printf now read the -D macros as
the source's own #defines.
(2) A launch runs in one worker process where the kernel has a writable global (each worker
has its own copy of it), but the source check (source.has_device_variables) missed some:
`__device__ __align__(16) unsigned t;` (it took the `(` for a function's), one spelled
through a macro or a -D option, one in a header the source includes. Such a ticket counter
was counted per worker: two blocks took the same ticket. The launch now asks the compiled
library's symbol table (device_data.py) as well.
(3) Not changed: in a plain launch a read just before an array argument (`a[-1]`) gets the
slack's NaN or -1 and is not stopped (cpu/README.md, "Not supported, or not caught"): the
array's end, not its start, touches the guard page, and no page boundary falls between a[-1]
and a[0]. (An instrumented launch stops it: test_cpu_slack_read_h212.py.)
"""
import sys

import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.cpu.constant_decl import constant_once
from pagedattn_lab.cpu.device_data import holds_writable_globals, kernel_variables
from pagedattn_lab.cpu.source import uses_printf
from tests.test_cpu_gaps_hunt189 import CONSTANT_OPTIONS, CONSTANTS

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the kernel's variables are read off an ELF symbol table")


def test_uses_printf_sees_a_define_option_that_names_printf():
    source = 'void f() { LOG("%d", 1); }'
    assert not uses_printf(source)
    assert uses_printf(source, ["-DLOG=printf"])
    assert uses_printf(source, ["-DSAY=printf", "-DLOG=SAY"])
    assert uses_printf(source, ["-DLOG(...)=printf(__VA_ARGS__)"])
    assert uses_printf(source, ["-D", "LOG=printf"])   # (as NVRTC's options are written too)
    assert not uses_printf(source, ["-DLOG=puts", "-DOTHER=printf"])


def test_a_kernel_sees_its_printf_define_option():
    """What makes its launch print in block order (one worker, ascending blocks), chosen
    before anything compiles."""
    source = 'extern "C" __global__ void k(int n) { LOG("%d\\n", n); }\n'
    assert RawKernel(source, "k", ("-DLOG=printf",))._prints
    assert not RawKernel(source, "k", ("-DLOG=puts",))._prints


def test_constant_once_sees_a_define_option_that_stands_for_constant():
    source = "CMEM const float h = 0.5f; CMEM float u = 1; const CMEM2 int v = 2;\n"
    out = constant_once(source, ["-DCMEM=__constant__", "-DCMEM2=CMEM"])
    assert out == "     const float h = 0.5f; CMEM float u = 1; const       int v = 2;\n"
    assert constant_once(source) == source   # (no -D option: nothing stands for it)


@linux
def test_a_ticket_in_device_variables_the_source_check_misses_is_taken_once():
    """`tickets` (a -D macro's __device__) and `buf` (after __align__(16)): the source check
    sees neither. Before: each of 4 workers counted its own tickets, so blocks of different
    workers took the same one (and the build did not compile: `LAB_CONSTANT const`)."""
    kern = RawKernel(CONSTANTS, "take", CONSTANT_OPTIONS)
    taken = np.full(64, np.nan, np.float32)
    kern((64,), (128,), (taken,), workers=4)
    np.testing.assert_array_equal(np.sort(taken), 0.5 * np.arange(64))
    path = kern._builds[False][2]
    assert {"tickets", "buf"} <= {v[0] for v in kernel_variables(path)[0]}
    assert holds_writable_globals(path, CONSTANTS)


@linux
def test_a_template_shared_array_is_no_writable_global():
    """GCC leaves a template function's __shared__ array out of the shared section, a
    function's static in the symbol table: per block, it does not force one worker. (The
    instrumented build of hunt 184's test, which counts it as shared memory.)"""
    from tests.test_cpu_device_data_hunt184 import TEMPLATE_SHARED   # noqa: PLC0415
    kern = RawKernel(TEMPLATE_SHARED, "k").compile(instrumented=True)
    assert not holds_writable_globals(kern._builds[True][2], TEMPLATE_SHARED)
