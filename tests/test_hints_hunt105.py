"""Hints that name the mistake the evidence shows, where they were generic or named half of it
(workbooks 11, 12, 13), and the SIMT decode's head groups past GMAX caught by name."""
import re

import numpy as np
import pytest

from pagedattn_lab import paged_attention_decode
from pagedattn_lab.grading.checks_dequant import _head_fault_hints
from tests.check_helpers import _flat, mutate, run_check, solution_source
from tests.decode_cases import TOL, decode_problem, poisoned, reference
from tests.test_check_mistakes_engine import step_model
from tests.test_check_mistakes_tp import wire


def _failed_hints(task, impl, **kwargs):
    result, printed = run_check(task, impl, **kwargs)
    assert result.status == "failed", printed
    return [(c.params, _flat(c.hint)) for c in result.cases if not c.passed], printed


# -- workbook 12: schedule_step --------------------------------------------------------------

def test_schedule_step_priced_against_the_original_free_pages_names_both_halves():
    """Neither the running requests' new pages nor the admitted prompts' pages taken from
    free_pages: every failed case says so, none names only one half or restates the spec."""
    hints, printed = _failed_hints("schedule_step",
                                   step_model(charge_running=False, charge_waiting=False))
    assert len(hints) >= 2, printed
    for params, hint in hints:
        assert "priced against the original free_pages" in hint, (params, printed)
        assert "running requests' new pages" in hint and "admitted prompt's pages" in hint
        assert "compare with the expected batch" not in hint, (params, printed)


@pytest.mark.parametrize("switch, phrase", [
    ({"charge_waiting": False}, "an admitted prompt's pages were not taken"),
    ({"charge_running": False}, "the running requests' new pages were not counted"),
], ids=["charge_waiting", "charge_running"])
def test_schedule_step_one_half_alone_is_still_named_alone(switch, phrase):
    hints, printed = _failed_hints("schedule_step", step_model(**switch))
    assert any(phrase in hint for _, hint in hints), printed
    assert not any("original free_pages" in hint for _, hint in hints), printed


# -- workbook 13: wire_bytes -----------------------------------------------------------------

def test_wire_bytes_kv_read_over_the_padded_table_is_named_on_every_case():
    """K/V read counted over batch x (longest's pages) x page_size slots: the first case
    (lens 48, 13, 33 on pages of 16) restated the formulas instead."""
    def padded(seq_lens, heads, kv, dim, ps, world, size):
        tables, share, _ = wire()(seq_lens, heads, kv, dim, ps, world, size)
        pages = -(-int(max(seq_lens)) // ps)
        return tables, share, len(seq_lens) * pages * ps * 2 * (kv // world) * dim * size

    hints, printed = _failed_hints("wire_bytes", padded)
    assert hints and hints[0][0]["seq_lens"] == [48, 13, 33], printed
    for params, hint in hints:
        assert "not the padded table's batch * pages * page_size slots" in hint, (params, printed)
        assert "k/v read: tokens * 2" not in hint, (params, printed)


# -- workbook 11: dequant_decode -------------------------------------------------------------

def test_dequant_decode_kv_head_past_the_cache_fault_names_the_formula():
    """kv_head = h / num_kv_heads: on MQA (3 query heads, 1 KV head) query head 1 reads KV
    head 1, a per-token scale past the end, whose hint talked about the scales' layout."""
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_READ"),
                    [("int kv_head = h / (num_heads / num_kv_heads);",
                      "int kv_head = h / num_kv_heads;")])
    result, printed = run_check("dequant_decode", source, device="cpu")
    case = next(c for c in result.cases if c.name == "per-token scales, MQA")
    assert not case.passed and "out-of-bounds read of k_scale" in case.message, printed
    hint = _flat(case.hint)
    # (query head 1 or 2, whichever block faults first: checked launches run block 0, then
    # the others from the last down, hunt 184)
    assert re.search(r"read kv head h / num_kv_heads = [12], past the cache's last kv head, 0",
                     hint), printed
    assert "query head h reads kv head h / (num_heads / num_kv_heads) = 0 here" in hint, printed
    assert "laid out like the pages" not in hint, printed


def _kv_head_fault_hint(exc, per_token, heads, kv_heads):
    """_head_fault_hints' h / num_kv_heads hint, or None."""
    return next((h for h in _head_fault_hints(exc, per_token, heads, kv_heads)
                 if "h / num_kv_heads" in h), None)


def test_dequant_decode_kv_head_fault_hint_only_where_the_index_fits_the_formula():
    """A scale fault whose query head's h / num_kv_heads is in the cache, or whose index is
    not that head's, keeps the layout hint (None here)."""
    class Fault:   # query head 1 of 4 over 2 KV heads: h / num_kv_heads = 0, in the cache
        block, index, size, buffer = (1, 0, 0), 40, 40, "k_scale"
    assert _kv_head_fault_hint(Fault, 1, 4, 2) is None
    Fault.block = (3, 0, 0)   # h / num_kv_heads = 1: in the cache too
    assert _kv_head_fault_hint(Fault, 1, 4, 2) is None
    Fault.block, Fault.index = (5, 0, 0), 41   # 6/2: h / 2 = 2, past; 41 - 2 = 39 no slot row
    assert _kv_head_fault_hint(Fault, 1, 6, 2) is None
    Fault.index = 40   # 40 - 2 = 38 = slot 19 * 2 KV heads
    assert "h / num_kv_heads = 2" in _kv_head_fault_hint(Fault, 1, 6, 2)
    assert _kv_head_fault_hint(Fault, 0, 6, 2) is None   # static: index 2 would be it
    Fault.index = 2
    assert "h / num_kv_heads = 2" in _kv_head_fault_hint(Fault, 0, 6, 2)


# -- the package's SIMT decode: head groups that 8 (GMAX) does not divide ---------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("group, num_kv_heads", [(12, 2), (20, 3)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_simt_decode_groups_past_gmax_on_the_cpu_executor(group, num_kv_heads, num_splits,
                                                         dtype):
    """12 or 20 query heads per KV head: each KV head takes blocks of 8 and one of the rest
    (4); a block that takes 8 there reads the next KV head's queries with its own K and V,
    and the last KV head's past the end."""
    rng = np.random.default_rng(1050 + group)
    lens = [1, 17, 40, 6]   # one token, a page and one, a partial last page
    args = decode_problem(rng, lens, page_size=5, num_heads=group * num_kv_heads,
                          num_kv_heads=num_kv_heads, head_dim=32, dtype=dtype)
    out = poisoned(args[0].shape, dtype)
    got = paged_attention_decode(*args, num_splits=num_splits, out=out, kernel="simt")
    ref = reference(args)
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "outputs left unwritten (NaN)"
    err = np.abs(got - ref).max(axis=2) / np.abs(ref).max()
    wrong = np.argwhere(err > TOL[dtype])
    assert not len(wrong), f"{len(wrong)} (sequence, head) rows wrong, the first {wrong[0]}"
