"""The benchmark charts and the roofline read the committed results right; the online-softmax
trace and the kernel-mapping pictures show what the kernels do."""
import numpy as np
import pytest

from pagedattn_lab import viz

from .viz_helpers import render


# -- online softmax and benchmarks -------------------------------------------------------

def test_online_softmax_trace_matches_softmax(rng):
    scores, values = rng.standard_normal(50) * 3, rng.standard_normal((50, 4))
    tr = viz.online_softmax_trace(scores, values)
    w = np.exp(scores - scores.max())
    assert np.allclose(tr["output"][-1], (w / w.sum()) @ values)
    assert np.all(np.diff(tr["max"]) >= 0) and tr["max"][-1] == scores.max()
    fig = viz.plot_online_softmax(scores[:20], values[:20, 0])
    assert len(fig.axes) == 3
    render(fig)


def test_bench_charts(tmp_path):
    assert viz.load_bench_results(tmp_path / "missing") == []
    recorded = viz.recorded_figures()
    decode = [r for r in recorded["results"] if r["kind"] == "decode"]
    fig = viz.plot_bench_bars(recorded, kind="decode")
    assert len(fig.axes[0].patches) == len(decode)
    fig = viz.plot_roofline(recorded)
    points = [line for line in fig.axes[0].lines if (line.get_gid() or "").startswith("point:")]
    assert len(points) == len(recorded["results"])  # every kernel, decode and prefill
    fig = viz.plot_bench_file(tmp_path, workload="D64")  # falls back to the recorded figures
    assert "H100" in fig.axes[0].get_title()
    render(fig)


def test_results_file_loads_the_named_run(tmp_path):
    h100 = viz.results_file("2026-11-26_H100_bench.json")
    assert h100["gpu"].startswith("NVIDIA H100") and h100["source"].endswith("2026-11-26_H100_bench.json")
    assert any(r["kernel"] == "flex-paged" for r in h100["results"])
    assert viz.results_file("2026-11-26_H100_bench.json", tmp_path)["source"].startswith("recorded")


def test_costs_match_the_bench_workloads():
    """The plotting layer reads the bench's shape strings: a change of format fails here."""
    from pagedattn_lab.bench.workloads import decode_workloads, prefill_workloads
    for w in decode_workloads():
        cost = viz.costs.workload_cost({"shape": w.describe()})
        assert cost.flops == 4 * sum(w.lens) * w.num_heads * w.head_dim
        tables = 4 * sum(-(-n // w.page_size) for n in w.lens) + w.batch * 4
        assert cost.bytes == w.bytes_moved() - tables
        assert viz.costs.workload_cost({"shape": w.describe(), "bytes": 123}).bytes == 123
    for w in prefill_workloads() + prefill_workloads(quick=True):
        cost = viz.costs.workload_cost({"shape": w.describe()})
        assert cost.flops == w.flops()
        assert cost.bytes == 4 * w.batch * w.seq_len * w.num_heads * w.head_dim * 4
    assert viz.costs.workload_cost({"shape": "something else"}) is None


def test_each_kernel_answers_to_the_roof_of_its_units():
    units = viz.roofline.kernel_units
    assert units("paged-decode", "float16") == "cuda-fp32"
    assert units("paged-decode (no split)", "float16") == "cuda-fp32"
    assert units("prefill-tiled", "float32") == "cuda-fp32"
    assert units("flex-paged", "float16") == "tensor-fp16"
    assert units("torch-sdpa", "float32") == "tensor-3xtf32"
    assert units("flashinfer decode (tensor cores)", "float16") == "tensor-fp16"
    assert units("flashinfer decode (CUDA cores)", "float16") == "cuda-fp32"
    assert units("mystery", "float16") is None
    # the record's kernel_choice decides for the package's decode, whose name does not say it
    assert units("paged-decode", "float16", "tensor_core") == "tensor-fp16"
    assert units("paged-decode (simt, not chosen)", "float16", "simt") == "cuda-fp32"
    h100 = viz.roofline.peak_flops("NVIDIA H100 80GB HBM3")
    assert h100["cuda-fp32"] == pytest.approx(66.9e12)
    assert h100["tensor-3xtf32"] == pytest.approx(494.7e12 / 3)
    assert viz.roofline.peak_flops("H100 PCIe")["cuda-fp32"] < h100["cuda-fp32"]
    assert viz.roofline.peak_flops("Some GPU") == {}


def test_roofline_of_the_committed_run_gives_every_kernel_its_point():
    results = viz.latest_results()
    timed = viz.bench_plots.records(results)
    points = viz.roofline_points(results)
    assert len(points) == len(timed) and all(p["units"] for p in points)
    bandwidth = viz.bench_plots.copy_bandwidth(results)
    peaks = viz.roofline.peak_flops(results["gpu"])
    choice = {(r["kernel"], r["workload"]): r["kernel_choice"] for r in timed}
    for p in points:
        assert p["roof"] == pytest.approx(min(peaks[p["units"]], p["intensity"] * bandwidth))
        if p["kernel"].startswith("paged-decode"):   # SIMT never held against tensor cores
            tc = choice[p["kernel"], p["workload"]] == "tensor_core"
            assert p["units"] == ("tensor-fp16" if tc else "cuda-fp32")
    d64 = next(p for p in points if p["workload"] == "D64" and p["kernel"] == "paged-decode")
    assert d64["intensity"] == pytest.approx(1.0, rel=1e-3)   # fp16, no GQA: 1 FLOP per byte
    fig = viz.plot_roofline(results, workload=["D64", "prefill"])
    gids = {line.get_gid() for line in fig.axes[0].lines}
    assert {"roof:memory", "roof:cuda-fp32", "roof:tensor-fp16", "roof:tensor-3xtf32"} <= gids
    drawn = [g for g in gids if (g or "").startswith("point:")]
    assert len(drawn) == sum(r["workload"] in ("D64", "prefill") for r in timed)
    render(fig)
    unknown = dict(results, gpu="Some GPU")
    fig = viz.plot_roofline(unknown, workload="D64")
    assert "only the memory roof" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_yardstick_is_the_one_basis_of_the_bars():
    results = viz.latest_results()
    ys = viz.yardstick(results, workload="D64")
    copy = viz.bench_plots.copy_bandwidth(results)
    assert ys["kernel"] == "paged-decode" and ys["copy_rate"] == copy
    assert ys["yardstick_ms"] == pytest.approx(ys["bytes"] / copy * 1e3)
    assert ys["of_copy"] == pytest.approx(ys["yardstick_ms"] / ys["time_ms"])
    fig = viz.plot_bench_bars(results, kind="decode", workload="D64")
    line = next(l for l in fig.axes[0].lines if l.get_gid() == "yardstick")
    assert line.get_xdata()[0] == pytest.approx(ys["yardstick_ms"])
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert f"{ys['of_copy']:.0%} of copy" in texts
    with pytest.raises(ValueError, match="kernel"):
        viz.yardstick(results, kernel="no such kernel")


def test_bench_json_schema(tmp_path):
    """Rows as `python -m pagedattn_lab.bench` writes them: ms, gbps, tflops, errors."""
    doc = {"gpu": "Test GPU", "date": "2026-01-01", "copy_bandwidth_GBps": 1000.0, "results": [
        {"kernel": "decode", "workload": "D64", "kind": "decode", "ms": 2.0, "gbps": 500.0,
         "tflops": 1.0},
        {"kernel": "broken", "workload": "D64", "kind": "decode", "error": "boom"},
        {"kernel": "tiled", "workload": "prefill", "kind": "prefill", "ms": 5.0, "tflops": 2.0}]}
    (tmp_path / "gpu.json").write_text(__import__("json").dumps(doc))
    latest = viz.latest_results(tmp_path)
    assert latest["gpu"] == "Test GPU"
    rows = viz.bench_plots.records(latest, kind="decode")
    assert len(rows) == 1 and rows[0]["bytes"] == pytest.approx(500e9 * 2e-3)
    fig = viz.plot_bench_bars(latest, kind="decode")
    assert "50% of copy" in " ".join(t.get_text() for t in fig.axes[0].texts)  # 500 of 1000 GB/s
    assert "Test GPU" in fig.axes[0].get_title()


def test_latest_results_prefers_the_newest_complete_run(tmp_path):
    """A newer run that timed decode only (a lean GPU check) does not replace the newest run
    with decode and prefill rows; with no complete run the newest of any is taken."""
    import json
    def run(name, kinds):
        rows = [{"kernel": k, "workload": "W", "kind": k, "ms": 1.0} for k in kinds]
        (tmp_path / name).write_text(json.dumps({"gpu": name, "results": rows}))
    run("2026-01-01_bench.json", ["decode", "prefill"])
    run("2026-01-02_bench.json", ["decode", "host"])
    assert viz.latest_results(tmp_path)["gpu"] == "2026-01-01_bench.json"
    run("2026-01-03_bench.json", ["decode", "prefill", "host"])
    assert viz.latest_results(tmp_path)["gpu"] == "2026-01-03_bench.json"
    (tmp_path / "2026-01-01_bench.json").unlink()
    (tmp_path / "2026-01-03_bench.json").unlink()
    assert viz.latest_results(tmp_path)["gpu"] == "2026-01-02_bench.json"


# -- kernel mappings ---------------------------------------------------------------------

def test_query_mapping_marks_padding_and_idle_threads():
    fig = viz.plot_query_mapping([5, 12, 9], threads_per_block=8)
    kinds = [p.get_gid().split(":")[3] for p in fig.axes[0].patches if (p.get_gid() or "").startswith("q:")]
    assert len(kinds) == 3 * 16                       # 2 blocks of 8 threads per sequence
    assert kinds.count("idle") == 3 * 4               # positions 12..15 are past max_len
    assert kinds.count("pad") == (12 - 5) + (12 - 9)  # rows past each sequence's end
    assert kinds.count("1") == 4 + 1                  # block 1 holds queries 8.. of seqs 1, 2


def test_causal_tiles_match_counts():
    fig = viz.plot_causal_tiles(200, tile_q=64, tile_k=32)
    drawn = [p.get_gid().split(":")[3] for p in fig.axes[0].patches if (p.get_gid() or "").startswith("tile:")]
    counts = viz.tile_counts(200, 64, 32)
    assert {k: drawn.count(k) for k in counts} == counts
    assert sum(counts.values()) == 4 * 7
    # tiles wholly above the diagonal are skipped; for a long sequence that is about half
    big = viz.tile_counts(4096, 64, 32)
    assert 0.45 < big["skip"] / sum(big.values()) < 0.5


def test_committed_results_are_found_from_any_folder(tmp_path, monkeypatch):
    """Notebooks run from notebooks/: the default must still reach benchmarks/results/."""
    monkeypatch.chdir(tmp_path)
    latest = viz.latest_results()
    assert latest["source"].startswith("benchmarks/results/"), latest["source"]
    assert any(r.get("kernel") == "paged-decode" for r in latest["results"])
