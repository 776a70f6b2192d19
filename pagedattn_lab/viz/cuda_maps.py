"""Lesson 03's pictures of the CUDA execution model: which thread of which block takes which
element (1-D and 2-D launches), and how values move between the lanes of a warp in a
butterfly of `__shfl_xor_sync`."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

from ..validate import check_int
from .limits import check_cells, check_threads

BLOCK_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
                "#ff9da7", "#9c755f", "#bab0ac")


def plot_launch_1d(n: int, threads_per_block: int):
    """Threads of a 1-D launch of ceil(n / threads_per_block) blocks over n elements: each
    cell is one thread, coloured by its block and labelled with threadIdx.x; the global index
    blockIdx.x * blockDim.x + threadIdx.x is the column. Threads past n are hatched (they
    must not touch the arrays). Cells carry gids "thread:<block>:<thread>:work|idle"."""
    n = check_int(n, "n", minimum=1)
    threads_per_block = check_threads(threads_per_block)
    blocks = math.ceil(n / threads_per_block)
    width = blocks * threads_per_block
    check_cells(width, "n, threads_per_block", "threads")
    fig, ax = plt.subplots(figsize=(min(12.0, 1.5 + 0.38 * width), 2.1))
    for i in range(width):
        block, thread = divmod(i, threads_per_block)
        idle = i >= n
        ax.add_patch(Rectangle((i, 0), 0.92, 0.9, lw=0.5, edgecolor="#777",
                               facecolor="white" if idle else BLOCK_COLORS[block % 10],
                               hatch="///" if idle else None,
                               gid=f"thread:{block}:{thread}:{'idle' if idle else 'work'}"))
        ax.text(i + 0.46, 0.45, str(thread), ha="center", va="center", fontsize=7,
                color="#555" if idle else "white")
    for b in range(blocks):
        ax.text((b + 0.5) * threads_per_block, 1.12, f"blockIdx.x = {b}", ha="center",
                fontsize=8)
    # The n line stops just above the cells: the block labels above them sit where n may fall.
    ax.plot([n - 0.04] * 2, [-0.5, 1.0], color="black", lw=1.2, ls="--", gid="n-line")
    ax.text(n + 0.1, -0.32, f"n = {n}", fontsize=8)
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.5, 1.4)
    ax.set_yticks([])
    ticks = range(0, width, max(1, threads_per_block // 2))
    ax.set_xticks([t + 0.46 for t in ticks], [str(t) for t in ticks], fontsize=7)
    ax.set_xlabel("element i = blockIdx.x * blockDim.x + threadIdx.x  (label in a cell: "
                  "threadIdx.x)", fontsize=8)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"grid = ({blocks},), block = ({threads_per_block},): {width} threads for "
                 f"{n} elements; hatched threads must do nothing", fontsize=9)
    fig.tight_layout()
    return fig


def plot_launch_2d(rows: int, cols: int, block=(8, 4)):
    """A 2-D launch over a rows x cols row-major matrix: x (fastest, threadIdx.x) along the
    columns, y along the rows. Each cell is an element coloured by its block; threads of the
    rounded-up grid past the matrix are hatched. Cells carry gids "cell:<row>:<col>:<bx>:<by>"
    (or ":idle")."""
    rows, cols = check_int(rows, "rows", minimum=1), check_int(cols, "cols", minimum=1)
    if not isinstance(block, (tuple, list)) or len(block) != 2:
        raise TypeError(f"block: expected (x, y) threads, got {block!r}")
    bx, by = (check_int(b, f"block[{i}]", minimum=1) for i, b in enumerate(block))
    check_threads(bx * by, "block (x * y threads)")
    gx, gy = math.ceil(cols / bx), math.ceil(rows / by)
    width, height = gx * bx, gy * by
    check_cells(width * height, "rows, cols, block", "threads")
    fig, ax = plt.subplots(figsize=(min(11.0, 1.6 + 0.33 * width), 1.2 + 0.33 * height))
    for r in range(height):
        for c in range(width):
            blk_x, blk_y = c // bx, r // by
            idle = r >= rows or c >= cols
            face = BLOCK_COLORS[(blk_x + 3 * blk_y) % 10]
            ax.add_patch(Rectangle((c, -r - 1), 0.94, 0.94, lw=0.4, edgecolor="#888",
                                   facecolor="white" if idle else face,
                                   hatch="///" if idle else None,
                                   gid=f"cell:{r}:{c}:{'idle' if idle else f'{blk_x}:{blk_y}'}"))
    ax.plot([0, cols, cols, 0, 0], [0, 0, -rows, -rows, 0], color="black", lw=1.5)
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-height - 0.2, 0.2)
    ax.set_xticks([c + 0.47 for c in range(0, width, bx)], [str(c) for c in range(0, width, bx)],
                  fontsize=7)
    ax.set_yticks([-r - 0.53 for r in range(0, height, by)], [str(r) for r in range(0, height, by)],
                  fontsize=7)
    ax.set_xlabel("column = blockIdx.x * blockDim.x + threadIdx.x  (contiguous in memory)",
                  fontsize=8)
    ax.set_ylabel("row = blockIdx.y * blockDim.y\n+ threadIdx.y", fontsize=8)
    ax.set_title(f"{rows} x {cols} matrix, block = ({bx}, {by}), grid = ({gx}, {gy}); colour = "
                 "block, hatched = threads outside the matrix", fontsize=9)
    fig.tight_layout()
    return fig


def plot_xor_butterfly(lanes: int = 8):
    """The lanes of a warp exchanging values with __shfl_xor_sync(mask, v, offset) for
    offset = lanes/2, ..., 2, 1: at each step lane i receives the value of lane i ^ offset.
    After log2(lanes) steps of v += received, every lane holds the total. Arrows carry gids
    "xor:<offset>:<src>-><dst>"."""
    lanes = check_int(lanes, "lanes", minimum=2, maximum=32)
    if lanes & (lanes - 1):   # the butterfly halves the offset: a sum needs a power of two
        raise ValueError(f"lanes: expected a power of two 2..32 (a warp's lanes), got {lanes}")
    steps = []
    offset = lanes // 2
    while offset >= 1:
        steps.append(offset)
        offset //= 2
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(steps), 0.9 + 0.42 * lanes))
    values = [[1 if i == j else 0 for j in range(lanes)] for i in range(lanes)]  # who is summed
    for s, off in enumerate(steps + [None]):
        x = s * 1.6
        for lane in range(lanes):
            have = [j for j in range(lanes) if values[lane][j]]
            label = f"a{have[0]}" if len(have) == 1 else (
                "all" if len(have) == lanes else f"a{have[0]}..a{have[-1]}"
                if have == list(range(have[0], have[-1] + 1)) else "+".join(f"a{j}" for j in have))
            ax.add_patch(Rectangle((x, -lane - 0.8), 1.0, 0.62, facecolor="#dde8f3",
                                   edgecolor="#4e79a7", lw=0.8))
            ax.text(x + 0.5, -lane - 0.49, label, ha="center", va="center", fontsize=6.5)
        if off is None:
            break
        for lane in range(lanes):
            src = lane ^ off
            ax.add_patch(FancyArrowPatch((x + 1.0, -lane - 0.49), (x + 1.6, -lane - 0.49),
                                         arrowstyle="-|>", mutation_scale=6, lw=0.6,
                                         color="#aaaaaa", gid=f"keep:{off}:{lane}"))
            ax.add_patch(FancyArrowPatch((x + 1.0, -src - 0.49), (x + 1.6, -lane - 0.49),
                                         arrowstyle="-|>", mutation_scale=7, lw=0.6,
                                         color="#e15759", gid=f"xor:{off}:{src}->{lane}"))
        ax.text(x + 1.3, 0.15, f"xor {off}", ha="center", fontsize=8, color="#e15759")
        values = [[values[lane][j] or values[lane ^ off][j] for j in range(lanes)]
                  for lane in range(lanes)]
    ax.set_yticks([-lane - 0.49 for lane in range(lanes)], [f"lane {i}" for i in range(lanes)],
                  fontsize=7)
    ax.tick_params(axis="y", length=0)
    ax.set_xticks([])
    ax.set_xlim(-0.1, len(steps) * 1.6 + 1.1)
    ax.set_ylim(-lanes - 0.1, 0.5)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"v += __shfl_xor_sync(mask, v, offset), {lanes} lanes: grey = a lane's own v, "
                 "red = the v it receives;\neach box says whose values its v now holds",
                 fontsize=9)
    fig.tight_layout()
    return fig
