"""The compressed-KV bench's table and chart (viz.quant_bench) on a small synthetic run."""
import json

import matplotlib.pyplot as plt
import pytest

from pagedattn_lab.viz.quant_bench import load_quant_results, plot_quant_bars, quant_table


def doc():
    def row(kv, scheme, ms, fi=None):
        res = {"ours": {"median_ms": ms, "copy_rate_fraction": 0.9, "vs_fp16": ms / 0.6}}
        if fi:
            res["flashinfer-cuda-cores"] = {"median_ms": fi}
        res["cache_write"] = {"error": "RuntimeError: boom"}
        return {"name": "D64 MHA 32/32", "kv_dtype": kv, "scheme": scheme, "results": res}
    return {"meta": {"gpu": "Test GPU", "date": "2026-12-02"},
            "rows": [row("float16", None, 0.6, 0.58), row("fp8_e4m3", "static", 0.33, 0.31),
                     row("int8", "per_token", 0.34)]}


def test_newest_file_table_and_bars(tmp_path):
    for name in ("2026-12-01_X_quant.json", "2026-12-02_X_quant.json"):
        (tmp_path / name).write_text(json.dumps(doc()))
    d = load_quant_results(tmp_path)
    assert d["file"] == "2026-12-02_X_quant.json"
    table = quant_table(d)
    assert "fp8_e4m3 static" in table and "ours 0.330 ms (90% of copy, x0.55)" in table
    assert "cache_write failed" in table
    fig = plot_quant_bars(d)
    gids = {p.get_gid() for p in fig.axes[0].patches}
    assert gids == {"bar:D64 MHA 32/32:ours", "bar:D64 MHA 32/32:flashinfer-cuda-cores"}
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights[-1] == pytest.approx(0.6)
    assert fig.axes[0].lines[0].get_ydata()[0] == pytest.approx(0.33)   # 0.55 x fp16
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="no \\*_quant.json"):
        load_quant_results(tmp_path / "none")
