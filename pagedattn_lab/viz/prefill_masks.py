"""Pictures of packed prefill (lesson 10): the bottom-right causal mask of a mixed batch, and
which K/V tiles each query tile of the tensor-core kernel loads.

A packed batch stacks the new tokens of every sequence into one q: sequence b owns rows
`qo_indptr[b]:qo_indptr[b+1]`, its last q_len tokens (`seq_lens[b]` counts all of its tokens,
the new ones included). Query i of sequence b sits at position `seq_len - q_len + i` and sees
keys 0 .. that position: the mask is aligned bottom-right.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..prefill_masks import PackedBatch, packed_batch, packed_masks
from ..validate import check_int
from .limits import check_cells
from .page_table import seq_color


def plot_packed_masks(qo_indptr, seq_lens, labels=None):
    """One panel per sequence: rows are its packed query rows (numbered as in q), columns its
    keys; cached-prefix keys, new keys, visible and hidden cells in different shades. Cells
    carry gids "mask:<b>:<row>:<key>:<visible|hidden>" (for tests). Returns the Figure."""
    indptr, lens, _ = _packed_batch(qo_indptr, seq_lens)
    if labels is not None and len(labels) != lens.size:
        raise ValueError(f"labels: expected {lens.size} names (one per sequence), got "
                         f"{len(labels)}")
    masks = packed_masks(indptr, lens)
    widths = [max(int(n), 1) for n in lens]
    fig, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks) + 0.6, 3.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for b, (ax, mask) in enumerate(zip(axes[0], masks)):
        q_len, seq_len = mask.shape
        prefix = seq_len - q_len
        color = seq_color(b)
        for i in range(q_len):
            row = int(indptr[b]) + i
            for j in range(seq_len):
                seen = bool(mask[i, j])
                face = (color if j >= prefix else "#7a7a7a") if seen else "#f2f2f2"
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=face, edgecolor="white", lw=0.6,
                                       gid=f"mask:{b}:{row}:{j}:{'visible' if seen else 'hidden'}"))
        if prefix:
            ax.axvline(prefix, color="black", lw=1.2, ls="--")
        ax.set_xlim(0, max(seq_len, 1))
        ax.set_ylim(max(q_len, 1), 0)
        ax.set_yticks(np.arange(q_len) + 0.5)
        ax.set_yticklabels([str(int(indptr[b]) + i) for i in range(q_len)], fontsize=7)
        ax.set_xlabel("key position", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        name = labels[b] if labels else f"sequence {b}"
        ax.set_title(f"{name}\nq_len {q_len}, seq_len {seq_len}", fontsize=9)
    axes[0][0].set_ylabel("packed row of q")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in ("#7a7a7a", seq_color(0), "#f2f2f2")]
    fig.legend(handles, ["visible: cached-prefix key",
                         "visible: key of a new token (its sequence's colour)",
                         "hidden (a later position)"], loc="lower center", ncol=3, fontsize=8,
               frameon=False)
    fig.suptitle("bottom-right causal masks of one packed batch (dashed: end of the cached "
                 "prefix)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def plot_tile_work(q_len: int, seq_len: int, *, rows: int = 16, kv_tile: int = 64):
    """One sequence's score matrix cut into query tiles of `rows` rows and K/V tiles of
    `kv_tile` keys: loaded in full, loaded and masked, or never loaded (every key past the
    tile's last query). Tiles carry gids "tile:<qi>:<ki>:full|diag|skip". Returns the Figure."""
    q_len = check_int(q_len, "q_len", minimum=1)
    seq_len = check_int(seq_len, "seq_len", minimum=q_len)   # the new tokens are its last
    rows, kv_tile = check_int(rows, "rows", minimum=1), check_int(kv_tile, "kv_tile", minimum=1)
    check_cells(-(-q_len // rows) * -(-seq_len // kv_tile), "q_len, seq_len, rows, kv_tile",
                "tiles")
    prefix = seq_len - q_len
    colors = {"full": "#2f7ed8", "diag": "#f7a35c", "skip": "#eeeeee"}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for qi in range(-(-q_len // rows)):
        lo, hi = qi * rows, min(q_len, (qi + 1) * rows) - 1     # rows of the tile
        for ki in range(-(-seq_len // kv_tile)):
            k_lo, k_hi = ki * kv_tile, min(seq_len, (ki + 1) * kv_tile) - 1
            kind = ("skip" if k_lo > prefix + hi else
                    "full" if k_hi <= prefix + lo else "diag")
            ax.add_patch(Rectangle((k_lo, lo), k_hi - k_lo + 1, hi - lo + 1,
                                   facecolor=colors[kind], edgecolor="white", lw=1,
                                   gid=f"tile:{qi}:{ki}:{kind}"))
    ax.plot([prefix, seq_len], [0, q_len], color="black", lw=1)
    ax.set_xlim(0, seq_len)
    ax.set_ylim(q_len, 0)
    ax.set_xlabel("key position")
    ax.set_ylabel("new query i")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, ["K/V tile loaded, no mask", "loaded, masked on the diagonal",
                        "never loaded"], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    ax.set_title(f"a chunk of {q_len} new tokens over {prefix} cached ones: {rows}-row query "
                 f"tiles x {kv_tile}-key K/V tiles", fontsize=9)
    fig.tight_layout()
    return fig


def _packed_batch(qo_indptr, seq_lens) -> PackedBatch:
    """`packed_batch` of a batch with at least one sequence (a panel to draw) and cells few
    enough to draw."""
    batch = packed_batch(qo_indptr, seq_lens)
    if batch.indptr.size < 2:
        raise ValueError(f"qo_indptr: expected the offsets of at least one sequence "
                         f"([0, q_len, ...]), got {batch.indptr.tolist()}")
    check_cells(batch.cells, "qo_indptr, seq_lens", "mask cells")
    return batch
