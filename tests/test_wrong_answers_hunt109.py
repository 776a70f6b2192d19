"""Hunt 109: plausible learner mistakes in workbooks 05-08 that the checks failed with a hint
naming another mistake, restating the spec, or saying nothing.

Each answer is the solution with one learner's mistake; the test asserts that the check fails
it with a hint that names that mistake (kernels on the CPU executor).
"""

import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import assert_caught, mutate, run_check, solution_source
from tests.serve_loops import serve_loop

TILED = ("05_tiled_kernel.ipynb", "SOURCE_TILED")
DECODE = "06_decode_kernel.ipynb"


# -- workbook 05: tile_pages and tiled_launch ------------------------------------------------

def test_tile_pages_floor_plus_one_is_named_on_the_middle_tile():
    """keys // page_size + 1 for the ceil: on the middle tile (keys 32 on pages of 8) it gives
    the whole sequence's 5 pages, whose hint ("the queries stop at q_start + tile_q - 1")
    named another mistake."""
    def tile_pages(seq_len, q_start, tile_q, page_size):
        if q_start >= seq_len:
            return []
        return list(range(min(seq_len, q_start + tile_q) // page_size + 1))

    result, printed = run_check("tile_pages", tile_pages)
    middle = next(c for c in result.cases if c.name == "a middle tile")
    assert not middle.passed and "one page too many" in middle.hint, printed
    assert "queries stop" not in middle.hint, printed


def test_tile_pages_whole_sequence_is_still_named_alone():
    def tile_pages(seq_len, q_start, tile_q, page_size):
        return list(range(-(-seq_len // page_size))) if q_start < seq_len else []

    result, printed = run_check("tile_pages", tile_pages)
    middle = next(c for c in result.cases if c.name == "a middle tile")
    assert not middle.passed and "queries stop" in middle.hint, printed
    assert "one page too many" not in middle.hint, printed


@pytest.mark.parametrize("tiles", [lambda n, t: n // t + 1, lambda n, t: (n + t) // t],
                         ids=["n // t + 1", "(n + t) // t"])
def test_tiled_launch_one_tile_too_many_is_named(tiles):
    def tiled_launch(batch, num_heads, max_len, tile_q, page_size, head_dim):
        return (tiles(max_len, tile_q), num_heads, batch), (tile_q,), 2 * page_size * head_dim * 4

    assert_caught("tiled_launch", tiled_launch, "one tile too many",
                  not_phrases=("grid = (ceil(max_len / tile_q)",))


# -- workbook 05: the tiled kernel's online softmax ------------------------------------------

@pytest.mark.parametrize("edits, phrase", [
    ([("acc[d] = acc[d] * rescale + weight * v_tile[j * head_dim + d]",
       "acc[d] = acc[d] + rescale * weight * v_tile[j * head_dim + d]")],
     "multiplies the accumulator, not the new key's term"),
    ([("                running_max = new_max;\n", "")], "the running max is never updated"),
    ([("int last = min(n_keys, t - first_key + 1);", "int last = min(n_keys, t + 1);")],
     "compares the tile's index j with t"),
], ids=["rescale on the new term", "running max never updated", "causal test without first_key"])
def test_tiled_online_softmax_mistakes_are_named(edits, phrase):
    assert_caught("tiled_kernel", mutate(solution_source(*TILED), edits), phrase, device="cpu",
                  not_phrases=("the race check found no race",))


# -- workbook 06: the merges and the partition kernel ----------------------------------------

def _merge(weights):
    def merge_partitions(m, l, o):
        w = weights(m, l)
        return w @ o / w.sum()
    return merge_partitions


@pytest.mark.parametrize("weights, phrase", [
    (lambda m, l: l * np.exp2(m - m.max()), "not l_p * 2^(m_p - m)"),
    (lambda m, l: np.exp(m + np.log2(l) - (m + np.log2(l)).max()), "log2(l_p) mixes two bases"),
], ids=["exp2", "lse in log2"])
def test_merge_partitions_wrong_base_is_named(weights, phrase):
    assert_caught("merge_partitions", _merge(weights), phrase,
                  not_phrases=("must equal softmax(all scores)",))


MERGE_WEIGHT = "float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);"


@pytest.mark.parametrize("weight, phrase", [
    ("float w = ml[2 * p + 1] * exp2f(ml[2 * p] - m_all);", "not l_p * 2^(m_p - m)"),
    ("float w = expf(ml[2 * p] + log2f(ml[2 * p + 1]) - m_all);", "log2(l_p) mixes two bases"),
], ids=["exp2f", "lse in log2f"])
def test_decode_merge_wrong_base_is_named(weight, phrase):
    source = mutate(solution_source(DECODE, "SOURCE_MERGE"), [(MERGE_WEIGHT, weight)])
    assert_caught("decode_merge", source, phrase, device="cpu",
                  not_phrases=("out[b, h] = sum_p w_p o_p",))


def test_decode_merge_lse_weights_in_base_e_pass():
    """exp(m_p + log(l_p) - m): the log-sum-exp form, right (l_p > 0 for every partition)."""
    source = mutate(solution_source(DECODE, "SOURCE_MERGE"),
                    [(MERGE_WEIGHT, "float w = expf(ml[2 * p] + logf(ml[2 * p + 1]) - m_all);")])
    result, printed = run_check("decode_merge", source, device="cpu")
    assert result.passed, printed


PARTITION_MISTAKES = [
    ("m stored as the log-sum-exp",
     [("part_ml[slot_out * 2] = m;", "part_ml[slot_out * 2] = m + logf(l);")],
     "m is m + log(l), the partition's log-sum-exp"),
    ("partitions start at p * page_size",
     [("int start = part * part_len;", "int start = part * page_size;")],
     "starts at token p * part_len, not p * page_size"),
    ("no warp reduction of the dot",
     [("        for (int offset = 16; offset > 0; offset /= 2)     "
       "// every lane gets the full dot\n"
       "            dot += __shfl_xor_sync(0xffffffffu, dot, offset);\n", "")],
     "each lane summed only its own dims of the dot product"),
]


@pytest.mark.parametrize("edits, phrase", [m[1:] for m in PARTITION_MISTAKES],
                         ids=[m[0] for m in PARTITION_MISTAKES])
def test_decode_partition_mistakes_are_named(edits, phrase):
    assert_caught("decode_partition", mutate(solution_source(DECODE, "SOURCE_PARTITION"), edits),
                  phrase, device="cpu", not_phrases=("must be softmax(scores of partition p)",
                                                     "holds (m, l): m = max"))


# -- workbook 07: decode_step and serve ------------------------------------------------------

class OnePagePerSequence(pl.PagedAttentionManager):
    """Counts one new page for every sequence of the step."""

    def decode_step(self, seq_ids, q, k, v):
        seq_ids = list(seq_ids)
        alloc = self.cache.allocator
        if len(seq_ids) > alloc.num_free:
            raise pl.OutOfPagesError(len(seq_ids), alloc.num_free, alloc.num_pages)
        for i, seq_id in enumerate(seq_ids):
            self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])
        tables, lens = self.cache.block_tables(seq_ids)
        return pl.paged_attention_decode(self.xp.asarray(q, dtype=self.cache.dtype),
                                         self.cache.k_cache, self.cache.v_cache, tables, lens,
                                         self.scale)


def test_decode_step_one_page_per_sequence_is_named_on_the_fork():
    """The fork's step (2 sequences, 1 page needed) raised requested 2: its hint restated the
    error's arguments."""
    result, printed = run_check("decode_step", OnePagePerSequence)
    fork = next(c for c in result.cases if "fork" in c.name)
    assert not fork.passed and "one page for each of the step's 2 sequences" in fork.hint, \
        printed


@pytest.mark.parametrize("admit, phrase", [
    (lambda a: a.total <= a.free - a.whole, "yours counts their whole totals"),
    (lambda a: a.total < a.free - a.left, "yours refuses it with <"),
    (lambda a: a.prompt <= a.free - a.left,
     "the prompt's pages alone leave its new tokens no room"),
], ids=["promised whole totals", "strict <", "prompt pages only"])
def test_serve_admission_mistakes_are_named(admit, phrase):
    assert_caught("serve", serve_loop(admit), phrase)


def test_serve_promised_whole_totals_is_not_blamed_on_shifts():
    """On pages of 6 the whole totals give the order a shift's ceil gives: the hint named
    shifts alone, which this loop never used."""
    result, printed = run_check("serve", serve_loop(lambda a: a.total <= a.free - a.whole))
    case = next(c for c in result.cases if c.params.get("page_size") == 6)
    assert not case.passed and "yours counts their whole totals" in case.hint, printed


# -- workbook 08: kv_bytes -------------------------------------------------------------------

def test_kv_bytes_counting_sequences_not_tokens_is_named():
    """len(seq_lens) for the tokens: the hint was empty."""
    def kv_bytes(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
        return len(seq_lens) * 2 * num_kv_heads * head_dim * np.dtype(dtype).itemsize
    assert_caught("kv_bytes", kv_bytes, "sum(seq_lens), not len(seq_lens)")
