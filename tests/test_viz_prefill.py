"""Lesson 10's pictures and numbers: the bottom-right mask, the packed-mask plot, the tile-work
plot, and the committed prefill benchmark (read through the gids the plots put on patches)."""
import numpy as np
import pytest

from pagedattn_lab.prefill_masks import causal_mask, packed_masks
from pagedattn_lab.viz import prefill_bench, prefill_masks


def gids(fig, prefix):
    return [p.get_gid() for ax in fig.axes for p in ax.patches
            if (p.get_gid() or "").startswith(prefix)]


def test_causal_mask_shapes_and_alignment():
    assert np.array_equal(causal_mask(5, 5), np.tril(np.ones((5, 5), bool)))
    assert causal_mask(1, 9).all() and causal_mask(1, 9).shape == (1, 9)
    assert causal_mask(0, 6).shape == (0, 6)
    chunk = causal_mask(3, 10)                  # 7 cached: row i sees 8 + i keys
    assert chunk.sum(axis=1).tolist() == [8, 9, 10]


def test_packed_mask_plot_draws_every_cell_of_every_sequence():
    indptr, lens = np.array([0, 4, 7, 7, 8]), np.array([4, 9, 3, 5])
    fig = prefill_masks.plot_packed_masks(indptr, lens)
    cells = gids(fig, "mask:")
    masks = packed_masks(indptr, lens)
    assert len(cells) == sum(m.size for m in masks)
    assert sum(g.endswith("visible") for g in cells) == sum(int(m.sum()) for m in masks)
    # packed row numbers: the chunk's rows are 4..6 and its first row sees keys 0..6
    assert "mask:1:4:6:visible" in cells and "mask:1:4:7:hidden" in cells
    assert "mask:3:7:4:visible" in cells


def test_tile_work_plot_skips_keys_past_each_tiles_last_query():
    fig = prefill_masks.plot_tile_work(40, 140, rows=16, kv_tile=64)
    kinds = {":".join(g.split(":")[1:3]): g.split(":")[3] for g in gids(fig, "tile:")}
    # query tile 0 (positions 100..115) needs keys up to 115: K/V tile 2 (128..139) unloaded
    assert kinds["0:2"] == "skip" and kinds["1:2"] == "diag" and kinds["2:2"] == "diag"
    assert kinds["0:0"] == "full" and kinds["0:1"] == "diag" and kinds["2:1"] == "full"


def test_committed_prefill_results_load_as_tflops():
    doc = prefill_bench.load_prefill_results()
    table = prefill_bench.tflops_by_workload(doc)
    row = table["4x2048 8/8 d64"]   # the 2026-12-02 run reached FlashInfer on this row only
    assert {"ours", "flashinfer", "sdpa-dense"} <= set(row)
    assert 0 < row["ours"] < row["flashinfer"]


def test_no_prefill_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="_prefill.json"):
        prefill_bench.load_prefill_results(tmp_path)


def test_tflops_bars_keep_order_and_target():
    fig = prefill_bench.plot_tflops_bars([("before", 26.0), ("ours", 87.0)], title="t",
                                         target=250.0)
    assert gids(fig, "bar:") == ["bar:before", "bar:ours"]
    assert [line.get_xdata()[0] for line in fig.axes[0].lines] == [250.0]
