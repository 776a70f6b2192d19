"""The pictures show what the cache holds, the widgets step headless, the simulator's numbers hold.

Plots are rendered to PNG (Agg) and read back: pixels at page-cell centres, and the gids the
plot functions put on their patches. (The benchmark charts and kernel mappings:
test_viz_bench.py.)
"""
import numpy as np
import pytest
from matplotlib.patches import ConnectionPatch

import pagedattn_lab as pl
from pagedattn_lab import viz
from pagedattn_lab.sim import CATEGORIES, Workload, compare_policies, simulate
from pagedattn_lab.viz.page_table import cell_xy, grid_shape

from .viz_helpers import is_white, pixel_at, render, small_cache


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
    arrows = [a for a in fig.axes[1].get_children() if isinstance(a, ConnectionPatch)]
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
