"""Hunt 132 (newcomer walk of Part II, lessons 09-13, in a browser).

- lesson 12, the engine over time: the memory panel's legend sat at the upper right, on the
  dashed pool line (and on any data near the pool at the end of the run), and the batch
  panel's legend belonged to the bar axes, under the twin axes' request lines, so a line
  there would be drawn across it. Now every panel keeps headroom above its data for a
  one-row legend, and the batch legend sits on the top-most (twin) axes.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pagedattn_lab import viz  # noqa: E402


def _series(steps: int, num_pages: int, page_size: int, *, high_at_end: bool) -> dict:
    """An engine series whose memory, batch and request counts reach their maxima at the
    last steps (where an upper-right legend sits) or at the first ones."""
    ramp = np.linspace(0.1, 1.0, steps)
    if not high_at_end:
        ramp = ramp[::-1]
    pages = np.round(ramp * num_pages).astype(int)
    running = np.round(ramp * 14).astype(int)
    return {"pages_used": pages, "tokens_stored": pages * page_size - 1,
            "running": running, "waiting": 14 - running, "swapped": np.zeros(steps, int),
            "decode_tokens": running, "prefill_tokens": np.round(ramp * 18).astype(int),
            "hit_rate": ramp * 0.9}


def _points(ax, artist):
    """Display coordinates of an artist's data: a line's vertices (densified, so that a
    segment crossing a box is seen), a bar's corners and the middle of its top, the outline
    of a filled area."""
    if isinstance(artist, matplotlib.lines.Line2D):
        v = artist.get_transform().transform_path(artist.get_path()).vertices
        t = np.linspace(0, 1, 50)[:, None]
        return np.concatenate([a + t * (b - a) for a, b in zip(v[:-1], v[1:])])
    if isinstance(artist, matplotlib.collections.PolyCollection):
        return ax.transData.transform(artist.get_paths()[0].vertices)
    box = artist.get_window_extent()
    return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x0, box.y1], [box.x1, box.y1],
                     [(box.x0 + box.x1) / 2, box.y1]])


def _data_artists(ax):
    return list(ax.lines) + [p for p in ax.patches if p.get_height() > 0] + list(ax.collections)


@pytest.mark.parametrize("high_at_end", [True, False])
def test_engine_series_legends_hide_no_data_and_no_line_crosses_them(high_at_end):
    fig = viz.plot_engine_series(_series(24, 64, 4, high_at_end=high_at_end), 64, 4)
    fig.canvas.draw()
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2, "the memory and the batch panels each have a legend"
    mem, twin = fig.axes[0], fig.axes[3]      # the batch panel's request axes, drawn last
    for ax, legend in legends:
        box = legend.get_window_extent()
        panel = [a for a in fig.axes if a.bbox.bounds == ax.bbox.bounds]   # twins included
        for other in panel:
            for artist in _data_artists(other):
                pts = _points(other, artist)
                inside = ((pts[:, 0] > box.x0 + 1) & (pts[:, 0] < box.x1 - 1)
                          & (pts[:, 1] > box.y0 + 1) & (pts[:, 1] < box.y1 - 1))
                assert not inside.any(), (
                    f"{artist.get_label()!r} is drawn inside the legend of panel "
                    f"{fig.axes.index(ax)}")
        # a legend on a lower axes is painted under the axes stacked above it
        above = [a for a in panel if a.get_zorder() > ax.get_zorder()
                 or (a.get_zorder() == ax.get_zorder() and fig.axes.index(a) > fig.axes.index(ax))]
        assert not above, f"panel {fig.axes.index(ax)}'s legend lies under another axes"
    assert {id(ax) for ax, _ in legends} == {id(mem), id(twin)}
    plt.close(fig)


# -- workbook 13: the "Together" cell says what it prints ----------------------------------

def _workbook_13():
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "exercises" / "13_multi_gpu.ipynb"
    return [("".join(c["source"]), c["cell_type"]) for c in json.loads(path.read_text())["cells"]]


def test_workbook_13_together_cell_prints_what_its_prompt_promises(capsys):
    """Its prompt used to say it prints `False` until Tasks 1 and 2 pass; untouched, it
    prints which task is not written yet."""
    cells = _workbook_13()
    together = next(i for i, (src, kind) in enumerate(cells)
                    if kind == "markdown" and src.startswith("## Together"))
    prompt, code = cells[together][0], cells[together + 1][0]
    scope = {}
    for src, kind in cells[:together]:
        if kind == "code" and not src.lstrip().startswith("check."):
            exec(src, scope)                      # the imports and the untouched stubs
    exec(code, scope)
    printed = capsys.readouterr().out
    assert "not written yet: Task 1 (head_split)" in printed
    assert "Task 3 (wire_bytes) not written yet" in printed
    words = " ".join(prompt.split())
    assert "says which one is missing" in words and "prints `False` until" not in words
