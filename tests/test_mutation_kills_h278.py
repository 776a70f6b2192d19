"""Mutants of session 41's grader and quantizer code (git diff 752745f a0cbe3b) that no test
killed now fail.

Page count hint (grading/page_count_hints.py): a fault of a full block (not a sequence's
partial last one) is named too (the mutant that took keys_needed as first_query + threads - 1
named partial blocks only); a fault with no block known is passed on, not a TypeError (the
mutant that dropped `not block`); two pages read "2 pages" (one that pluralised past 2 only).
Last page's keys (tile_page_variants.py): a batch holding an empty sequence still gets the
variant (the mutant that dropped its `continue` raised, and the hint was skipped); blocks that
end inside a page take their last page from the block's last key (one key fewer matched only
where blocks are whole pages). Write layout (write_layout_hints.py): an answer that also wrote
the slots' own scales, or a code outside the overlapping rows, is not told the mistake (the
mutants that took anything outside the stored places, or any value, as unwritten); scales 5%
off are not "the tokens' scales" (rtol 1e-1); a single token in slot 0, and one KV head, show
no layout mistake (the mutants that dropped `rows > 0` or `heads == 1`); slot-only scales are
named whichever head wrote last (the mutant that tried head 0 alone). compare.py: an output of
another shape than the expected matches no variant, and no error (the mutant that dropped the
candidate's shape test); a variant is matched on the mask alone (the mutant whose _wrong
ignored the mask); matches does not broadcast (the mutant that dropped its shape test).
checks_system_errors.raised_by_the_pool: an error never raised tells nothing (None, not
False). escaped_errors.raised_by_stub on a sandbox reply without the statement's reading: the
quoted line alone is read (the mutant that read the whole "(in your code, line 7: ...)"), a
line whose text is unknown is the stub, "" is not (mutants that dropped `if not where`, or the
`not text.strip()` of remote_errors.names_not_implemented). decode_variants.spare_page_padding:
a table holding every page gives None (the mutant that dropped the test raised IndexError),
and the padding points at a spare page of finite values. kernel_hints.rounding_hint: each of
the three narrow dot products is named beside padding rows never written (mutants that dropped
`mask=valid`, the __half rounding of each product, or a NARROW_DOTS entry). wire_bytes: kv_read
divided by world_size at the end (not the head count twice) is named (the mutant that dropped
the `kv_read // world` variant).
"""
from types import SimpleNamespace

import numpy as np
import pytest

from pagedattn_lab import OutOfPagesError
from pagedattn_lab.cpu.errors import KernelFault
from pagedattn_lab.grading.checks_system_errors import raised_by_the_pool
from pagedattn_lab.grading.compare import diagnose, fitting_hints, matches
from pagedattn_lab.grading.decode_variants import spare_page_padding
from pagedattn_lab.grading.escaped_errors import raised_by_stub
from pagedattn_lab.grading.kernel_hints import ROUNDING_HINT, rounding_hint
from pagedattn_lab.grading.kernel_runner import poisoned
from pagedattn_lab.grading.page_count_hints import page_count_fault_hint
from pagedattn_lab.grading.tile_page_variants import last_page_keys
from pagedattn_lab.grading.variants import attention_variant
from pagedattn_lab.grading.write_layout_hints import (codes_by_head_offset_hint, scale_at_head_hint,
                                                      slot_only_hint)
from tests.check_helpers import _flat, run_check, solution_of

_ROUNDS = "the page count rounds up wrongly"


def _prob(seq_lens, page_size, max_pages):
    return SimpleNamespace(seq_lens=np.asarray(seq_lens),
                           shape={"page_size": page_size, "max_pages": max_pages})


def _fault(block, index, buffer="block_tables"):
    return KernelFault("read past block_tables", block=block, buffer=buffer, index=index)


# ---- page count read off a fault ---------------------------------------------------------------

def test_a_full_block_reading_past_its_pages_is_told_the_count_rounds_up():
    """Sequence 1 (8 keys, 2 pages of 4) is the table's last row: its second block of 4
    queries needs keys 0..7 and reads entry 2 of the row, one past the table's end."""
    hint = page_count_fault_hint(_fault((1, 0, 1), 4), _prob([5, 8], 4, 2), threads=4)
    assert hint is not None and _ROUNDS in hint
    assert "needs keys 0..7, exactly 2 pages of 4" in hint


def test_a_fault_with_no_block_known_is_passed_on():
    assert page_count_fault_hint(_fault(None, 4), _prob([5, 8], 4, 2), threads=4) is None


# ---- the last page's keys summed as values -----------------------------------------------------

def _last_page_keys_by_query(case, block_queries):
    """last_page_keys written query by query: query t's block needs keys up to
    min(n, its block's end); the keys on that key's page are weighed as values."""
    q, k_cache, v_cache = case.q, case.k_cache, case.v_cache
    _, page_size, kv_heads, _ = k_cache.shape
    group = q.shape[2] // kv_heads
    out = np.zeros(q.shape)
    for b, n in enumerate(case.seq_lens):
        for t in range(n):
            last_page = (min(n, (t // block_queries + 1) * block_queries) - 1) // page_size
            for h in range(q.shape[2]):
                rows = [(case.block_tables[b][j // page_size], j % page_size) for j in range(t + 1)]
                keys = np.array([k_cache[p, s, h // group] for p, s in rows], np.float64)
                values = np.array([(k_cache if j // page_size == last_page else v_cache)
                                   [p, s, h // group] for j, (p, s) in enumerate(rows)])
                logits = keys @ q[b, t, h] * case.scale
                w = np.exp(logits - logits.max())
                out[b, t, h] = (w / w.sum()) @ values
    return out


def _case(seq_lens, page_size=2, max_pages=4, heads=2, kv_heads=1, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    pages = len(seq_lens) * max_pages
    return SimpleNamespace(
        q=rng.standard_normal((len(seq_lens), max(seq_lens), heads, dim)),
        k_cache=rng.standard_normal((pages, page_size, kv_heads, dim)),
        v_cache=rng.standard_normal((pages, page_size, kv_heads, dim)),
        block_tables=rng.permutation(pages).reshape(len(seq_lens), max_pages),
        seq_lens=np.asarray(seq_lens), scale=0.5)


def test_last_page_keys_of_a_batch_with_an_empty_sequence():
    case = _case([0, 7])
    got = last_page_keys(case, block_queries=4)
    np.testing.assert_allclose(got, _last_page_keys_by_query(case, 4), rtol=1e-12, atol=1e-12)
    assert not got[0].any()


def test_last_page_keys_of_blocks_that_end_inside_a_page():
    """Blocks of 3 queries, pages of 2: block 0 needs keys 0..2, so its last page is page 1
    (key 2 alone), not page 0."""
    case = _case([8])
    np.testing.assert_allclose(last_page_keys(case, block_queries=3),
                               _last_page_keys_by_query(case, 3), rtol=1e-12, atol=1e-12)


# ---- per-token scales stored at k_scale[head] --------------------------------------------------

def test_scales_also_written_at_their_own_entries_are_not_told_those_are_never_written():
    """Slots 1..3 of 2 heads: an answer that wrote every scale both at k_scale[slot *
    num_kv_heads + head] and at k_scale[head] (slot 0's entries, the last token's there)."""
    want = np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 2, 2)   # pages, page_size, heads
    rows = np.array([1, 2, 3])
    at_head_only = np.full(want.shape, np.nan, np.float32)
    at_head_only.reshape(-1)[:2] = want.reshape(-1, 2)[3]
    assert scale_at_head_hint(at_head_only, want, rows) is not None   # (the mistake alone)
    both = want.copy()
    both.reshape(-1)[:2] = want.reshape(-1, 2)[3]
    assert scale_at_head_hint(both, want, rows) is None


def test_one_kv_head_is_never_told_its_heads_overwrite_each_other():
    """One KV head: k_scale[slot] is the right entry, so live rows that fit it are right, and
    what is wrong (a scale written for an unused slot) is another mistake."""
    want = np.full((2, 2, 1), np.nan, np.float32)
    rows = np.array([0, 1, 2])
    want.reshape(-1)[rows] = [0.5, 0.25, 2.0]
    got = want.copy()
    got.reshape(-1)[3] = 1.0
    assert slot_only_hint(got, want, 1, rows) is None
    codes = np.full((2, 2, 1, 3), 85, np.int8)
    codes.reshape(-1, 3)[rows] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    written = codes.copy()
    written.reshape(-1, 3)[3] = 0
    assert slot_only_hint(written, codes, 1, rows, 3) is None


def test_slot_only_scales_are_named_whichever_head_wrote_last():
    """k_scale[slot]: slot s's entry holds the last-writing head's scale, head 1's here."""
    want = np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 2, 2)
    rows = np.array([0, 1, 2, 3])
    got = np.full(want.shape, np.nan, np.float32)
    got.reshape(-1)[rows] = want.reshape(-1, 2)[rows, 1]
    assert "not k_scale[slot]" in slot_only_hint(got, want, 2, rows)


def _scales_at_head(want, rows, factor=1.0):
    """What storing every live token's scales at k_scale[head] leaves (the last token's)."""
    got = np.full(want.shape, np.nan, np.float32)
    got.reshape(-1)[:want.shape[-1]] = want.reshape(-1, want.shape[-1])[rows[-1]] * factor
    return got


def test_scales_at_k_scale_head_must_be_the_tokens_own():
    """Scales 5% off stored at k_scale[head] are not the tokens' scales: no evidence of
    where they went."""
    want = np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 2, 2)
    rows = np.array([1, 2, 3])
    assert scale_at_head_hint(_scales_at_head(want, rows), want, rows) is not None
    assert scale_at_head_hint(_scales_at_head(want, rows, 1.05), want, rows) is None


def test_a_single_token_in_slot_0_is_not_told_its_scales_went_to_k_scale_head():
    """Slot 0's entries are k_scale[head]: a batch of one token there shows nothing."""
    want = np.full((2, 2, 2), np.nan, np.float32)
    want.reshape(-1)[:2] = [0.5, 0.25]
    assert scale_at_head_hint(want.copy(), want, np.array([0])) is None


def _codes(heads, dim=3, slots=4):
    codes = np.full((2, slots // 2, heads, dim), 85, np.int8)
    codes.reshape(-1)[:] = np.arange(codes.size) % 50
    return codes


def test_codes_one_element_apart_with_other_writes_are_not_named():
    """Codes of (slot, head) at k_cache[slot * head_dim + head] fit that mistake only where
    nothing else was written: a code stored elsewhere too is other evidence."""
    want = _codes(2)
    rows = np.array([0, 1, 2, 3])
    got = np.full(want.shape, 85, np.int8)
    flat = got.reshape(-1)
    for s in rows:
        for h in range(2):
            flat[s * 3 + h: s * 3 + h + 3] = want[s // 2, s % 2, h]
    assert codes_by_head_offset_hint(got, want, rows) is not None
    flat[-1] = 0
    assert codes_by_head_offset_hint(got, want, rows) is None


def test_codes_of_one_kv_head_are_never_told_they_overlap():
    """One KV head: slot * head_dim + head is the right row, so codes that fit it are right."""
    want = _codes(1)
    assert codes_by_head_offset_hint(want.copy(), want, np.array([0, 1, 2, 3])) is None


# ---- compare: which variant an output matches --------------------------------------------------

def test_an_output_of_another_shape_than_the_expected_matches_no_variant_of_the_expected():
    """A transposed output (3, 2) beside variants of the expected shape (2, 3)."""
    expected = np.arange(6.0).reshape(2, 3)
    got = (expected + 1).T.astype(np.float32)
    assert list(fitting_hints(got, expected, [("one off", expected + 1)])) == []


def test_a_variant_matched_on_the_mask_alone():
    """Row 1 is padding (masked out): an output right there or not matches the variant it
    reproduces on row 0."""
    expected = np.arange(6.0).reshape(2, 3)
    variant = expected * 2
    got = np.where([[True], [False]], variant, 123.0)
    mask = np.array([[True], [False]])
    assert diagnose(got, expected, [("twice", variant)], mask=mask) == "twice"
    assert not matches(np.zeros((2, 3)), np.zeros(3))   # (no broadcasting)


# ---- an OutOfPagesError read for who raised it --------------------------------------------------

def test_an_out_of_pages_error_never_raised_tells_nothing():
    assert raised_by_the_pool(OutOfPagesError(1, 0, 5)) is None


# ---- a NotImplementedError sent back by a sandbox that sent no reading of the statement ---------

@pytest.mark.parametrize("where, stub", [
    (" (in your code, line 7: )", True),   # the line's text unknown: taken for the stub
    (" (in your code, line 7: raise NotImplementedError)", True),
    (" (in your code, line 7: return memoryview(x.astype(np.float16)))", False),
    ("", False),   # no learner's line on the way: a library's error
])
def test_a_sandbox_error_without_a_reading_is_the_stub_by_its_quoted_line(where, stub):
    exc = NotImplementedError("not yet")
    exc.remote_frame = where
    assert raised_by_stub(exc) is stub


# ---- decode: the table's padding pointed at a spare page -----------------------------------------

def _decode_prob(block_tables, pages):
    return SimpleNamespace(k_cache=np.full((pages, 2, 1, 3), np.nan, np.float32),
                           v_cache=np.full((pages, 2, 1, 3), np.nan, np.float32),
                           block_tables=np.asarray(block_tables, np.int32))


def test_a_table_whose_pages_are_all_held_has_no_spare_page():
    prob = _decode_prob([[0, 1], [2, -1]], pages=3)
    assert spare_page_padding(prob, np.random.default_rng(0)) is None


def test_the_padding_points_at_a_spare_page_of_finite_values():
    prob = spare_page_padding(_decode_prob([[0, 1], [3, -1]], pages=4), np.random.default_rng(0))
    np.testing.assert_array_equal(prob.block_tables, [[0, 1], [3, 2]])
    assert prob.block_tables.dtype == np.int32
    assert np.isfinite(prob.k_cache[2]).all() and np.isfinite(prob.v_cache[2]).all()


# ---- the rounding hint ---------------------------------------------------------------------------

def _prefill_prob():
    rng = np.random.default_rng(1)
    return SimpleNamespace(
        q=rng.standard_normal((2, 6, 2, 16)).astype(np.float32) * 2,
        k_cache=rng.standard_normal((4, 4, 2, 16)).astype(np.float32) * 2,
        v_cache=rng.standard_normal((4, 4, 2, 16)).astype(np.float32),
        block_tables=np.array([[0, 1], [2, 3]], np.int32), seq_lens=np.array([3, 6], np.int32),
        scale=0.25)


def _summed_in_half(q_rows, keys):
    total = np.zeros((len(q_rows), len(keys)), np.float16)
    for d in range(q_rows.shape[-1]):
        product = q_rows[:, None, d].astype(np.float32) * keys[None, :, d]
        total = total + product.astype(np.float16)   # (a __half sum of __half products)
    return total.astype(np.float64)


# what a kernel computes for q . k: summed in __half, a __half score, q and k rounded first
_HALF_DOTS = {
    "summed in __half": _summed_in_half,
    "a __half score": lambda q_rows, keys: (q_rows.astype(np.float32) @ keys.T.astype(
        np.float32)).astype(np.float16).astype(np.float64),
    "q and k in __half": lambda q_rows, keys: q_rows.astype(np.float16).astype(np.float64)
    @ keys.T.astype(np.float16).astype(np.float64),
}


@pytest.mark.parametrize("dot", list(_HALF_DOTS))
def test_each_narrow_dot_product_is_told_it_rounds_beside_padding_never_written(dot):
    """The kernel leaves the padding rows (sequence 0's 3..5) holding the check's fill."""
    prob = _prefill_prob()
    args = (prob.q, prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens, prob.scale)
    valid = (np.arange(6)[None, :] < prob.seq_lens[:, None])[:, :, None, None]
    got = poisoned(prob.q.shape)
    got[...] = np.where(valid, attention_variant(*args, dot=_HALF_DOTS[dot]), got)
    assert rounding_hint(got, attention_variant(*args), valid, prob) == ROUNDING_HINT


# ---- wire_bytes: kv_read divided by world_size again ---------------------------------------------

def test_kv_read_divided_by_world_size_again_is_named_in_every_failed_case():
    """The rank's KV heads (num_kv_heads / world_size) already counted, the product divided by
    world_size once more: with 6 KV heads on 3 ranks that is 2/3 of a head, not 6 / 3 / 3 = 0."""
    impl = solution_of("13", "wire_bytes", [(" * head_dim * itemsize\n    return",
                                           " * head_dim * itemsize // world_size\n    return")])
    result, printed = run_check("wire_bytes", impl)
    failed = [case for case in result.cases if not case.passed]
    assert failed, printed
    for case in failed:
        assert "kv_read was divided by world_size twice" in _flat(case.hint), printed
