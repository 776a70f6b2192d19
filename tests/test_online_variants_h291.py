"""The online softmax of the mistake models (helper 291): attention_variant's and the split-K
partitions' were two copies that differed on a NaN score. attention_variant skipped a
non-finite score as if the mask had left the key out, so a key read from a slot holding NaN
gave a finite row, where a kernel (fmaxf keeps the max, exp(NaN) makes l and acc NaN), the
same model without an online bug, and the partitions' copy all give NaN. Now one
implementation (online_variants.online_state) serves both; only -inf (a masked key) is
skipped."""
import numpy as np
import pytest

from pagedattn_lab.grading.cases import PagedProblem
from pagedattn_lab.grading.decode_variants import partials_variant
from pagedattn_lab.grading.variants import attention_variant

SCALE = 0.3
SHARED_BUGS = ("acc", "sum", "max0", "acc_reset", "sum_reset")   # both models' online bugs
ALL_BUGS = SHARED_BUGS + ("both", "old_max", "no_div", "new_term", "max_stuck")


def _problem(nan_key: bool):
    """One sequence of 6 tokens in pages [2, 0] of 4 slots, 2 heads of 8 dims (one KV head
    each); with `nan_key`, token 1's key of KV head 0 is NaN."""
    rng = np.random.default_rng(291)
    k = rng.standard_normal((3, 4, 2, 8))
    v = rng.standard_normal((3, 4, 2, 8))
    if nan_key:
        k[2, 1, 0, 3] = np.nan
    return PagedProblem(rng.standard_normal((1, 2, 8)), k, v, np.array([[2, 0]], np.int32),
                        np.array([6], np.int32), SCALE, "decode")


def _decode(prob, **bug):
    return attention_variant(prob.q, prob.k_cache, prob.v_cache, prob.block_tables,
                             prob.seq_lens, SCALE, mode="decode", **bug)


@pytest.mark.parametrize("bug", (None,) + ALL_BUGS)
def test_a_nan_key_makes_its_heads_row_nan_whatever_the_online_bug(bug):
    out = _decode(_problem(nan_key=True), online_bug=bug)
    assert np.isnan(out[0, 0]).all(), "the row of the head that read the NaN key"
    # the other head read no NaN: its row is the one of the cache without it
    np.testing.assert_array_equal(out[0, 1], _decode(_problem(nan_key=False),
                                                     online_bug=bug)[0, 1])


@pytest.mark.parametrize("bug", SHARED_BUGS)
def test_a_nan_key_makes_its_partition_nan_and_leaves_the_next_one(bug):
    m, l, o = partials_variant(_problem(nan_key=True), 4, online_bug=bug)
    assert np.isnan(o[0, 0, 0]).all()
    assert np.isfinite(m[0, 0, 0])   # (fmaxf: a NaN score leaves the running max as it was)
    assert np.isfinite(o[0, 0, 1]).all() and np.isfinite(o[0, 1]).all()


@pytest.mark.parametrize("bug", SHARED_BUGS)
def test_one_partition_of_the_whole_sequence_is_the_decode_models_row(bug):
    prob = _problem(nan_key=False)
    _, _, o = partials_variant(prob, 8, online_bug=bug)
    np.testing.assert_allclose(o[0, :, 0], _decode(prob, online_bug=bug)[0], rtol=1e-12)
