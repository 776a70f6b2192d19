"""Hunt 193: two refusals that named the wrong thing, and one kept through a refactor.

- The engine's KVStore, whose one page (all layers) is past the memory, was refused naming
  num_pages, "use fewer pages": no number of pages fits. It names the page's sizes now, as
  PagedKVCache does (page_bytes.check_page_memory).
- plot_packed_masks summed its cells in int64: past 2**63 the sum wrapped around, passed the
  picture's limit, and the batch was refused by the masks' memory instead.
- KVCacheManager's admit checks its hits against the prompt's chained block hashes, now
  chained in one place with hashes(): a hit on the prompt's partial last block is refused
  still (a partial block is never cached: its page holds another prompt's tokens).
"""
import numpy as np
import pytest

from pagedattn_lab.engine import tiny_config
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.kv_store import KVStore
from pagedattn_lab.engine.request import Request, SamplingParams
from pagedattn_lab.viz.prefill_masks import plot_packed_masks
from tests.test_advanced_grid_hunt183 import admitted, pool_state
from tests.test_leftovers_hunt186 import one_mib  # noqa: F401 - the fixture


@pytest.mark.parametrize("page_size, kv_dtype, dtype_named", [
    (2**22, None, "float32"),
    (2**24, "int8", "int8"),
], ids=["float32", "int8"])
def test_an_engine_store_whose_one_page_is_past_the_memory_names_the_page_sizes(
        one_mib, page_size, kv_dtype, dtype_named):
    # tiny_config: 2 layers, 2 KV heads of 16; 2**22 float32 tokens a page take 2 GiB
    with pytest.raises(ValueError, match=(
            r"^page_size x num_key_value_heads x head_dim x num_hidden_layers: one page of the "
            rf"2 layers \(K and V, {dtype_named}\) would take \d+\.\d GiB, more than the 1\.0 "
            r"MiB of memory this machine has; no number of pages fits: use smaller sizes$")):
        KVStore(tiny_config(), 1, page_size, np.float32, np, kv_dtype=kv_dtype)


def test_an_engine_store_of_too_many_small_pages_still_names_num_pages(one_mib):
    # a page of 16 tokens x 2 heads x 16 float32, K and V, 2 layers: 8 KiB; 129 are past 1 MiB
    with pytest.raises(ValueError, match=r"^num_pages: the KV pages of 2 layers"):
        KVStore(tiny_config(), 129, 16, np.float32, np)
    assert KVStore(tiny_config(), 128, 16, np.float32, np).num_pages == 128


def test_a_packed_batch_of_more_cells_than_int64_holds_is_refused_as_a_picture():
    with pytest.raises(ValueError, match=r"^qo_indptr, seq_lens: the picture would draw "
                                         r"18446744073709551616 mask cells, more than the"):
        plot_packed_masks([0, 2**32], [2**32])


def test_admit_refuses_a_hit_on_the_prompts_partial_last_block():
    kv = KVCacheManager(8, 4)
    first = admitted(kv, 0, list(range(1, 10)))   # blocks 0 and 1 cached
    pages = list(first.pages)
    kv.free(first)
    req = Request(1, [1, 2, 3, 4, 5, 6], SamplingParams())   # block 1 (tokens 4, 5) partial
    assert kv.cached_prefix(req) == ([pages[0]], 4)
    before = pool_state(kv), req.save()
    with pytest.raises(ValueError, match=rf"^hits\[1\]: page {pages[1]} does not cache "
                                         r"request 1's block 1 \(its tokens 4\.\.7\)"):
        kv.admit(req, pages[:2], 5, 1)
    assert (pool_state(kv), req.save()) == before
