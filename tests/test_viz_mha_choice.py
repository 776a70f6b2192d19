"""Lesson 09's multi-head choice table: loading the measurement and laying it out."""
import json

import pytest

from pagedattn_lab import decode_choice, viz


def test_grid_keeps_the_files_shapes_in_order_and_sorts_head_sizes(tmp_path):
    rows = [{"name": n, "head_dim": d, "batch": 1, "tokens": 1, "tc_over_simt": 1.0}
            for d in (128, 64) for n in ("b", "a")]
    (tmp_path / "m.json").write_text(json.dumps({"l2_flush": "write", "rows": rows}))
    doc = viz.load_mha_choice("m.json", tmp_path)
    assert doc["source"] == str(tmp_path / "m.json")
    shapes, head_dims, grid = viz.mha_choice_grid(doc)
    assert shapes == ["b", "a"] and head_dims == [64, 128]
    assert grid["a", 64] == rows[3]
    assert viz.load_mha_choice("absent.json", tmp_path) is None


@pytest.mark.parametrize("dtype", ["", "_bf16"])
def test_the_rule_picks_the_tensor_cores_only_where_they_measured_ahead(dtype):
    files = [f"2026-12-04_H200_session14_mha_choice{dtype}_{flush}.json"
             for flush in ("write", "read")]
    docs = [viz.load_mha_choice(name) for name in files]
    if None in docs:
        pytest.skip("benchmarks/results/ is not in this install")
    grids = [viz.mha_choice_grid(doc)[2] for doc in docs]
    picked = [key for key, r in grids[0].items()
              if decode_choice.mha_kernel(r["head_dim"], r["batch"], r["tokens"]) == "tensor_core"]
    assert len(picked) >= 30
    # ahead by 3% or more wherever the rule sends a shape to the tensor cores, in both flushes
    assert all(grid[key]["tc_over_simt"] <= 0.97 for grid in grids for key in picked)
