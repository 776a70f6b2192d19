"""Leftovers of the last session (helper 112): describe_translation names the size that is
wrong; the tile check names a page looked up one token early; the prefill check shows a
too-short array in the standard form."""
import pytest

from pagedattn_lab.addressing import Translation, translate
from pagedattn_lab.viz import describe_translation

# token 4 of a sequence whose pages are [3, 5, 7], page size 4, 2 KV heads of 8 dims, head 1,
# dim 3: virtual page 1, offset 0, physical page 5, slot 20, element (20*2 + 1)*8 + 3 = 331
T = translate([3, 5, 7], 4, 4, 2, 8, kv_head=1, dim=3)


@pytest.mark.parametrize("sizes, match", [
    ((8, 2, 8, 1, 3), r"^page_size: expected 4, got 8, which puts token 4 at virtual page 0, "
                      r"offset 4, slot 44 \(t has 1, 0, 20\)$"),
    ((4, 3, 8, 1, 3), r"^num_kv_heads: expected 2, got 3 \(num_kv_heads 3, head_dim 8, kv_head "
                      r"1, dim 3 give element offset 491 for slot 20; t has 331\)$"),
    ((4, 2, 9, 1, 3), r"^head_dim: expected 8, got 9 \("),
    ((4, 2, 8, 1, 4), r"^dim: expected 3, got 4 \("),
    ((4, 2, 8, 0, 3), r"^kv_head: expected 1, got 0 \("),
    # two sizes wrong: no one alone explains t, so all four head sizes are named
    ((4, 2, 8, 0, 7), r"^num_kv_heads, head_dim, kv_head, dim: num_kv_heads 2, head_dim 8, "
                      r"kv_head 0, dim 7 give element offset 327 for slot 20; t has 331, which "
                      r"no one of them alone explains$"),
])
def test_describe_translation_names_the_wrong_size(sizes, match):
    assert describe_translation(T, 4, 2, 8, 1, 3).endswith("(20 * 2 + 1) * 8 + 3 = 331")
    with pytest.raises(ValueError, match=match):
        describe_translation(T, *sizes)


def test_describe_translation_names_every_size_the_evidence_fits():
    # token 2 on page 0, slot 2: element (2*2 + 1)*8 + 3 = 43 is also (2*2 + 0)*10 + 3
    t = translate([0], 2, 4, 2, 8, kv_head=1, dim=3)
    with pytest.raises(ValueError, match=r"^head_dim or kv_head: expected head_dim 10 or "
                                         r"kv_head 1 \(either alone explains t\), got head_dim "
                                         r"8, kv_head 0 \("):
        describe_translation(t, 4, 2, 8, 0, 3)
    # on page 0 every page size past the token gives t: only a smaller one is wrong
    assert describe_translation(t, 8, 2, 8, 1, 3).startswith("token 2: virtual page = 2 // 8")
    with pytest.raises(ValueError, match=r"^page_size: expected a page size > 2, got 2,"):
        describe_translation(t, 2, 2, 8, 1, 3)


def test_describe_translation_says_a_made_up_t_fits_no_page_size():
    t = Translation(5, 1, 1, 2, 10, 0)   # token 5 at offset 1 of page 1 (size 4) but slot 10
    with pytest.raises(ValueError, match=r"^page_size: expected a page size that gives t's "
                                         r"pages \(none does: t is no translation\), got 4"):
        describe_translation(t, 4, 1, 1)


def test_tile_check_names_a_page_looked_up_one_token_early():
    # the page of token t as (t - 1) / page_size: case 1 (pages of 4) shows only this mistake;
    # on case 3 (17 tokens, pages of 16) token 16 reads token 0's K, as it does when the tile
    # start is left out, so both are named there, not the tile start alone
    from tests.test_check_mistakes import mutate, run_check, solution_source
    from tests.test_check_mistakes_tc_decode import NOTEBOOK
    source = mutate(solution_source(NOTEBOOK, "SOURCE_TILE"),
                    [("block_table[t / page_size]", "block_table[(t - 1) / page_size]")])
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    assert not result.passed
    flat = " ".join(printed.split())
    case1, rest = flat.split("FAIL case 2", 1)
    case3 = rest.split("FAIL case 3", 1)[1]
    assert "yours looks token t's page up as (t - 1) / page_size" in case1
    assert "these mistakes give the same" not in case1
    assert "these mistakes give the same scores here" in case3
    assert "(t - 1) / page_size" in case3 and "every tile read tokens 0..15" in case3


def test_prefill_check_shows_a_short_array_in_the_standard_form():
    # a per-thread array shorter than head_dim: the executor's account without its raw
    # "kernel '...':" prefix, then expected, got and the hint, as every other failure
    from tests.test_check_mistakes import mutate, run_check, solution_source
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("float acc[MAX_HEAD_DIM];", "float acc[32];")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert not result.passed
    flat = " ".join(printed.split())
    assert ("out-of-bounds index 32 of array `acc[d]` at line 27 (float [32]: valid 0..31) by "
            "thread (0,0,0) of block (0,0,0)") in flat
    assert "kernel 'prefill_naive':" not in flat
    assert ("expected: indices 0..127 (head_dim 128) of a thread's arrays over the head "
            "dimension got: index 32 of `acc[d]` (float [32]) hint: acc[32] holds 32 values") \
        in flat



def test_the_gqa_rule_is_worded_alike_by_every_hint_that_states_it():
    from pagedattn_lab.grading import checks_decode, checks_tp, quant_variants, variants
    from pagedattn_lab.grading.compare import kv_head_rule
    rule = "query head h reads KV head h / (num_heads / num_kv_heads)"
    assert kv_head_rule() == rule
    assert kv_head_rule("//") == "query head h reads KV head h // (num_heads // num_kv_heads)"
    decode = {str(bugs.get("kv_map")): hint for hint, bugs in checks_decode._PARTITION_MISTAKES}
    assert (decode["mod"], decode["same"], decode["by_kv_heads"]) == (
        variants.BY_MOD_HINT, variants.SAME_HEAD_HINT, variants.BY_KV_HEADS_HINT)
    assert all(h.startswith(rule + " (GQA") or h.startswith(rule + ", not")
               for h in (variants.BY_MOD_HINT, variants.SAME_HEAD_HINT, variants.BY_KV_HEADS_HINT))
    tp = [h for h, _ in checks_tp._split_variants(1, 2, 8, 4) if "% num_kv_heads" in h]
    assert len(tp) == 1 and tp[0].startswith(kv_head_rule("//") + " = h // group"), tp
    quant = [h for bug, h in quant_variants.READ_MISTAKES
             if isinstance(bug, tuple) and bug[0] in ("kv_head", "scale_head")]
    assert len(quant) == 4 and all(rule in h for h in quant), quant
