"""Tests that kill mutants of the code hunts 178-187 added (hunt 188): each names the change
to the code that no earlier test noticed."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pagedattn_lab import quant
from pagedattn_lab.prefill_masks import causal_mask
from tests.check_helpers import GoodAllocator, run_check
from tests.test_cpu_state_hunt182 import _write, past_shared  # noqa: F401 - a fixture


def test_causal_mask_checks_the_cells_of_the_mask_not_its_sides(monkeypatch):
    """10 x 11 = 110 cells past a memory of 100 (the sides' sum, 21, is not)."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 100)
    with pytest.raises(ValueError, match=r"^q_len, seq_len: the 10 x 11 mask would take"):
        causal_mask(10, 11)
    assert causal_mask(9, 11).shape == (9, 11)   # 99 cells fit


def test_scales_name_the_first_of_several_infinite_entries():
    x = np.array([[[1.0, np.inf]], [[-np.inf, 2.0]]], np.float32)
    for scales in (quant.per_token_scales, quant.static_scales):
        with pytest.raises(ValueError, match=r"got x\[0, 0, 1\] = inf$"):
            scales(x, "int8")


def test_static_scales_take_each_heads_amax_over_all_samples_in_float64():
    """Each head's scale is the amax of its own values over every sample (the heads' axis
    moved first, not the flat array cut into rows), / qmax; a head of subnormal samples only
    reads as zeros (-ftz): scale 1."""
    rng = np.random.default_rng(188)
    x = rng.standard_normal((3, 2, 5)).astype(np.float32)
    x[:, 1] *= 100                     # head 1's values are far larger than head 0's
    want = np.abs(x.astype(np.float64)).max(axis=(0, 2)) / 127
    np.testing.assert_allclose(quant.static_scales(x, "int8"), want, rtol=1e-6)
    tiny = np.full((2, 2, 3), 1e-40, np.float32)
    tiny[:, 0] = 1.0
    np.testing.assert_array_equal(quant.static_scales(tiny, "int8"),
                                  np.array([1 / 127, 1.0], np.float32))


class _FirstIdOnlyFork(GoodAllocator):
    """Counts right, returns the first id only: not a repeated id dropped."""

    def fork(self, pages):
        return super().fork(pages)[:1]


def test_the_repeat_case_blames_a_dropped_repeat_only_where_the_ids_are_all_there():
    result, printed = run_check("refcounts", _FirstIdOnlyFork)
    case = next(c for c in result.cases if c.name == "fork of a table listing a page twice")
    assert not case.passed and "does not copy" in case.hint, printed
    assert "dropped" not in case.message, printed


class _RepeatReleasesFree(GoodAllocator):
    """Counts right, but a page listed twice in one free goes back to the free list."""

    def _release(self, pages):
        super()._release(pages)
        self.free_list.extend(p for p in dict.fromkeys(pages)
                              if pages.count(p) > 1 and p not in self.free_list)


def test_the_repeat_case_checks_the_free_list_after_freeing_the_fork():
    result, printed = run_check("refcounts", _RepeatReleasesFree)
    failed = [c.name for c in result.cases if not c.passed]
    assert failed == ["fork of a table listing a page twice"], printed
    assert "num_free after free(" in printed, printed


@pytest.mark.parametrize("offset, named", [
    (100, "`gridDim`"), (111, "`gridDim`"), (112, "`blockDim`"), (123, "`blockDim`"),
    (124, None), (130, None), (99, None)])
def test_a_changed_read_only_variable_is_named_by_the_bytes_it_holds(monkeypatch, offset,
                                                                     named):
    """gridDim's 12 bytes, then blockDim's, then a variable of the kernel's: the byte just
    past one belongs to the next, and a variable the kernel may write is named by no note."""
    from pagedattn_lab.cpu import report_checks   # noqa: PLC0415
    from pagedattn_lab.cpu.report import LaunchInfo   # noqa: PLC0415
    monkeypatch.setattr(report_checks, "_library_symbols", lambda info: {
        "gridDim": (100, 12), "blockDim": (112, 12), "scratch": (124, 8), "pal_x": (99, 1)})
    info = LaunchInfo("k", (), (1, 1, 1), (1, 1, 1), 0, 0, [], [],
                      source=("lib.so", "k.cu", ""))
    words = report_checks._read_only_changed(info, offset)
    assert (named in words) if named else words == "", words


def test_constant_once_reads_the_declaration_up_to_its_declarator_only():
    """A `const` inside the brackets, parentheses or braces after the name is no part of
    the declaration's specifiers: the variable stays __constant__ (shim.h's const)."""
    from pagedattn_lab.cpu.constant_decl import constant_once   # noqa: PLC0415
    for source in ("__constant__ float t[(const int)2] = {1, 2};",
                   "__constant__ float u((const float)1);",
                   "__constant__ float3 v{(const float)1, 2, 3};"):
        assert constant_once(source) == source


def test_only_a_functions_static_is_taken_for_a_templates_shared_array(monkeypatch):
    """A namespace-scope __device__ array named like a word of a __shared__ declaration is
    still global memory; a function's static of such a name is the template's shared array.
    The ranges are the library's addresses moved to where it was loaded."""
    import ctypes   # noqa: PLC0415
    from pagedattn_lab.cpu import device_data   # noqa: PLC0415
    monkeypatch.setattr(device_data, "loadable_path", lambda path: path)
    monkeypatch.setattr(device_data, "kernel_variables", lambda path: (
        (("acc", 0x10, 128, False), ("tile", 0x100, 64, True), ("n", 0x200, 4, True)), 0x8))

    class _Lib:
        pal_launch_begin = ctypes.c_void_p(0x1008)

    source = ("__device__ float acc[32];\ntemplate <int N> __global__ void k(float* o)\n"
              "{ __shared__ float acc[N], tile[N]; static int n; o[0] = acc[0] + tile[n]; }\n")
    assert device_data.variable_ranges(_Lib(), "lib.so", source) == [
        ("acc", 0x1010, 0x1090, False), ("tile", 0x1100, 0x1140, True),
        ("n", 0x1200, 0x1204, False)]


CONSTANT_SOURCE = ["__constant__ float3 c = {1, 2, 3};",
                   'extern "C" __global__ void k(float* o) { gridDim.x = c.x; }']


def test_constant_hints_read_the_written_part_of_the_kernels_own_lines():
    """A read-only member written on a line that reads a __constant__ variable after the `=`
    is not that variable's write; an error in another file is not the kernel's line."""
    from pagedattn_lab.cpu.compile_errors import _constant_hints   # noqa: PLC0415
    member = "k.cu:2:53: error: assignment of member 'dim3::x' in read-only object\n"
    assert _constant_hints(member, "k.cu", CONSTANT_SOURCE) == []
    assert "read-only to kernel code" in _constant_hints(
        member, "k.cu", [CONSTANT_SOURCE[0], "{ c.x = 1; }"])[0]   # (the line is the point)
    unset = "shim.h:1:20: error: uninitialized 'const c'\n"
    assert _constant_hints(unset, "k.cu", CONSTANT_SOURCE) == []
    assert "cannot set __constant__" in _constant_hints(unset.replace("shim.h", "k.cu"),
                                                        "k.cu", CONSTANT_SOURCE)[0]
    local = "k.cu:2:13: error: uninitialized 'const n'\n"   # (a local const: not the hint's)
    assert _constant_hints(local, "k.cu", [CONSTANT_SOURCE[0], "{ const int n; }"]) == []


@pytest.mark.parametrize("log", [
    "k.cu:2:3: error: assignment of read-only variable 'c'\n",                        # GCC
    "k.cu:2:3: error: cannot assign to variable 'c' with const-qualified type 'const "
    "float3'\n"], ids=["gcc", "clang"])
def test_a_write_to_a_constant_variable_gets_its_hint_in_either_compilers_words(log):
    from pagedattn_lab.cpu.compile_errors import _constant_hints   # noqa: PLC0415
    assert "read-only to kernel code" in _constant_hints(log, "k.cu", CONSTANT_SOURCE)[0]
    assert _constant_hints(log.replace("'c'", "'o'"), "k.cu", CONSTANT_SOURCE) == []


def test_two_functions_statics_of_one_name_keep_a_row_each():
    """`static int n` in two functions: "__device__ n" and "__device__ n (2)", each with its
    own row (reads, writes: the row's accesses), both in the totals."""
    from pagedattn_lab.cpu.counts import AccessCounts   # noqa: PLC0415
    per_buffer = np.zeros((3, 8), np.int64)   # no array arguments: shared memory's row, 2 rows
    per_buffer[1] = [3, 12, 1, 4, 3, 3, 1, 1]
    per_buffer[2] = [5, 20, 2, 8, 5, 5, 2, 2]
    counts = AccessCounts("k", (1, 1, 1), (1, 1, 1), np.zeros((1, 1, 8), np.int64), per_buffer,
                          [], [], [("n", False), ("n", False)])
    assert list(counts.by_buffer) == ["__device__ n", "__device__ n (2)"]
    assert [(b.reads, b.writes, b.read_bytes, b.write_bytes, b.read_accesses)
            for b in counts.by_buffer.values()] == [(3, 1, 12, 4, 3), (5, 2, 20, 8, 5)]
    assert counts.read_requests == 8 and counts.write_sectors == 3


def test_a_name_that_starts_another_does_not_count_toward_its_number():
    """`n`, `nx`, `n`: the second `n` is "(2)"; counting the keys that start with
    "__device__ n" made it "(3)" (reader 190)."""
    from pagedattn_lab.cpu.counts import AccessCounts   # noqa: PLC0415
    counts = AccessCounts("k", (1, 1, 1), (1, 1, 1), np.zeros((1, 1, 8), np.int64),
                          np.zeros((4, 8), np.int64), [], [],
                          [("n", False), ("nx", False), ("n", False)])
    assert list(counts.by_buffer) == ["__device__ n", "__device__ nx", "__device__ n (2)"]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the static __shared__ section is an ELF one")
@pytest.mark.parametrize("target, at", [("gridDim", 8), ("blockDim", 4)], ids=["grid-z",
                                                                                 "block-y"])
def test_a_write_to_any_member_of_a_read_only_built_in_is_reported(past_shared, target, at):
    """blockDim.y or gridDim.z changed is as gridDim.x changed (hunt 182 wrote .x only)."""
    from pagedattn_lab.cpu import KernelFault   # noqa: PLC0415
    kern, symbols, _ = past_shared
    with pytest.raises(KernelFault, match=f"It changed `{target}`, which kernel code can only "
                                          f"read"):
        _write(kern, symbols, symbols[target] + at, grid=2)
