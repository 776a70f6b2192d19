"""Room for value labels: a label has a fixed size in points, so whether it fits inside its
axes depends on the figure's size and the data range, known only once the figure is laid out."""
from __future__ import annotations


def widen_for_labels(ax, labels, *, margin: float = 0.02) -> None:
    """Raise ax's right x limit until every annotation in `labels` (anchored at a data x,
    running right) ends `margin` (a share of the axes' width) inside the axes, so the right
    spine never runs through one. A label wider than the axes itself is left as it is."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    x0, x1 = ax.get_xlim()
    width = ax.get_window_extent(renderer).width
    needed = x1
    for label in labels:
        anchor = ax.transData.transform((label.xy[0], 0.0))[0]
        past = label.get_window_extent(renderer).x1 - anchor   # pixels right of the anchor
        room = 1.0 - margin - past / width                      # share of the axes left for x
        if room > 0:
            needed = max(needed, x0 + (label.xy[0] - x0) / room)
    ax.set_xlim(x0, needed)
