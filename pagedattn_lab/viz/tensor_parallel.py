"""Pictures for lesson 13: attention heads over GPUs, and what crosses the wire per step.

`plot_head_split` draws one panel per rank: the query and KV heads it owns (the others
greyed), which KV head each query head reads, and its cache: the SAME page ids as every other
rank (one block table), holding only its own KV heads. `plot_step_bytes` compares, per
decode step, the bytes sent between GPUs with the K/V bytes each GPU reads from its own
memory.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from ..distributed.shard import StepBytes, check_split, head_range
from ..validate import check_int_list
from ..validate_kinds import is_finite_number
from .limits import check_cells

_GREY = (0.88, 0.88, 0.88)


def _box(ax, x, y, w, h, color, text, text_color="black"):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="white", linewidth=1.5))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8, color=text_color)


def _heads(kind: str, start: int, stop: int) -> str:
    """'KV head 0' for one head, 'KV heads 0-1' for several (never 'KV heads 0-0')."""
    return f"{kind} head {start}" if stop - start == 1 else f"{kind} heads {start}-{stop - 1}"


def plot_head_split(num_heads: int, num_kv_heads: int, world_size: int, pages):
    """One panel per rank: its heads and its cache over the shared block-table row `pages`
    (a list of page ids)."""
    num_heads, num_kv_heads, world_size = check_split(num_heads, num_kv_heads, world_size)
    pages = check_int_list(pages, "pages", "page id")
    negative = next((i for i, page in enumerate(pages) if page < 0), None)
    if negative is not None:   # -1 pads a block-table row past the sequence's last page
        raise ValueError(f"pages[{negative}]: expected a page id >= 0, got {pages[negative]} "
                         f"(padding? pass only the pages the sequence holds)")
    boxes = num_heads + num_kv_heads + len(pages) * (1 + num_kv_heads // world_size)
    check_cells(world_size * boxes, "num_heads, num_kv_heads, world_size, pages", "boxes")
    group = num_heads // num_kv_heads
    colors = [plt.get_cmap("tab10")(r) for r in range(world_size)]
    width = max(num_heads, 1) + 2 + len(pages) + 1
    fig, axes = plt.subplots(world_size, 1, figsize=(min(14, 0.55 * width + 2),
                                                     1.9 * world_size + 0.6), squeeze=False)
    for rank, ax in enumerate(axes[:, 0]):
        h = head_range(rank, world_size, num_heads, num_kv_heads)
        mine = colors[rank]
        for q in range(num_heads):
            own = h.q_start <= q < h.q_stop
            _box(ax, q, 2.2, 1, 0.8, mine if own else _GREY, f"q{q}")
        kv_w = num_heads / num_kv_heads          # KV boxes under their query groups
        for kv in range(num_kv_heads):
            own = h.kv_start <= kv < h.kv_stop
            _box(ax, kv * kv_w, 0.6, kv_w, 0.8, mine if own else _GREY, f"kv{kv}")
        for q in range(h.q_start, h.q_stop):
            ax.plot([q + 0.5, (q // group + 0.5) * kv_w], [2.2, 1.4], color=mine, lw=1)
        x0 = num_heads + 2                      # its cache: every page id, its heads only
        n_own = h.kv_stop - h.kv_start
        for i, page in enumerate(pages):
            _box(ax, x0 + i, 3.0, 1, 0.5, "white", str(page))
            for j in range(n_own):   # its KV heads share [1.4, 3.0), under the page id
                _box(ax, x0 + i, 3.0 - 1.6 * (j + 1) / n_own, 1, 1.6 / n_own * 0.95,
                     mine, f"kv{h.kv_start + j}", "white")
        ax.text(x0, 3.75, "page ids (the block table's row, the same on every rank)",
                fontsize=8)
        ax.text(-0.2, 3.3, f"GPU {rank}: {_heads('query', h.q_start, h.q_stop)}, "
                f"{_heads('KV', h.kv_start, h.kv_stop)}", fontsize=9, weight="bold")
        ax.set_xlim(-0.5, x0 + len(pages) + 0.5)
        ax.set_ylim(0.4, 4.1)
        ax.set_axis_off()
    fig.suptitle(f"{num_heads} query heads, {num_kv_heads} KV heads over {world_size} GPUs: "
                 "each GPU's pages hold only its KV heads", fontsize=10)
    fig.tight_layout()
    return fig


def plot_step_bytes(rows):
    """rows: [(label, StepBytes-like with .tables, .output_share, .output, .kv_read)]: a
    log-scale bar chart of the bytes of one step (for a whole model: pass totals over its
    layers). A row with one GPU (its share is the whole output) sends nothing: it gets no wire
    bars, and says so, rather than bars for bytes that never leave the GPU."""
    _check_rows(rows)
    fig, ax = plt.subplots(figsize=(8, 3.2))   # (the size the stored lesson output names)
    kinds = [("tables", "block tables (broadcast)"), ("output", "outputs (all-gathered)"),
             ("kv_read", "K/V read locally, per GPU")]
    width = 0.8 / len(kinds)
    alone = [b.output_share >= b.output for _, b in rows]
    for i, (field, label) in enumerate(kinds):
        shown = [x for x in range(len(rows)) if field == "kv_read" or not alone[x]]
        ax.bar([x + i * width for x in shown], [getattr(rows[x][1], field) for x in shown],
               width, label=label)
    for x in (x for x in range(len(rows)) if alone[x]):
        ax.text(x + 0.5 * width, min(b.kv_read for _, b in rows) / 100, "nothing\ncrosses",
                ha="center", va="center", fontsize=8)
    ax.set_xticks([x + width for x in range(len(rows))], [label for label, _ in rows])
    ax.set_xlim(-width, len(rows) - 1 + 3 * width)   # (a row without wire bars keeps its room)
    ax.set_yscale("log")
    ax.set_ylabel("bytes per decode step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))   # (clear of the bars)
    ax.set_title("What crosses the wire vs what stays on each GPU")
    fig.tight_layout()
    return fig


def _check_rows(rows) -> None:
    """Refuse, by name and index, what the log-scale chart cannot draw: no rows (matplotlib
    failed on the empty axis), a row not (label, bytes), bytes not numbers >= 0, or no K/V
    read (every row has that bar, and the log axis has no place for 0)."""
    if not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows: expected a list of (label, StepBytes) pairs, got {rows!r}")
    if not rows:
        raise ValueError("rows: expected at least one (label, StepBytes) pair, got none")
    for i, row in enumerate(rows):
        if not isinstance(row, tuple) or len(row) != 2:
            raise TypeError(f"rows[{i}]: expected a (label, StepBytes) pair, got {row!r}")
        for field in StepBytes._fields:
            value, least = getattr(row[1], field, None), 1 if field == "kv_read" else 0
            if not is_finite_number(value):
                raise TypeError(f"rows[{i}][1].{field}: expected a number of bytes, got "
                                f"{value!r}")
            if value < least:
                raise ValueError(f"rows[{i}][1].{field}: expected a number of bytes >= {least} "
                                 f"(drawn on a log scale), got {value!r}")
