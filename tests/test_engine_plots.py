"""The engine pictures read the engine right: who holds which page, and the series."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pagedattn_lab import viz  # noqa: E402
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,  # noqa: E402
                                  random_weights, tiny_config)


def _engine_mid_run():
    config = tiny_config()
    model = LlamaModel(config, random_weights(config, seed=0), device="cpu")
    engine = LLMEngine(model, EngineConfig(page_size=4, num_pages=32, max_num_batched_tokens=16))
    shared = list(range(8))                                   # two full blocks
    for tail in ([20, 21, 22], [30], [40, 41]):
        engine.add_request(shared + tail, SamplingParams(max_tokens=4, ignore_eos=True))
    for _ in range(3):
        engine.step()
    return engine


def test_snapshot_names_the_shared_prefix_pages():
    engine = _engine_mid_run()
    snap = viz.prefix_snapshot(engine)
    first = snap.tables[0][:2]
    holders = [rid for rid, t in snap.tables.items() if t[:2] == first]
    assert len(holders) >= 2                       # a later request hit the two blocks
    assert snap.shared_pages() == sorted(first)
    assert all(snap.ref_cnt[p] == len(holders) for p in first)
    assert set(first) <= snap.hashed               # full, computed: in the prefix cache
    for rid, table in snap.tables.items():         # a partial last page is never hashed
        if snap.computed[rid] % 4:
            assert table[snap.computed[rid] // 4] not in snap.hashed
    fig = viz.plot_shared_blocks(snap)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels.count(f"p{first[0]}\n×{len(holders)}") == len(holders)
    plt.close(fig)


def test_series_plot_draws_every_step():
    engine = _engine_mid_run()
    while engine.has_unfinished():
        engine.step()
    fig = viz.plot_engine_series(engine.stats.series, 32, 4)
    mem = fig.axes[0]
    steps = engine.stats.steps
    assert len(mem.lines[0].get_xdata()) == steps
    np.testing.assert_allclose(mem.lines[0].get_ydata(),
                               np.asarray(engine.stats.series["tokens_stored"]) / 4)
    plt.close(fig)


def test_allocation_comparison_and_page_size_plots():
    rows = [{"page_size": p, "allocation": a, "waste_fraction": w, "preemptions": n, "steps": s}
            for p, a, w, n, s in [(8, "on_demand", 0.01, 9, 100), (8, "predictive", 0.1, 2, 110),
                                  (16, "on_demand", 0.02, 8, 101)]]
    fig = viz.plot_allocation_comparison(rows)
    heights = [b.get_height() for b in fig.axes[1].patches]
    assert heights[:2] == [9, 8] and heights[2] == 2 and np.isnan(heights[3])
    plt.close(fig)
    fig = viz.plot_page_size_waste({4: 0.01, 8: 0.03, 16: 0.07}, 8)
    colors = [b.get_facecolor() for b in fig.axes[0].patches]
    assert colors[1] != colors[0] == colors[2]
    plt.close(fig)


def test_allocation_comparison_gives_units():
    """Lesson 12's table and page-size chart give waste in %: so does this chart (it showed
    0.0-0.175 with no unit), and every panel names what its axes count."""
    rows = [{"page_size": 8, "allocation": a, "waste_fraction": w, "preemptions": 3,
             "steps": 100} for a, w in (("on_demand", 0.008), ("predictive", 0.087))]
    fig = viz.plot_allocation_comparison(rows)
    try:
        np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches], [0.8, 8.7])
        assert fig.axes[0].get_ylabel() == "slots held but empty (%)"
        assert all(ax.get_ylabel() and "tokens" in ax.get_xlabel() for ax in fig.axes)
    finally:
        plt.close(fig)
