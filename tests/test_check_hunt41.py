"""Hunt 41: the kernel checks' hints must name only what the evidence shows, and a wrong
answer must not pass.

prefill (04/05): on a fault, the "shifts and masks" hint was chosen from the source text
alone, so a kernel with a harmless `>>` and an unrelated fault (a padding row that reads the
table's -1 padding) was told to stop shifting. The hint now needs evidence: the same case with
every size raised to a power of two comes out right.

tile_work (10): an answer that floors keys / kv_tile but never returns 0 tiles
(max(keys // kv_tile, 1)) is no classic variant as a whole and got the generic hint; every
count it gets wrong is the floor, so it is told to round up.

decode_merge (06): a merge that counts seq_len / part_len + 1 partitions and skips NaN slots
passed (every case's slot past such a row was either NaN or outside max_parts); a merge that
reads one slot past its partitions got no hint naming it. Two launches with different finite
leftovers in that slot show which rows read it.

tiled prefill (05): a causal bound taken per block (keys up to the block's last query) got
"no causal mask" on the one-block case and the generic hint on the others; it has a variant.
"""
import pytest

from pagedattn_lab.grading import checks_kernels as ck
from tests.check_helpers import assert_caught, mutate, run_check, solution_source
from tests.test_check_mistakes_prefill import tiles

POW2 = "only when n is a power of two"


# -- prefill: the shift hint on a fault -----------------------------------------------------------

def _naive(*edits):
    return mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"), list(edits))


NO_PADDING_ROWS = ("    if (t >= seq_lens[b]) {                          // padding row: zeros\n"
                   "        for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;\n"
                   "        return;\n    }\n", "")
HARMLESS_SHIFT = ("    for (int d = 0; d < head_dim; ++d) out[row + d] = acc[d] / running_sum;",
                  "    int half = head_dim >> 1;   // (unused)\n"
                  "    for (int d = 0; d < head_dim; ++d) out[row + d] = acc[d] / running_sum;")


def test_a_fault_with_a_harmless_shift_does_not_earn_the_shift_hint():
    """Padding rows attend past seq_len: key 18 of sequence 1 (13 tokens) is on page 3,
    whose table entry is -1. Raised to powers of two the case faults the same way."""
    comp = ck._Compiled(_naive(NO_PADDING_ROWS, HARMLESS_SHIFT), "prefill_naive", "cpu")
    with pytest.raises(Exception) as info:   # (the fault itself, reported by run_cases)
        ck._prefill_case(comp, 59, threads=16, tiled=False, seq_lens=[20, 13], num_heads=6,
                         num_kv_heads=2, head_dim=24, page_size=6, max_len=21, scale=0.3)
    hint = getattr(info.value, "hint", "")
    assert POW2 not in hint, hint
    assert "k_cache" in str(info.value), info.value


@pytest.mark.parametrize("edit", [
    ("table[j / page_size]", "table[j >> (31 - __clz(page_size))]"),   # faults at page 6
    ("j % page_size;", "(j & (page_size - 1));"),                        # wrong values
], ids=["shift faults", "mask"])
def test_a_shift_that_is_the_mistake_still_gets_the_hint(edit):
    assert_caught("naive_kernel", _naive(edit), POW2, device="cpu")


# -- tile_work: a floor that never gives 0 tiles -----------------------------------------------

def test_a_floor_clamped_to_one_tile_is_told_to_round_up():
    assert_caught("tile_work", tiles(rounding=lambda k, t: max(k // t, 1)), "round up",
                  not_phrases=["one (b, first, kv_tiles) per query tile"])


def test_a_count_wrong_in_mixed_ways_gets_no_rounding_hint():
    """A floor on some tiles and one too many on others: neither rounding explains all."""
    rounding_mixed = lambda k, t: k // t if k > 60 else -(-k // t) + 1   # noqa: E731
    assert_caught("tile_work", tiles(rounding=rounding_mixed), "kv_tiles = ceil",
                  not_phrases=["round up", "one K/V tile too many"])


# -- decode_merge: a slot past the partitions ----------------------------------------------------

def _merge(*edits):
    return mutate(solution_source("06_decode_kernel.ipynb", "SOURCE_MERGE"), list(edits))


N_PARTS = "int n_parts = (seq_lens[b] + part_len - 1) / part_len;"
SUM_LOOP = "        for (int p = 0; p < n_parts; ++p) {"
MAX_LOOP = "for (int p = 0; p < n_parts; ++p) m_all"


def test_a_floor_plus_one_count_that_skips_nan_fails_naming_the_multiple():
    source = _merge((N_PARTS, "int n_parts = min(seq_lens[b] / part_len + 1, max_parts);"),
                    (SUM_LOOP, SUM_LOOP + " if (ml[2 * p] != ml[2 * p]) continue;"))
    result, printed = assert_caught(
        "decode_merge", source, "sequence 1 (seq_len 24, 3 partitions) reads slot 3",
        not_phrases=["sequence 0 (", "sequence 2 ("], device="cpu")
    told = " ".join(printed.split())
    assert "multiple of part_len (8)" in told and "seq_len / part_len + 1" in told, printed


def test_a_max_over_one_slot_too_many_is_named_where_it_happens():
    """fmaxf skips the NaN of slot n_parts: right on NaN, wrong on a reused buffer."""
    source = _merge((MAX_LOOP, "for (int p = 0; p <= n_parts && p < max_parts; ++p) m_all"))
    assert_caught("decode_merge", source, "sequence 0 (seq_len 40, 3 partitions) reads slot 3",
                  not_phrases=["multiple of part_len", "all max_parts"], device="cpu")


def test_the_merge_solution_passes():
    result, printed = run_check("decode_merge", _merge(), device="cpu")
    assert result.passed, printed


# -- tiled prefill: a causal bound taken per block ------------------------------------------------

def test_a_causal_bound_per_block_is_named():
    """Every query of a block attends up to the block's last query: case 1 (11 tokens, one
    block) cannot tell it from no mask; the longer cases got only the generic hint."""
    source = mutate(solution_source("05_tiled_kernel.ipynb", "SOURCE_TILED"), [(
        "int last = min(n_keys, t - first_key + 1);",
        "int last = min(n_keys, first_query + (int)blockDim.x - first_key);")])
    assert_caught("tiled_kernel", source, "the causal bound is the block's", device="cpu")
