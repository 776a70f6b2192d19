"""A newcomer's wrong answers to workbooks 02, 04 and 06, walked in the browser (helper 197).

- A page looked up one entry too far in the block-table row (`row[t // page_size + 1]`, the
  1-based habit) was named by no hint: slot_of said only the formula, gather_numpy too, and
  the kernels blamed the online softmax for the NaN the padding's page gave.
- gather_numpy that kept only the full pages (`seq_len // page_size` of them) was told only
  "return exactly seq_len tokens".
- The naive kernel's hint for keys read from v_cache spoke of shared-memory tiles, which
  that kernel has none of; decode_partition's keys from v_cache had no hint of its own.
- "1 partitions" in the merge checks' messages.

The kernel checks are fed a kernel that returns a known-wrong variant's output (no kernel is
compiled): what is tested is how the check reads the evidence.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from pagedattn_lab.grading import checks_decode, checks_gather_kernel, checks_kernels
from pagedattn_lab.grading.decode_variants import partials_variant
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.variants import attention_variant, gather_variant
from tests.check_helpers import assert_caught, run_check

NEXT_PAGE = "not t // page_size + 1"


def _t(n, p):
    return np.arange(n) // p, np.arange(n) % p


# -- Python tasks of workbook 02 --------------------------------------------------------------

def test_slot_of_reading_the_next_entry_of_the_row_is_named():
    assert_caught("slot_of", lambda row, t, p: int(row[t // p + 1]) * p + t % p, NEXT_PAGE)


def test_gather_numpy_reading_the_next_entry_of_the_row_is_named():
    def gather(k, row, n):
        page, off = _t(n, k.shape[1])
        return k.reshape(-1, *k.shape[2:])[np.asarray(row)[page + 1] * k.shape[1] + off]
    assert_caught("gather_numpy", gather, NEXT_PAGE)


def test_gather_numpy_that_drops_the_partial_last_page_is_told_so():
    def gather(k, row, n):
        p = k.shape[1]
        page, off = _t(n // p * p, p)
        return k.reshape(-1, *k.shape[2:])[np.asarray(row)[page] * p + off]
    assert_caught("gather_numpy", gather, "the full pages only (12 of 14)",
                  not_phrases=["whole pages"])
    assert_caught("gather_numpy", gather, "the last 1 token of the sequence sits")


def test_merge_partitions_counts_one_partition_in_the_singular():
    _, printed = run_check("merge_partitions", lambda m, l, o: (l * np.exp(m - m.max())) @ o)
    assert "1 partition of [7] tokens" in printed
    assert "1 partitions" not in printed


# -- CUDA C tasks, fed a known-wrong output --------------------------------------------------

class _Returns:
    """Stands in for a compiled kernel: every launch returns `outputs(args)`."""
    racecheck = False

    def __init__(self, outputs):
        self.outputs = outputs

    def launch(self, grid, block, args, shared_mem=0, outputs=()):
        return [np.asarray(o, dtype=np.float32) for o in self.outputs(args)]


class _Compiled:
    def __init__(self, outputs, source=""):
        self.source, self.kernel = source, _Returns(outputs)

    def get(self):
        return self.kernel


def _prefill(tiled, **bugs):
    def outputs(args):
        q, k, v, tables, lens = args[:5]
        return [attention_variant(q, k, v, tables, lens, float(args[-1]), **bugs)]
    comp = _Compiled(outputs, "__syncthreads(); __syncthreads();" if tiled else "")
    with pytest.raises(Mismatch) as caught:
        checks_kernels._prefill_case(comp, 50, threads=16, tiled=tiled, seq_lens=[11],
                                     num_heads=2, num_kv_heads=2, head_dim=8, page_size=4)
    return caught.value.hint


def test_naive_kernel_keys_from_v_cache_hint_names_no_tile():
    hint = _prefill(False, keys_from_values=True)
    assert "the scores are q . v" in hint and "tile" not in hint
    assert "tile" not in _prefill(False, values_from_keys=True)


def test_tiled_kernel_keys_from_v_cache_hint_names_its_tiles():
    assert "v_tile starts page_size * head_dim floats" in _prefill(True, keys_from_values=True)


@pytest.mark.parametrize("tiled", [False, True])
def test_prefill_kernel_reading_the_next_entry_of_the_row_is_named(tiled):
    hint = _prefill(tiled, page_shift=1)
    assert "yours reads entry t / page_size + 1" in hint and "online softmax" not in hint


def test_gather_kernel_reading_the_next_entry_of_the_row_is_named():
    def outputs(args):
        k, v, tables, lens, _, _, max_len = args[:7]
        return [gather_variant(c, tables, lens, int(max_len), page_shift=1) for c in (k, v)]
    with pytest.raises(Mismatch) as caught:
        checks_gather_kernel._gather_case(_Compiled(outputs), 0, [11], 4, 2, 8, 11)
    assert "yours reads entry t / page_size + 1" in caught.value.hint


def test_gather_variant_keeps_the_tokens_read_before_the_padding():
    rng = np.random.default_rng(0)
    cache = rng.standard_normal((6, 4, 1, 2))
    tables, lens = np.array([[2, 5, -1]], np.int32), np.array([7], np.int32)
    got = gather_variant(cache, tables, lens, 7, page_shift=1)
    assert np.array_equal(got[0, :4, 0], cache[5, :, 0])   # page 0's tokens read page 1's
    assert np.isnan(got[0, 4:7]).all()                      # page 1's read the -1 padding


class _CountedPartials:
    """Stands in for a compiled decode_partition kernel on the CPU executor: its counted
    launch writes `partials_variant`'s partials with `bugs` into part_out and part_ml."""
    device, racecheck = "cpu", False

    def __init__(self, **bugs):
        self.bugs = bugs

    def count(self, grid, block, args, timeout=None):
        q, k_cache, v_cache, tables, lens = args[:5]
        prob = SimpleNamespace(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=tables,
                               seq_lens=lens, scale=float(args[-1]))
        m, l, o = partials_variant(prob, int(args[-3]), **self.bugs)
        args[5][...] = o
        args[6][...] = np.stack([m, l], axis=-1)
        return None


def test_decode_partition_keys_from_v_cache_is_named():
    comp = _Compiled(None)
    comp.kernel = _CountedPartials(swap="keys_from_values")
    with pytest.raises(Mismatch) as caught:
        checks_decode._partition_case(comp, 1, 16, seq_lens=[13], num_heads=2, num_kv_heads=2,
                                      head_dim=32, page_size=4)
    assert caught.value.hint.startswith("the scores are q . v"), caught.value.hint


def test_decode_merge_message_counts_one_partition_in_the_singular():
    from pagedattn_lab.grading import checks_decode_merge
    comp = _Compiled(lambda args: [np.full(args[3].shape, 0.5)])   # right shape, wrong values
    # (np.errstate: run_cases keeps the hints' own 0/0 quiet, and this calls the case alone)
    with pytest.raises(Mismatch) as caught, np.errstate(invalid="ignore"):
        checks_decode_merge._merge_kernel_case(comp, 71, 16, seq_lens=[10, 16], num_heads=2,
                                               num_kv_heads=1, head_dim=64, page_size=4)
    assert "it merges 1 partition." in caught.value.message


def test_tile_pages_counted_from_one_is_named():
    def tile_pages(seq_len, q_start, tile_q, page_size):
        keys = min(seq_len, q_start + tile_q) if q_start < seq_len else 0
        return list(range(1, -(-keys // page_size) + 1))
    assert_caught("tile_pages", tile_pages, "virtual pages count from 0")
