"""The loaders lessons 09 and 11 use for their "where it stands now" figures: a named results
file, else the newest that has the rows, and the flattened comparisons."""
import json

import pytest

from pagedattn_lab.viz import (head_to_head, load_quant_results, quant_rows,
                               results_file_or_newest)


def _bench(path, name, rows, prefill=False):
    rows = [{"kind": "decode", "workload": w, "kernel": k, "ms": ms, "bytes": 4e8}
            for w, k, ms in rows]
    if prefill:
        rows.append({"kind": "prefill", "workload": "p", "kernel": "x", "ms": 1.0})
    (path / name).write_text(json.dumps({"results": rows, "copy_bandwidth_GBps": 4000.0}))


def test_named_file_first_then_newest_with_the_workload(tmp_path):
    _bench(tmp_path, "a_bench.json", [("W", "paged-decode", 1.0)], prefill=True)
    _bench(tmp_path, "b_bench.json", [("W", "paged-decode", 2.0)])   # decode only, newer
    _bench(tmp_path, "c_bench.json", [("other", "paged-decode", 3.0)])
    doc = results_file_or_newest("missing.json", workload="W", path=tmp_path)
    assert doc["source"].endswith("b_bench.json")
    doc = results_file_or_newest("a_bench.json", workload="W", path=tmp_path)
    assert doc["source"].endswith("a_bench.json")
    assert "H100" in results_file_or_newest("x.json", workload="none", path=tmp_path)["gpu"]


def test_head_to_head_ratio_and_copy_share(tmp_path):
    _bench(tmp_path, "a_bench.json", [("W", "paged-decode", 0.09),
                                      ("W", "flashinfer-tensor-cores", 0.1),
                                      ("V", "paged-decode", 1.0)])
    doc = results_file_or_newest("a_bench.json", workload="W", path=tmp_path)
    rows = head_to_head(doc, ["W", "V"])
    assert [r["workload"] for r in rows] == ["W"]          # V has no FlashInfer row
    assert rows[0]["ratio"] == pytest.approx(0.9)
    assert rows[0]["of_copy"] == pytest.approx(4e8 / 0.09e-3 / 4e12)


def test_quant_results_named_then_newest_and_rows(tmp_path):
    assert load_quant_results("q.json", path=tmp_path) is None
    row = {"name": "D64 GQA 32/8", "kv_dtype": "fp8_e4m3", "scheme": "static",
           "results": {"ours": {"median_ms": 0.115, "kernel": "simt", "vs_fp16": 0.67,
                                "copy_rate_fraction": 0.66},
                       "flashinfer-cuda-cores": {"median_ms": 0.39}}}
    for name, ms in (("x_quant_a.json", 1.0), ("x_quant_b.json", 0.115)):
        row["results"]["ours"]["median_ms"] = ms
        (tmp_path / name).write_text(json.dumps({"meta": {}, "rows": [row]}))
    (tmp_path / "x_quant_c.json").write_text(json.dumps({"results": []}))   # not a quant doc
    doc = load_quant_results("missing.json", path=tmp_path)
    assert doc["source"].endswith("x_quant_b.json")
    assert load_quant_results("x_quant_a.json", path=tmp_path)["source"].endswith("x_quant_a.json")
    (out,) = quant_rows(doc, baseline="flashinfer-cuda-cores")
    assert (out["ms"], out["kernel"], out["baseline_ms"]) == (0.115, "simt", 0.39)
    assert quant_rows(doc)[0]["baseline_ms"] is None
