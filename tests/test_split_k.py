"""Split-K in float64 (`pagedattn_lab.split_k`) and lesson 06's decode pictures.

The partition states merged must give the dense reference for every partition length, and
the decode mapping drawn in lesson 06 must be the one kernels/decode.cu runs.
"""
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import split_k
from pagedattn_lab.grading.cases import paged_problem
from pagedattn_lab.viz import decode_map


@pytest.mark.parametrize("seq_len, part_len", [(1, 4), (13, 4), (16, 4), (5, 16), (0, 3)])
def test_partition_bounds_cover_every_token_once(seq_len, part_len):
    bounds = split_k.partition_bounds(seq_len, part_len)
    tokens = [t for start, end in bounds for t in range(start, end)]
    assert tokens == list(range(seq_len))
    assert all(0 < end - start <= part_len for start, end in bounds)
    assert len(bounds) == -(-seq_len // part_len)


def test_partition_bounds_refuse_bad_sizes():
    with pytest.raises(ValueError, match="part_len"):
        split_k.partition_bounds(10, 0)
    with pytest.raises(TypeError, match="seq_len"):
        split_k.partition_bounds(2.5, 4)


@pytest.mark.parametrize("part_len", [1, 5, 8, 64])
def test_merged_partials_equal_the_reference(part_len):
    prob = paged_problem(3, mode="decode", seq_lens=[37, 1, 16], num_heads=4, num_kv_heads=2,
                         head_dim=8, page_size=8)
    m, l, o = split_k.reference_partials(prob.q, prob.k_cache, prob.v_cache, prob.block_tables,
                                         prob.seq_lens, part_len)
    n_parts = -(-prob.seq_lens.astype(int) // part_len)
    assert m.shape == l.shape == (3, 4, int(n_parts.max()))
    used = np.broadcast_to(np.arange(m.shape[-1]) < n_parts[:, None, None], m.shape)
    assert np.isfinite(m[used]).all() and np.isneginf(m[~used]).all()
    assert np.isnan(o[~used]).all() and (l[~used] == 0).all()
    out = split_k.merge_partials(m, l, o, n_parts[:, None])
    np.testing.assert_allclose(out, prob.expected, rtol=1e-12, atol=1e-12)


def test_merge_ignores_partitions_past_num_parts():
    rng = np.random.default_rng(0)
    scores, values = rng.standard_normal(9) * 3, rng.standard_normal((9, 4))
    states = [split_k.partial_state(scores[a:b], values[a:b])
              for a, b in split_k.partition_bounds(9, 4)]
    m, l, o = (np.array(x) for x in zip(*states))
    w = np.exp(scores - scores.max())
    exact = w @ values / w.sum()
    np.testing.assert_allclose(split_k.merge_partials(m, l, o), exact, rtol=1e-12)
    junk = (np.r_[m, np.nan], np.r_[l, np.nan], np.vstack([o, np.full((1, 4), np.nan)]))
    np.testing.assert_allclose(split_k.merge_partials(*junk, num_parts=3), exact, rtol=1e-12)


def test_layout_is_the_kernels():
    source = pl.kernels.expanded_source("decode.cu")
    # the token a group loads, and the unroll factors, as decode.cu (and its headers) write them
    assert "return min(base + u * ngroups + grp, end - 1);" in source
    unroll = int(re.search(r"#define DECODE_UNROLL (\d+)", source).group(1))
    layout = decode_map.decode_layout(128, np.float16, part_len=512)
    assert (layout.vec, layout.tg, layout.ngroups, layout.unroll) == (8, 16, 8, unroll)
    gqa = decode_map.decode_layout(128, np.float16, group_size=4)
    assert gqa.unroll == int(re.search(r"#define DECODE_UNROLL_GQA (\d+)", source).group(1))


def test_every_token_of_a_partition_has_one_owner_per_step():
    layout = decode_map.decode_layout(64, np.float32, part_len=100)
    seen = {}
    for t in range(100):
        who = layout.owner(t)
        key = (who["step"], who["u"], who["group"])
        assert key not in seen and who["partition"] == 0
        seen[key] = t
        first, last = who["threads"]
        assert last - first + 1 == layout.tg and first // 32 == who["warp"] == last // 32
    assert layout.owner(100)["partition"] == 1


def test_mapping_picture_shows_every_token_once():
    tables = np.array([[3, 1, 0, 2], [4, -1, -1, -1]], dtype=np.int32)
    fig = decode_map.plot_decode_mapping([50, 9], page_size=16, head_dim=64, num_heads=4,
                                         num_kv_heads=2, dtype=np.float32, part_len=32,
                                         block_tables=tables, focus=(0, 1, 1))
    gids = [p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()]
    plt.close(fig)
    tokens = [g for g in gids if g.startswith("tok:") and "outside" not in g]
    assert sorted(int(g.split(":")[1]) for g in tokens) == list(range(32, 50))
    assert len([g for g in gids if g.startswith("block:") and g.endswith("exits")]) == 2
    lanes = [g for g in gids if g.startswith("chunk:") and "lane" in g]
    assert len(lanes) == 16 and lanes[0] == "chunk:64:lane0"   # kv head 1's row starts at 64
