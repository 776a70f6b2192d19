"""The pictures show what the cache holds, the widgets step headless, the simulator's numbers hold.

Plots are rendered to PNG (Agg) and read back: pixels at page-cell centres, and the gids the
plot functions put on their patches.
"""
import io

import matplotlib
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import ConnectionPatch

import pagedattn_lab as pl
from pagedattn_lab import viz
from pagedattn_lab.sim import CATEGORIES, Workload, compare_policies, simulate
from pagedattn_lab.viz.page_table import cell_xy, grid_shape

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def small_cache(rng, num_pages=20, page_size=4):
    """Three sequences of 7, 3 and 10 tokens, the middle one freed, the first forked."""
    cache = pl.PagedKVCache(num_pages, page_size, num_kv_heads=2, head_dim=8, device="cpu")
    for n in (7, 3, 10):
        s = cache.add_sequence()
        k = rng.standard_normal((n, 2, 8)).astype(np.float32)
        cache.append(s, k, k)
    cache.free_sequence(1)
    cache.fork_sequence(0)
    return cache


def render(fig) -> np.ndarray:
    """The figure as an RGB array, in the figure's own pixel grid."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    return mpimg.imread(buf)[..., :3]


def pixel_at(fig, ax, image, x, y):
    fig.canvas.draw()
    px, py = ax.transData.transform((x, y))
    return image[int(round(image.shape[0] - py)), int(round(px))]


def is_white(rgb) -> bool:
    return bool(np.all(rgb > 0.97))


# -- page map ----------------------------------------------------------------------------

def test_page_map_colours_exactly_the_pages_in_use(rng):
    cache = small_cache(rng)
    state = viz.as_state(cache)
    fig = viz.plot_page_map(cache, labels=False)
    image = render(fig)
    ax = fig.axes[0]
    _, ncols = grid_shape(state.num_pages)
    coloured = []
    for page in range(state.num_pages):
        x, y = cell_xy(page, ncols)
        rgb = pixel_at(fig, ax, image, x + 0.5, y + 0.5)
        if not is_white(rgb):
            coloured.append(page)
    in_use = [p for p in range(state.num_pages) if state.ref_counts[p] > 0]
    assert coloured == in_use
    assert len(coloured) == cache.allocator.num_used == 5
    cells = viz.page_cells(fig)
    assert [p for p, owner in cells.items() if owner == "free"] == state.free_pages


def test_page_map_owner_colours_and_shared_pages(rng):
    cache = small_cache(rng)
    fig = viz.plot_page_map(cache)
    cells = viz.page_cells(fig)
    for seq in cache.seq_ids:
        for page in cache.block_table(seq):
            assert cells[page] != "free"
    # sequence 2's pages are drawn in sequence 2's colour
    colours = viz.color_map(viz.as_state(cache))
    fills = {p.get_gid(): p.get_facecolor() for p in fig.axes[0].patches if p.get_gid()}
    for page in cache.block_table(2):
        assert np.allclose(fills[f"page:{page}:fill:2"][:3], colours[2][:3])
    hatched = [p for p in fig.axes[0].patches if p.get_hatch()]
    assert len(hatched) == len(viz.as_state(cache).shared_pages) == 2
    assert "3 of 20" not in fig.axes[0].get_title() and "5 of 20 in use" in fig.axes[0].get_title()


def test_page_map_fill_shows_internal_waste(rng):
    cache = small_cache(rng)  # sequence 2: 10 tokens in pages of 4 -> last page half full
    fig = viz.plot_page_map(cache)
    last = cache.block_table(2)[-1]
    fill = next(p for p in fig.axes[0].patches if p.get_gid() == f"page:{last}:fill:2")
    assert fill.get_width() == pytest.approx(0.92 * 2 / 4)


def test_page_map_arrows_one_per_virtual_page(rng):
    cache = small_cache(rng)
    fig = viz.plot_page_map(cache, arrows=True)
    arrows = [a for a in fig.artists if isinstance(a, ConnectionPatch)]
    assert len(arrows) == sum(len(cache.block_table(s)) for s in cache.seq_ids)
    render(fig)


def test_page_map_refuses_other_objects():
    with pytest.raises(TypeError, match="PagedKVCache"):
        viz.plot_page_map([1, 2, 3])


# -- translation -------------------------------------------------------------------------

def test_translation_figure_highlights_the_right_cells(rng):
    cache = small_cache(rng)
    fig = viz.plot_translation(cache, 2, 9, kv_head=1, dim=3)
    gids = {p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()}
    t = pl.translate(np.array(cache.block_table(2), np.int32), 9, 4, 2, 8, kv_head=1, dim=3)
    assert {"token:9", f"entry:{t.virtual_page}", f"highlight:{t.physical_page}",
            f"slot:{t.physical_page}:{t.offset}"} <= gids
    assert t.element_offset == (t.slot * 2 + 1) * 8 + 3
    render(fig)


def test_translation_explorer_headless(rng):
    cache = small_cache(rng)
    ex = viz.TranslationExplorer(cache)
    ex.seq.value = 2
    ex.token.value = 9
    t = ex.translation
    assert (t.token, t.virtual_page, t.offset) == (9, 2, 1)
    assert t.physical_page == cache.block_table(2)[2]
    assert f"slot = {t.physical_page} * 4 + 1 = {t.slot}" in ex.info
    assert ex.token.max == cache.seq_len(2) - 1
    assert any(p.get_gid() == f"highlight:{t.physical_page}"
               for ax in ex.figure.axes for p in ax.patches)
    with pytest.raises(ValueError, match="token"):
        viz.translation_of(cache, 2, 10)


# -- events and the stepper --------------------------------------------------------------

def test_replay_and_stepper():
    events = [("add", "A", 6), ("add", "B", 3), ("append", "A", 3), ("fork", "C", "B"),
              ("free", "A"), ("add", "D", 40), ("append", "C", 1)]
    states = viz.replay(events, num_pages=6, page_size=4)
    assert len(states) == len(events) + 1
    assert [s.pages_in_use for s in states] == [0, 2, 3, 4, 4, 1, 1, 2]
    assert "failed" in states[6].note and "D" not in states[6].tables  # 40 tokens don't fit
    assert states[4].shared_pages == states[4].tables["B"]  # fork shares B's page
    assert states[7].shared_pages == []  # C wrote into its shared last page: copy on write
    stepper = viz.AllocationStepper(events, 6, 4)
    assert stepper.state.pages_in_use == 0
    stepper.step(3)
    cells = viz.page_cells(stepper.figure)
    assert sum(v != "free" for v in cells.values()) == states[3].pages_in_use
    stepper.step(100)
    assert stepper.slider.value == len(events)
    assert "pages used" in stepper.info


def test_a_sequence_keeps_its_colour_in_every_frame_and_figure():
    events = [("add", "A", 6), ("add", "B", 3), ("add", "C", 7), ("free", "A"), ("add", "D", 10),
              ("free", "B"), ("append", "C", 2)]
    stepper = viz.AllocationStepper(events, num_pages=12, page_size=4)
    strip = viz.plot_states(stepper.states, [3, 5, 7])
    strip_fill = {p.get_gid(): p.get_facecolor()[:3] for ax in strip.axes for p in ax.patches
                  if (p.get_gid() or "").startswith("page:") and ":fill:" in p.get_gid()}
    seen = {}
    for event in range(len(events) + 1):
        stepper.slider.value = event
        for patch in stepper.figure.axes[0].patches:
            gid = patch.get_gid() or ""
            if ":fill:" in gid:
                seq = gid.split(":")[3]
                seen.setdefault(seq, set()).add(tuple(np.round(patch.get_facecolor()[:3], 6)))
                if gid in strip_fill:
                    assert np.allclose(patch.get_facecolor()[:3], strip_fill[gid])
    assert set(seen) == {"A", "B", "C", "D"}
    assert all(len(colours) == 1 for colours in seen.values()), seen   # never recoloured
    assert len({next(iter(c)) for c in seen.values()}) == 4           # and all different
    assert viz.seq_color("C") == viz.seq_color(2) != viz.seq_color("D")
    assert viz.seq_color("seq 3") == viz.seq_color(3)


def test_widgets_display_a_picture_where_widgets_cannot_render(rng):
    stepper = viz.AllocationStepper([("add", "A", 6), ("add", "B", 3)], 8, 4, start=2)
    bundle = stepper._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    png = __import__("base64").b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG")
    assert "VBox" not in bundle["text/plain"] and "event 2/2" in bundle["text/plain"]
    explorer = viz.TranslationExplorer(small_cache(rng))
    bundle = explorer._repr_mimebundle_()
    assert {"image/png", "text/plain", "application/vnd.jupyter.widget-view+json"} <= set(bundle)
    with pytest.raises(ValueError, match="start"):
        viz.AllocationStepper([("add", "A", 6)], 8, 4, start=2)


def test_demo_events_are_seeded():
    assert viz.demo_events(3) == viz.demo_events(3)
    states = viz.replay(viz.demo_events(0), 16, 4)
    assert all(s.pages_in_use + len(s.free_pages) == 16 for s in states)


# -- memory over time and fragmentation --------------------------------------------------

def test_memory_timeline_stacks_tokens_and_waste(rng):
    cache = pl.PagedKVCache(12, 4, 1, 2, device="cpu")
    snaps = []
    for step in range(6):
        s = cache.add_sequence()
        x = rng.standard_normal((step + 1, 1, 2)).astype(np.float32)
        cache.append(s, x, x)
        if step == 4:
            cache.free_sequence(0)
        snaps.append(viz.take_snapshot(cache, step))
    assert snaps[-1].used == sum(range(2, 7))
    assert snaps[-1].held == cache.allocator.num_used * 4
    fig = viz.plot_memory_timeline(snaps)
    ax = fig.axes[0]
    waste = next(c for c in ax.collections if c.get_gid() == "internal-waste")
    top = waste.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(max(s.held for s in snaps))
    assert sum(1 for c in ax.collections if (c.get_gid() or "").startswith("seq:")) == 6
    render(fig)


def test_fragmentation_bars_add_up():
    breakdowns = {"reserve": {"tokens": 0.3, "reserved": 0.2, "internal": 0.4, "external": 0.1},
                  "paged": {"tokens": 0.97, "internal": 0.02, "free": 0.01}}
    fig = viz.plot_fragmentation(breakdowns)
    ax = fig.axes[0]
    for name, parts in breakdowns.items():
        widths = {p.get_gid().split(":")[1]: p.get_width() for p in ax.patches
                  if (p.get_gid() or "").startswith(name + ":")}
        assert set(widths) == set(CATEGORIES)
        assert sum(widths.values()) == pytest.approx(1.0)
        assert widths["tokens"] == pytest.approx(parts["tokens"])
    render(fig)


# -- the serving simulator ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_results():
    return compare_policies(Workload())


def test_workload_is_sharegpt_like():
    prompt, output = Workload().sample()
    assert 130 < prompt.mean() < 190 and 280 < output.mean() < 380
    assert (prompt + output).max() <= 2048 and prompt.min() >= 4


def test_reservation_keeps_20_to_40_percent_for_tokens(sim_results):
    assert 0.20 <= sim_results["reserve_max"].token_fraction <= 0.40


def test_paging_wastes_under_4_percent(sim_results):
    paged = sim_results["paged"]
    assert paged.waste_fraction < 0.04
    assert paged.breakdown()["external"] == 0 and paged.breakdown()["reserved"] == 0


def test_paging_fits_more_sequences(sim_results):
    assert sim_results["paged"].mean_running > 3 * sim_results["reserve_max"].mean_running
    assert sim_results["paged"].mean_running > sim_results["reserve_oracle"].mean_running
    assert sim_results["paged"].finished == Workload().num_requests


def test_every_step_accounts_for_all_memory(sim_results):
    for result in sim_results.values():
        total = sum(result.series[c] for c in CATEGORIES)
        assert np.all(total == result.capacity)
        assert sum(result.breakdown().values()) == pytest.approx(1.0)


def test_simulate_rejects_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        simulate("buddy")


def test_sim_plots(sim_results):
    fig = viz.plot_sim_timeline(sim_results["paged"], max_steps=300)
    assert {c.get_gid() for c in fig.axes[0].collections} >= set(CATEGORIES)
    fig = viz.plot_policy_batches(sim_results)
    assert len(fig.axes[0].patches) == len(sim_results)
    render(fig)


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
        tables = w.batch * w.max_pages * 4 + w.batch * 4
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
