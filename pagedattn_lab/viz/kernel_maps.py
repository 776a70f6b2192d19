"""How kernels map threads to work: the naive kernel's one-thread-per-query grid, the tiled
kernel's query x key tiles over the causal triangle, and the decode kernel's page walk."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..validate import check_int, check_int_list
from .limits import check_cells, check_threads


def plot_query_mapping(seq_lens, threads_per_block: int, *, max_len: int | None = None):
    """One row per sequence, one cell per query position: which thread block (blockIdx.x)
    handles it. Positions at or past the sequence's length are padding (hatched): their
    threads write zeros and stop. Threads past max_len (the grid rounds up) are dark.
    Returns the Figure; cells carry gids "q:<b>:<t>:<block>|pad|idle"."""
    # ints only: int(3.5) drew a sequence of 3 positions as if it were one of 3.5
    seq_lens = check_int_list(seq_lens, "seq_lens", "length", minimum=0)
    if not seq_lens:
        raise ValueError("seq_lens: expected at least one sequence, got none")
    threads_per_block = check_threads(threads_per_block)
    longest = max(seq_lens)
    max_len = max(longest, 1) if max_len is None else check_int(max_len, "max_len",
                                                                minimum=max(longest, 1))
    blocks = math.ceil(max_len / threads_per_block)
    width = blocks * threads_per_block
    check_cells(width * len(seq_lens), "seq_lens, threads_per_block", "query positions")
    fig, ax = plt.subplots(figsize=(min(12, max(7.0, 2.0 + 0.2 * width)), 1.3 + 0.45 * len(seq_lens)))
    for b, n in enumerate(seq_lens):
        y = -b - 1
        for t in range(width):
            block = t // threads_per_block
            if t >= max_len:
                face, hatch, kind = "#444", None, "idle"
            elif t >= n:
                face, hatch, kind = "white", "///", "pad"
            else:
                face, hatch, kind = plt.get_cmap("tab10")(block % 10), None, str(block)
            ax.add_patch(Rectangle((t, y), 0.92, 0.85, facecolor=face, hatch=hatch,
                                   edgecolor="#999", lw=0.3, gid=f"q:{b}:{t}:{kind}"))
        ax.text(-0.5, y + 0.42, f"seq {b} (len {n})", ha="right", va="center", fontsize=8)
    for blk in range(1, blocks):
        ax.axvline(blk * threads_per_block - 0.04, color="black", lw=1.2)
    ax.set_xlim(-0.2, width)
    ax.set_ylim(-len(seq_lens) - 0.3, 0.3)
    ax.set_yticks([])
    ax.set_xlabel("query position t = blockIdx.x * blockDim.x + threadIdx.x")
    ax.set_title(f"one thread per query, blocks of {threads_per_block} threads\n"
                 f"colour = blockIdx.x; hatched = padding row; dark = past max_len", fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def plot_causal_tiles(seq_len: int, *, tile_q: int = 64, tile_k: int = 32):
    """The causal score matrix of one sequence cut into (tile_q queries) x (tile_k keys)
    tiles: computed in full, masked on the diagonal, or skipped (all keys after all queries).
    Returns the Figure; tiles carry gids "tile:<qi>:<ki>:full|diag|skip"."""
    seq_len, tile_q, tile_k = _tile_sizes(seq_len, tile_q, tile_k)
    nq, nk = math.ceil(seq_len / tile_q), math.ceil(seq_len / tile_k)
    check_cells(nq * nk, "seq_len, tile_q, tile_k", "tiles")
    fig, ax = plt.subplots(figsize=(5.5, 5.3))
    colors = {"full": "#2f7ed8", "diag": "#f7a35c", "skip": "#eeeeee"}
    for qi in range(nq):
        q_lo, q_hi = qi * tile_q, min(seq_len, (qi + 1) * tile_q) - 1
        for ki in range(nk):
            k_lo, k_hi = ki * tile_k, min(seq_len, (ki + 1) * tile_k) - 1
            kind = "skip" if k_lo > q_hi else "full" if k_hi <= q_lo else "diag"
            ax.add_patch(Rectangle((k_lo, q_lo), k_hi - k_lo + 1, q_hi - q_lo + 1,
                                   facecolor=colors[kind], edgecolor="white", lw=1,
                                   gid=f"tile:{qi}:{ki}:{kind}"))
    t = np.array([0, seq_len])
    ax.plot(t, t, color="black", lw=1, label="diagonal: key = query")
    ax.set_xlim(0, seq_len)
    ax.set_ylim(seq_len, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, ["tile computed in full", "tile on the diagonal: masked",
                        "tile skipped (future keys)"], fontsize=7, loc="upper right")
    ax.set_title(f"causal attention, {seq_len} tokens: {tile_q}-query x {tile_k}-key tiles",
                 fontsize=9)
    fig.tight_layout()
    return fig


def tile_counts(seq_len: int, tile_q: int = 64, tile_k: int = 32) -> dict:
    """How many tiles of each kind `plot_causal_tiles` draws: {"full", "diag", "skip"}."""
    seq_len, tile_q, tile_k = _tile_sizes(seq_len, tile_q, tile_k)
    nq, nk = -(-seq_len // tile_q), -(-seq_len // tile_k)
    # Query tile qi holds queries q_lo = qi * tile_q .. q_hi = min(seq_len, q_lo + tile_q) - 1.
    # Key tile ki is skipped when ki * tile_k > q_hi (nk - 1 - q_hi // tile_k of them), full
    # when its last key is <= q_lo: (q_lo + 1) // tile_k of the first nk - 1 (more only for
    # the last query tile, capped), and the last key tile when q_lo = seq_len - 1. Summed in
    # closed form: counting tile by tile never returned for a length of 2**31.
    last_lo = (nq - 1) * tile_q
    skip = (nq * (nk - 1) - _floor_sum(nq - 1, tile_k, tile_q, tile_q - 1)
            - (seq_len - 1) // tile_k)
    full = (_floor_sum(nq - 1, tile_k, tile_q, 1) + min(nk - 1, (last_lo + 1) // tile_k)
            + (last_lo == seq_len - 1))
    return {"full": full, "diag": nq * nk - full - skip, "skip": skip}


def _floor_sum(n: int, m: int, a: int, b: int) -> int:
    """sum of (a * i + b) // m for i in 0..n-1 (a, b >= 0, m >= 1), in O(log) steps: the
    Euclid-like reduction of AtCoder Library's floor_sum."""
    total = 0
    while n:
        total += n * (n - 1) // 2 * (a // m) + n * (b // m)
        a, b = a % m, b % m
        y_max = a * n + b
        if y_max < m:
            break
        n, b, m, a = y_max // m, y_max % m, a, m
    return total


def _tile_sizes(seq_len, tile_q, tile_k) -> tuple[int, int, int]:
    """A causal matrix of at least one token cut into tiles of at least one row and column
    (0 divided by zero; a negative length drew an empty picture)."""
    return (check_int(seq_len, "seq_len", minimum=1), check_int(tile_q, "tile_q", minimum=1),
            check_int(tile_k, "tile_k", minimum=1))
