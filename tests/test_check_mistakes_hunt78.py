"""Wrong answers to workbooks 07-13 whose hint blamed a mistake the evidence does not show,
or that a check accepted (a learner's plausible mistakes, fed to the checks).

Each case asserts that the check fails (not "not attempted"), that a failed case's message or
hint holds the phrase naming the mistake and, where the old hint blamed something else alone,
that the hint says the evidence fits both.
"""
import numpy as np

from tests.check_helpers import assert_caught, mutate, schedule_step_answer, solution_source
from tests.test_check_mistakes_system import serve_factory


def test_kv_bytes_group_for_kv_heads_is_named_not_only_the_factor_2():
    """The group (num_heads // num_kv_heads) used as the number of KV heads: on 32/8 heads it
    gives half the bytes, as forgetting V does, and the hint named only the factor 2."""
    def group_as_kv_heads(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
        return int(np.sum(seq_lens)) * 2 * (num_heads // num_kv_heads) * head_dim * \
            np.dtype(dtype).itemsize

    result, printed = assert_caught("kv_bytes", group_as_kv_heads, "is the group")
    gqa = next(c for c in result.cases if c.params.get("heads") == 32)
    assert "these mistakes give the same number here" in gqa.hint, printed
    assert "the factor 2" in gqa.hint and "is the group" in gqa.hint, printed


def test_decode_floor_ms_floor_division_is_named_with_int():
    """Seconds floor-divided (nbytes // rate): 0 where 0.858 ms is right, which int() of the
    milliseconds also gives; the hint named int() alone, not in the learner's code."""
    assert_caught("decode_floor_ms", lambda nbytes, gbs: nbytes // (gbs * 1e9) * 1e3,
                  "int() or // drops the fraction")


def test_tc_tile_scores_k0_loop_one_step_too_far_is_named():
    """`k0 <= head_dim`: the extra step reads past the tiles' rows. On group 1 every score
    that counts was right and row 15 read unwritten shared memory: the hint blamed Q padding
    left unzeroed; on the other cases it blamed ldm."""
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("k0 < head_dim; k0 += 16", "k0 <= head_dim; k0 += 16")])
    result, printed = assert_caught("tc_tile_scores", source, "runs one step too far",
                                    not_phrases=["zero the Q rows", "ldm = head_dim"],
                                    device="cpu")
    assert not result.cases[0].passed and "k0 <= head_dim" in result.cases[0].hint, printed


def _ceil(tokens, page_size):
    return -(-tokens // page_size)


# The lesson's step, with a running request's new pages counted from the pages its computed
# tokens fill (ceil(num_computed / page_size)), not from num_pages.
_step_ignoring_pages_held = schedule_step_answer(
    lambda req, n, page_size: _ceil(req.num_computed + n, page_size)
    - _ceil(req.num_computed, page_size), _ceil)


def test_schedule_step_pages_held_ahead_ignored_is_named():
    """Ignoring the pages a running request holds ahead gave the batch that charging
    ceil(n / page_size) gives, and the hint named that alone."""
    assert_caught("schedule_step", _step_ignoring_pages_held,
                  "counted from the pages its computed tokens fill")


def test_serve_admitting_without_the_promised_pages_is_named():
    """The right order, but a request admitted before the pool had room for it: the hint
    said the requests do not share the steps, which they did."""
    result, printed = assert_caught("serve", serve_factory(promises=False),
                                    "request 4 was admitted with 2 pages free and 2 "
                                    "promised",
                                    not_phrases=["the requests share the steps"])
    assert "after the pages the running sequences will still take" in result.cases[1].hint, \
        printed


def test_kv_scales_epsilon_added_to_every_amax_is_named():
    """(amax + 1e-6) / qmax: the one wrong row was the smallest, and the hint blamed a
    threshold on amax or a floor on the scale, neither in the learner's code."""
    assert_caught("kv_scales", lambda x, qmax: (np.abs(x).max(-1) + 1e-6) / qmax,
                  "an epsilon added to every row's amax",
                  not_phrases=["threshold on amax"])


def test_kv_scales_a_factor_on_every_amax_is_not_named_an_epsilon():
    """amax / (qmax - 1), or amax * 1.001 / qmax: a case whose rows share one amax (every
    largest magnitude -50) shows a factor as well as an added epsilon, and the hint named
    "(amax + 0.4) / qmax", in nobody's code."""
    for impl in (lambda x, qmax: np.abs(x).max(-1) / (qmax - 1),
                 lambda x, qmax: np.abs(x).max(-1) * 1.001 / qmax):
        assert_caught("kv_scales", impl, "scales differ",
                      not_phrases=["an epsilon added to every row's amax"])
