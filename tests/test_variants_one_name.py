"""The prefill and the decode models of the classic mistakes give one mistake one name: the
page id not multiplied by page_size is "unscaled" in both (it was "page_plus" in one)."""
import numpy as np

from pagedattn_lab.grading.cases import paged_problem
from pagedattn_lab.grading.decode_variants import partials_variant
from pagedattn_lab.grading.variants import attention_variant


def test_the_unscaled_page_is_one_mistake_under_one_name_in_both_models():
    prob = paged_problem(5, mode="decode", seq_lens=[9, 30, 1], num_heads=4, num_kv_heads=2,
                         head_dim=8, page_size=4)
    args = (prob.q, prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens, prob.scale)
    right = attention_variant(*args, mode="decode")
    prefill_model = attention_variant(*args, mode="decode", slot_bug="unscaled")
    decode_model = partials_variant(prob, 64, paging="unscaled")[2][:, :, 0]  # one partition
    assert not np.allclose(prefill_model, right)
    np.testing.assert_allclose(prefill_model, decode_model, rtol=1e-12, atol=0)
