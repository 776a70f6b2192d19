"""The page map: every physical page of the cache as a cell, coloured by the sequence that owns it.

Reading the picture:
* one colour per sequence; a page's solid part is how full it is, its pale part the empty
  slots at the end of a sequence's last page (internal waste);
* blank (white) cells are free pages;
* a hatched cell with "x2" is shared by two sequences (reference count 2);
* with `arrows=True`, each sequence's block table is drawn on the left as a row of virtual
  pages, with an arrow from each virtual page to the physical page it maps to.

Every patch drawn for a page carries a gid ("page:<id>:free", "page:<id>:used:<label>"), so
tests and curious readers can ask the figure what it shows.
"""
from __future__ import annotations

import math
import numbers
import re
import zlib

import matplotlib.pyplot as plt
from matplotlib import patheffects
from matplotlib.patches import ConnectionPatch, Rectangle

from ..validate import check_int
from ..validate_kinds import is_int
from .state import PageMapState, as_state

FREE_EDGE = "#9a9a9a"
PALE = 0.30  # alpha of the empty part of a page in use
# A white halo keeps a page's label legible over its fill and over the block-table arrows
# (drawn below the labels); a box would hide where the fill ends, which the cell shows.
LABEL_HALO = [patheffects.withStroke(linewidth=1.5, foreground="white")]
ARROW_ZORDER = 2.5  # above the page cells (patches: 1), below their labels (text: 3)


# 20 colours: tab10, then tab20's light shades. Sequence k gets colour k % 20.
_PALETTE = ([plt.get_cmap("tab10")(i) for i in range(10)]
            + [plt.get_cmap("tab20")(2 * i + 1) for i in range(10)])


def seq_color(label):
    """The colour of sequence `label`: a function of the label alone, so a sequence keeps its
    colour in every figure, every panel and every frame of a widget, whoever else is present.

    Integer ids (a cache's sequence ids) pick palette entry id % 20; single letters pick by
    their place in the alphabet ("A" -> 0, "B" -> 1, ...); other labels by their trailing
    number ("seq 3" -> 3), or by a fixed hash of their text.
    """
    return _PALETTE[_color_index(label) % len(_PALETTE)]


def _color_index(label) -> int:
    if isinstance(label, numbers.Integral):
        return int(label)
    text = str(label)
    if len(text) == 1 and text.isalpha():
        return ord(text.upper()) - ord("A")
    if digits := re.search(r"(\d+)$", text):
        return int(digits.group(1))
    return zlib.crc32(text.encode())


def color_map(state) -> dict:
    """{sequence label: colour} for the sequences in the state, or cache (see `seq_color`)."""
    return {seq: seq_color(seq) for seq in as_state(state, "state").tables}


# One cell costs a few patches and a text: ~4 ms each, so 20 000 pages took over a minute
# and most of a GB. A map this size is already past reading cell by cell.
MAX_DRAWN_PAGES = 1024


def grid_shape(num_pages: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, columns) of the page grid; refuses what cannot be drawn, before any figure."""
    if num_pages < 1:
        raise ValueError(f"num_pages: a page map needs at least one page, got {num_pages}")
    if num_pages > MAX_DRAWN_PAGES:
        raise ValueError(f"num_pages: {num_pages} pages is too many to draw one cell each "
                         f"(at most {MAX_DRAWN_PAGES}); draw a smaller cache, or summarise "
                         f"this one with plot_memory_timeline / plot_fragmentation")
    if ncols is not None and (not is_int(ncols) or ncols < 1):   # a NumPy int will do
        raise ValueError(f"ncols: expected a positive int or None, got {ncols!r}")
    ncols = int(ncols) if ncols else min(num_pages, 16 if num_pages > 64 else 8)
    return math.ceil(num_pages / ncols), ncols


def cell_xy(page: int, ncols: int) -> tuple[float, float]:
    """Lower-left corner of page `page`'s cell (row 0 at the top)."""
    row, col = divmod(page, ncols)
    return col, -row - 1


def draw_physical(ax, state: PageMapState, *, ncols: int | None = None, colors=None,
                  highlight=None, labels: bool = True) -> int:
    """Draw the physical page grid on `ax`; returns the number of columns used.

    highlight: a page id, or (page, offset) to also mark one slot inside the page.
    """
    rows, ncols = grid_shape(state.num_pages, ncols)
    colors = colors or color_map(state)
    first_owner = {}
    for seq, pages in state.tables.items():
        for vpage, page in enumerate(pages):
            first_owner.setdefault(page, (seq, vpage))
    for page in range(state.num_pages):
        x, y = cell_xy(page, ncols)
        refs = state.ref_counts[page] if page < len(state.ref_counts) else 0
        if refs == 0 or page not in first_owner:
            ax.add_patch(Rectangle((x + 0.04, y + 0.04), 0.92, 0.92, facecolor="white",
                                   edgecolor=FREE_EDGE, lw=0.8, gid=f"page:{page}:free"))
            if labels:
                ax.text(x + 0.5, y + 0.5, str(page), ha="center", va="center", fontsize=7,
                        color="#b0b0b0")
            continue
        seq, vpage = first_owner[page]
        color = colors[seq]
        fill = state.tokens_in_page(page) / state.page_size
        shared = refs > 1
        ax.add_patch(Rectangle((x + 0.04, y + 0.04), 0.92, 0.92, facecolor=color, alpha=PALE,
                               edgecolor="none", gid=f"page:{page}:used:{seq}"))
        ax.add_patch(Rectangle((x + 0.04, y + 0.04), 0.92 * fill, 0.92, facecolor=color,
                               edgecolor="none", hatch="///" if shared else None,
                               gid=f"page:{page}:fill:{seq}"))
        ax.add_patch(Rectangle((x + 0.04, y + 0.04), 0.92, 0.92, facecolor="none",
                               edgecolor="black" if shared else color, lw=1.6 if shared else 0.8))
        if labels:
            text = f"{page}\n{seq}:{vpage}" + (f"\nx{refs}" if shared else "")
            ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=6.5,
                    color="black", linespacing=1.0, path_effects=LABEL_HALO, gid=f"label:{page}",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7)
                    if shared else None)
    if highlight is not None:
        page, offset = highlight if isinstance(highlight, tuple) else (highlight, None)
        x, y = cell_xy(page, ncols)
        ax.add_patch(Rectangle((x, y), 1, 1, facecolor="none", edgecolor="red", lw=3,
                               gid=f"highlight:{page}"))
        if offset is not None:
            w = 0.92 / state.page_size
            ax.add_patch(Rectangle((x + 0.04 + offset * w, y + 0.04), w, 0.92, facecolor="red",
                                   alpha=0.8, edgecolor="none", gid=f"slot:{page}:{offset}"))
    ax.set_xlim(-0.1, ncols + 0.1)
    ax.set_ylim(-rows - 0.1, 0.1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    return ncols


def draw_block_tables(ax, state: PageMapState, *, colors=None, highlight=None) -> dict:
    """Draw each sequence's virtual pages as a row; returns {(seq, vpage): cell centre}."""
    colors = colors or color_map(state)
    centres = {}
    width = max([len(p) for p in state.tables.values()] + [1])
    for row, (seq, pages) in enumerate(state.tables.items()):
        y = -row - 1
        ax.text(-0.2, y + 0.5, f"seq {seq}", ha="right", va="center", fontsize=8)
        for vpage, page in enumerate(pages):
            hl = highlight == (seq, vpage)
            ax.add_patch(Rectangle((vpage + 0.05, y + 0.1), 0.9, 0.8, facecolor=colors[seq],
                                   edgecolor="red" if hl else "black", lw=2.5 if hl else 0.6,
                                   gid=f"vpage:{seq}:{vpage}"))
            ax.text(vpage + 0.5, y + 0.5, f"v{vpage}\n\u2192{page}", ha="center", va="center",
                    fontsize=6.5, linespacing=1.0)
            centres[(seq, vpage)] = (vpage + 0.95, y + 0.5)
    ax.set_xlim(-2.2, width + 0.2)
    ax.set_ylim(-max(len(state.tables), 1) - 0.2, 0.6)
    ax.set_title("block tables (virtual pages)", fontsize=9)
    ax.set_aspect("equal")
    ax.axis("off")
    return centres


def _check_highlight(state: PageMapState, highlight) -> None:
    """A highlight off the grid would be drawn in empty space, pointing at no page."""
    if highlight is None:
        return
    page, offset = highlight if isinstance(highlight, tuple) else (highlight, 0)
    if not (isinstance(page, numbers.Integral) and 0 <= page < state.num_pages):
        raise ValueError(f"highlight: page {page!r} is not a page of this cache "
                         f"(0..{state.num_pages - 1})")
    if not (isinstance(offset, numbers.Integral) and 0 <= offset < state.page_size):
        raise ValueError(f"highlight: offset {offset!r} is not a slot of a page "
                         f"(0..{state.page_size - 1})")


def plot_page_map(obj, *, arrows: bool = False, ncols: int | None = None, highlight=None,
                  title: str | None = None, labels: bool = True, figsize=None):
    """Draw the physical pages of a cache (or PageMapState); returns the matplotlib Figure.

    arrows: also draw each sequence's block table and arrows virtual page -> physical page.
    highlight: a physical page id, or (page, offset), outlined in red.
    """
    state = as_state(obj)
    colors = color_map(state)
    rows, cols = grid_shape(state.num_pages, ncols)
    _check_highlight(state, highlight)
    if arrows:
        width = max([len(p) for p in state.tables.values()] + [1])
        fig, (ax_v, ax_p) = plt.subplots(
            1, 2, figsize=figsize or (min(14, 3 + 0.55 * (width + cols)), 1.2 + 0.55 * max(rows, len(state.tables))),
            gridspec_kw={"width_ratios": [width + 2.4, cols]})
        centres = draw_block_tables(ax_v, state, colors=colors)
    else:
        fig, ax_p = plt.subplots(figsize=figsize or (1.2 + 0.6 * cols, 0.9 + 0.6 * rows))
    draw_physical(ax_p, state, ncols=ncols, colors=colors, highlight=highlight, labels=labels)
    if arrows:
        for (seq, vpage), (x, y) in centres.items():
            page = state.tables[seq][vpage]
            px, py = cell_xy(page, cols)
            # In the pages' axes (not the figure's), so that zorder puts them below the labels.
            arrow = ConnectionPatch((x, y), (px + 0.1, py + 0.5), coordsA="data", coordsB="data",
                                    axesA=ax_v, axesB=ax_p, arrowstyle="->", color=colors[seq],
                                    lw=0.9, alpha=0.8, zorder=ARROW_ZORDER, clip_on=False)
            arrow.set_in_layout(False)
            ax_p.add_artist(arrow)
    used, total = state.pages_in_use, state.num_pages
    ax_p.set_title(title or f"physical pages: {used} of {total} in use, "
                   f"{total - used} free (blank), page size {state.page_size}", fontsize=9)
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in colors.values()]
    if handles:
        ax_p.legend(handles, [f"seq {s}" for s in colors], loc="upper left",
                    bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def page_cells(fig) -> dict[int, str]:
    """{page id: "free" or the owning label} read back from a page map's patches (for tests)."""
    cells = {}
    for ax in fig.axes:
        for patch in ax.patches:
            gid = patch.get_gid() or ""
            parts = gid.split(":")
            if parts[0] == "page" and parts[2] in ("free", "used"):
                cells[int(parts[1])] = "free" if parts[2] == "free" else parts[3]
    return cells


def _listed(values, name: str, what: str) -> list:
    """values as a list; one item alone (a state, an int, a 0-d array) refused by name, where
    iterating it raised naming nothing."""
    if not hasattr(values, "__iter__") or getattr(values, "ndim", None) == 0:
        raise TypeError(f"{name}: expected a list of {what}, got {type(values).__name__}")
    return list(values)


def _check_panels(states: list[PageMapState], indices: list) -> None:
    """Every index names a state, and every state drawn has the first one's pages (the panels
    share one grid)."""
    for k, i in enumerate(indices):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(states):
            raise ValueError(f"indices[{k}]: expected a state index in [0, {len(states)}), "
                             f"got {i!r}")
    first = states[indices[0]].num_pages
    for i in indices:
        if states[i].num_pages != first:
            raise ValueError(f"states[{i}]: has {states[i].num_pages} pages where states"
                             f"[{indices[0]}] has {first}; the panels share one grid, so "
                             f"draw states of one cache")


def plot_states(states, indices=None, *, ncols: int | None = None, per_row: int = 3):
    """Several page maps side by side (e.g. states from `replay`), titled by their notes.

    Sequences keep one colour across the panels. Returns the Figure.
    """
    per_row = check_int(per_row, "per_row", minimum=1)   # 0 divided by zero, 2.5 in matplotlib
    states = [as_state(state, f"states[{i}]") for i, state in
              enumerate(_listed(states, "states", "states (for one, call plot_page_map)"))]
    if not states:
        raise ValueError("states: nothing to draw (no states)")
    indices = list(range(len(states))) if indices is None else _listed(indices, "indices",
                                                                       "state indices")
    if not indices:
        raise ValueError("indices: nothing to draw (an empty list of state indices)")
    _check_panels(states, indices)
    labels = []
    for i in indices:
        labels += [s for s in states[i].tables if s not in labels]
    colors = {s: seq_color(s) for s in labels}
    rows, cols = grid_shape(states[indices[0]].num_pages, ncols)
    nrows = math.ceil(len(indices) / per_row)
    fig, axes = plt.subplots(nrows, per_row, squeeze=False,
                             figsize=(per_row * (0.4 * cols + 0.4), nrows * (0.4 * rows + 0.7)))
    for ax in axes.flat[len(indices):]:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        draw_physical(ax, states[i], ncols=ncols, colors=colors, labels=True)
        ax.set_title(f"{i}: {states[i].note}", fontsize=8)
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in colors.values()]
    if handles:
        fig.legend(handles, [f"seq {s}" for s in colors], loc="lower center", ncol=len(handles),
                   fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
