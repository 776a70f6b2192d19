"""The lesson-08 flush comparison: loading, the per-row figures and the chart."""
import json

import pytest

from pagedattn_lab import viz
from pagedattn_lab.viz import l2_flush


def _write(tmp_path, ms):
    (tmp_path / "flush.json").write_text(json.dumps({"copy": 4.2e12, "ms": ms}))
    return viz.load_flush_modes("flush.json", tmp_path)


def test_rows_take_the_best_time_of_each_flush_and_the_write_backs_cost(tmp_path):
    doc = _write(tmp_path, {
        "D64-gqa4": {"write": [0.160, 0.158], "write+read": [0.153, 0.152], "read": [0.151, 0.150]},
        "fp8_e4m3:D64 GQA 32/8": {"write": [0.090, 0.091], "write+read": [0.085, 0.084],
                                  "read": [0.083, 0.082]},
    })
    assert doc["source"] == str(tmp_path / "flush.json")
    gqa, fp8 = viz.flush_rows(doc)
    assert gqa["row"] == "D64-gqa4 (32/8 heads, d128)"
    assert (gqa["write"], gqa["write+read"], gqa["read"]) == (0.158, 0.152, 0.150)
    assert gqa["write_back_us"] == pytest.approx(8.0)
    assert gqa["share"] == pytest.approx(0.008 / 0.150)
    assert fp8["row"] == "fp8 D64 GQA 32/8"
    assert fp8["write_back_us"] == pytest.approx(8.0)


def test_names_the_bench_does_not_know_are_shown_as_they_are():
    assert l2_flush.row_label("contiguous read 307 MB") == "contiguous read 307 MB"
    assert l2_flush.row_label("int8:D64 MHA 32/32") == "int8 D64 MHA 32/32"
    assert l2_flush.row_label("D64-gqa4-d96") == "D64-gqa4-d96 (32/8 heads, d96)"


def test_a_missing_file_is_none_not_an_error(tmp_path):
    assert viz.load_flush_modes("absent.json", tmp_path) is None


def test_the_committed_comparison_shows_the_write_back_on_every_row():
    doc = viz.load_flush_modes()
    if doc is None:
        pytest.skip("benchmarks/results/ is not in this install")
    rows = viz.flush_rows(doc)
    assert len(rows) >= 8
    # What lesson 08 says of it: 7.7-9.7 us on every row, the contiguous read included.
    assert all(7.0 < r["write_back_us"] < 10.5 for r in rows)
    assert any(r["row"].startswith("contiguous read") for r in rows)


def test_the_chart_has_a_bar_per_row_in_each_panel(tmp_path):
    doc = _write(tmp_path, {name: {"write": [0.2], "write+read": [0.19], "read": [0.18]}
                            for name in ("D64", "D64-gqa8", "x")})
    fig = viz.plot_flush_cost(doc)
    left, right = fig.axes
    assert len(left.patches) == len(right.patches) == 3
    assert [t.get_text() for t in left.get_yticklabels()][0].startswith("D64 (32/32 heads")
    assert right.patches[0].get_width() == pytest.approx(100 * 0.02 / 0.18)
