"""Hunt 119 (newcomer walks of lessons 00, 01, 03 and 08 in a browser): figures that were hard
to read, tested by geometry and artist properties rather than pixels.

- lesson 08, D64 bars: the dashed yardstick at 0.596 ms ran through the 0.575 ms bar's value
  label (labels began at their bar's end); they now begin right of the line.
- lesson 08, roofline: "paged-decode [CUDA cores, FP32, tensor cores, FP16]" merged the plan's
  two picks (in set order) into one legend entry; each (kernel, units) now has its own.
- lesson 01, page map: the block-table arrows were figure artists, drawn over the physical
  pages' labels ("0:1"); they now sit in the pages' axes below the labels, which get a halo.
- lesson 01, counter plot: page counts had ticks at 2.5, 7.5 (it was notebook code);
  `viz.plot_counter_allocator` ticks integers.
- lesson 03, 1-D launch: the dashed n = 20 line cut "blockIdx.x = 2"; it stops above the cells.
- lesson 00, fragmentation bars: "13%" on red crosshatching; value labels sit on a white box.
"""
import pytest
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch
from matplotlib.ticker import MaxNLocator

from pagedattn_lab import viz
from pagedattn_lab.viz.cuda_maps import plot_launch_1d
from pagedattn_lab.viz.roofline import UNITS

from .viz_helpers import small_cache


def _extent(fig, artist):
    """The artist's box on the canvas (display pixels), after a draw."""
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


# -- lesson 08: bar values clear the yardstick ---------------------------------------------

def _doc(times_ms, *, line_ms):
    """Decode rows that all move 1 GB, and a copy rate that puts the yardstick at line_ms."""
    rows = [{"kernel": f"k{i}", "workload": "D64", "kind": "decode", "ms": t, "gbps": 1e3 / t}
            for i, t in enumerate(times_ms)]
    return {"gpu": "Test GPU", "date": "2026-01-01", "copy_bandwidth_GBps": 1.0 / line_ms * 1e3,
            "results": rows}


@pytest.mark.parametrize("data, workload", [
    (viz.latest_results(), "D64"),                              # lesson 08's own call
    (_doc([0.2, 0.5, 0.549, 0.551, 1.0], line_ms=0.55), None),  # bars on both sides, near it
    (_doc([0.1, 0.2], line_ms=0.6), None),                      # all bars left of the line
])
def test_bar_value_labels_never_cross_the_yardstick(data, workload):
    fig = viz.plot_bench_bars(data, kind="decode", workload=workload)
    ax = fig.axes[0]
    line = next(l for l in ax.lines if l.get_gid() == "yardstick")
    x = line.get_xdata()[0]
    assert x < ax.get_xlim()[1], "the yardstick is off the chart"
    labels = ax.texts   # the value labels, one per bar
    assert len(labels) == len(ax.patches)
    for label in labels:
        (x0, _), (x1, _) = ax.transData.inverted().transform(_extent(fig, label).get_points())
        assert not x0 <= x <= x1, f"{label.get_text()!r} spans {x0:.3f}..{x1:.3f} ms, line {x:.3f}"
        assert x1 <= ax.get_xlim()[1], f"{label.get_text()!r} runs past the axes"


# -- lesson 08: the roofline's legend keeps the plan's picks apart -------------------------

def test_roofline_legend_gives_each_kernel_and_units_its_own_entry():
    results = viz.latest_results()
    wanted = ["D64", "D64-gqa4", "prefill"]
    fig = viz.plot_roofline(results, workload=wanted)
    legend = fig.axes[0].get_legend()          # the kernels' (the roofs' is an added artist)
    entries = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert len(entries) == len(legend.get_texts()), "two legend entries read the same"
    kernels = {k: h for k, h in entries.items() if not k.startswith("workload ")}
    for label in kernels:
        assert sum(name in label for name in UNITS.values()) == 1, label
    points = viz.roofline_points(results, workload=wanted)
    assert len({p["units"] for p in points if p["kernel"] == "paged-decode"}) == 2  # the premise
    drawn = {l.get_gid(): l for l in fig.axes[0].lines if (l.get_gid() or "").startswith("point:")}
    for i, p in enumerate(points):   # each point's colour is the entry of its kernel and units
        colour = drawn[f"point:{i}"].get_color()
        label, = [k for k, h in kernels.items() if h.get_color() == colour]
        assert label.startswith(p["kernel"] + " [") and UNITS[p["units"]] in label
        if p["kernel"] == "paged-decode":
            assert label.endswith(f" on {p['workload']}")


# -- lesson 01: arrows below the page labels; integer page counts --------------------------

def test_page_map_arrows_are_drawn_below_the_page_labels(rng):
    cache = small_cache(rng)
    fig = viz.plot_page_map(cache, arrows=True)
    ax_p = fig.axes[1]
    arrows = [a for a in ax_p.get_children() if isinstance(a, ConnectionPatch)]
    assert len(arrows) == sum(len(cache.block_table(s)) for s in cache.seq_ids)
    assert not [a for a in fig.artists if isinstance(a, ConnectionPatch)]
    cells = [p for p in ax_p.patches if (p.get_gid() or "").startswith("page:")]
    labels = [t for t in ax_p.texts if (t.get_gid() or "").startswith("label:")]
    assert len(labels) == viz.as_state(cache).pages_in_use
    for label in labels:
        assert label.get_path_effects(), f"page label {label.get_text()!r} has no halo"
        assert all(a.get_zorder() < label.get_zorder() for a in arrows)
    assert cells and all(a.get_zorder() > p.get_zorder() for a in arrows for p in cells)
    fig.canvas.draw()   # drawn from the pages' axes, the arrows still reach the block tables


def test_counter_plot_ticks_whole_pages_and_requests():
    fig = viz.plot_counter_allocator(10, pages_per_request=2, num_pages=8)
    ax = fig.axes[0]
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        locator = axis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        assert all(float(t).is_integer() for t in axis.get_ticklocs())
    lines = {l.get_gid(): l for l in ax.lines}
    assert list(lines["handed out"].get_ydata()) == [2 * r for r in range(1, 11)]
    assert set(lines["in use"].get_ydata()) == {2} and set(lines["cache"].get_ydata()) == {8}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"requests": 0}, ValueError, r"^requests: expected an int >= 1, got 0"),
    ({"requests": 2.5}, TypeError, r"^requests: expected an int"),
    ({"requests": 10**6}, ValueError, r"^requests: the picture would draw 1000000 requests"),
    ({"pages_per_request": 0}, ValueError, r"^pages_per_request: expected an int >= 1"),
    ({"num_pages": True}, TypeError, r"^num_pages: expected an int"),
])
def test_counter_plot_refuses_bad_sizes_before_drawing(kwargs, error, match, no_new_figures):
    with pytest.raises(error, match=match):
        viz.plot_counter_allocator(**kwargs)


# -- lesson 03: the n line stays clear of the block labels ---------------------------------

@pytest.mark.parametrize("n, threads", [(20, 8), (6, 4), (37, 32), (5, 1)])
def test_launch_n_line_never_crosses_a_block_label(n, threads):
    fig = plot_launch_1d(n, threads)
    ax = fig.axes[0]
    blocks = [t for t in ax.texts if t.get_text().startswith("blockIdx.x = ")]
    rules = ax.lines   # the n line
    assert blocks and rules
    for rule in rules:
        for label in blocks:
            assert not _extent(fig, rule).overlaps(_extent(fig, label)), label.get_text()


# -- lesson 00: value labels readable on hatched bars --------------------------------------

def test_fragmentation_values_sit_on_a_white_box():
    breakdowns = {"pow2": {"tokens": 0.41, "reserved": 0.28, "internal": 0.18, "external": 0.13}}
    fig = viz.plot_fragmentation(breakdowns)
    values = [t for t in fig.axes[0].texts if t.get_text().endswith("%")]
    assert sorted(t.get_text() for t in values) == ["13%", "18%", "28%", "41%"]
    for t in values:
        box = t.get_bbox_patch()
        assert box is not None and box.get_facecolor()[:3] == (1.0, 1.0, 1.0), t.get_text()
