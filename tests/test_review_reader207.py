"""Reader 207: a hint named on evidence that did not show its mistake, and host work that
every CPU launch repeated. No kernel is compiled here (the device-data tests stand a
monkeypatch in for the library's symbol table).
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught

POW2 = "only when n is a power of two"


def _lg(n):
    return n.bit_length() - 1


def _paged_by_shifts(ceil):
    """paged_waste with the page count from `ceil` and the slots as pages << log2(page_size)."""
    def paged_waste(seq_lens, page_size):
        allocated = (ceil(seq_lens, page_size) << _lg(page_size)).sum()
        return 0.0 if allocated == 0 else float(1 - seq_lens.sum() / allocated)
    return paged_waste


@pytest.mark.parametrize("ceil", [
    lambda a, p: -(-a >> _lg(p)),
    lambda a, p: (a >> _lg(p)) + (a & (p - 1) != 0),
], ids=["-(-a >> s)", "(a >> s) + mask"])
def test_paged_waste_by_shifts_is_not_told_it_wrote_pages_of_16(ceil):
    """At page_size 24 a shift by log2(24) = 4 makes pages of 16: these answers are pages
    of 16 exactly there, and the probe that was to tell a 16 written into the code apart
    (17 tokens, pages of 24) gave 16's answer too, so they were told to use the page_size
    argument, which they do. The probe is now 33 tokens in pages of 40, where a shift makes
    pages of 32."""
    assert_caught("paged_waste", _paged_by_shifts(ceil), POW2,
                  not_phrases=["pages of 16 tokens"])


def _block_tables(ceil):
    """block_tables with each sequence's page count from `ceil`."""
    def block_tables(seq_lens, page_size, allocator):
        counts = [int(ceil(n, page_size)) for n in seq_lens]
        table = np.full((len(seq_lens), max([1, *counts])), -1, dtype=np.int32)
        for i, count in enumerate(counts):
            table[i, :count] = allocator.allocate(count)
        return table, np.asarray(seq_lens, dtype=np.int32)
    return block_tables


@pytest.mark.parametrize("ceil", [
    lambda n, p: n // p + (n & (p - 1) != 0),
    lambda n, p: (n >> _lg(p)) + (n % p != 0),
], ids=["mask for %", "shift for //"])
def test_block_tables_by_a_mixed_ceil_is_told_of_shifts_and_masks(ceil):
    """At page_size 3, [7, 3, 10] tokens: a mask's ceil gives 3, 2, 4 pages, a shift's
    4, 1, 6. The check knew only (n + p - 1) >> log2(p): it told the first that L //
    page_size + 1 is one page too many (which gives 3, 2, 4 too: both are named now) and
    the second the formula only."""
    assert_caught("block_tables", _block_tables(ceil), POW2)


# -- device_data: what every launch asks --------------------------------------------------------

TEMPLATE = ("template <int N> __global__ void k(float* o)\n"
            "{ __shared__ float tile[N]; o[0] = tile[0]; }\n")


def _symbol_table(monkeypatch, found):
    from pagedattn_lab.cpu import device_data   # noqa: PLC0415
    monkeypatch.setattr(device_data, "loadable_path", lambda path: path)
    monkeypatch.setattr(device_data, "kernel_variables", lambda path: (found, 0x8))
    monkeypatch.setattr(device_data, "unnamed_globals", lambda path: [])
    return device_data


@pytest.mark.parametrize("found", [(), (("table", 0x100, 64, False),)],
                         ids=["no variable", "a __device__ variable"])
def test_holds_writable_globals_reads_no_source_where_no_static_could_be_shared(monkeypatch,
                                                                               found):
    """kernel.py asks at every launch; the source's __shared__ names matter only for a
    function's static (a template's shared array under GCC), so they are not read for a
    library with none."""
    device_data = _symbol_table(monkeypatch, found)

    def read(source):
        raise AssertionError("shared_names read the source")
    monkeypatch.setattr(device_data, "shared_names", read)
    assert device_data.holds_writable_globals("lib.so", TEMPLATE) is bool(found)


def test_shared_names_reads_each_source_once():
    """Every instrumented launch asks (variable_ranges), and a template's static asks at
    every launch (holds_writable_globals): the answer is kept, and cannot be changed by the
    one who asked."""
    from pagedattn_lab.cpu.device_data import shared_names   # noqa: PLC0415
    source = TEMPLATE + "// reader 207\n"
    first = shared_names(source)
    assert first is shared_names(source)
    assert isinstance(first, frozenset) and "tile" in first
