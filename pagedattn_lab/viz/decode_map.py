"""The decode kernel's thread mapping as a picture, and where decode sits on a roofline.

`decode_layout` restates the mapping written at the top of `kernels/decode.cu` (block size
from the wrapper, unroll factors read from the kernel's own #defines, so the two cannot
drift apart): a block owns one (sequence, KV head, partition); a *thread group* of
head_dim / VEC consecutive threads owns one token at a time, each thread loading one
16-byte chunk of that token's K and V rows; group g takes tokens base + u * ngroups + g
for u < unroll, then the block moves on by ngroups * unroll tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch, Rectangle

from ..attention_common import THREADS, element_dtype
from ..decode_choice import supported_head_dim
from ..decode_plan import group_kernel_size
from ..kernels import expanded_source
from ..split_k import partition_bounds
from ..validate import check_int

WARP_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
               "#ff9da7")


def _kernel_define(name: str) -> int:
    match = re.search(rf"#define\s+{name}\s+(\d+)", expanded_source("decode.cu"))
    if match is None:
        raise LookupError(f"kernels/decode.cu and its headers no longer define {name}")
    return int(match.group(1))


@dataclass(frozen=True)
class DecodeLayout:
    """How one decode block's threads share out a partition's tokens (see decode.cu)."""
    threads: int      # per block
    vec: int          # elements per 16-byte load (4 fp32, 8 fp16)
    tg: int           # threads per token: head_dim / vec
    ngroups: int      # thread groups per block: threads / tg
    unroll: int       # tokens per group per step
    part_len: int     # tokens per partition

    @property
    def step(self) -> int:
        """Tokens the whole block covers per step."""
        return self.ngroups * self.unroll

    def owner(self, token: int) -> dict:
        """Which partition, step, group and warp read `token`, and its threads."""
        part, rel = divmod(token, self.part_len)
        step, within = divmod(rel, self.step)
        u, group = divmod(within, self.ngroups)
        first = group * self.tg
        return {"partition": part, "step": step, "u": u, "group": group,
                "warp": first // 32, "threads": (first, first + self.tg - 1)}


def decode_layout(head_dim: int, dtype, *, group_size: int = 1, part_len: int = 512
                  ) -> DecodeLayout:
    """The mapping decode.cu uses for this head_dim and cache dtype; `group_size` query heads
    per KV head picks the kernel (GQA blocks of 4+ heads unroll less). Sizes the SIMT kernel
    does not take are refused by name (head_dim 3 gave a group of 0 threads)."""
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    dtype = element_dtype(dtype)
    unsupported = supported_head_dim("simt", dtype.name, head_dim)
    if unsupported:
        raise ValueError(f"head_dim: {unsupported}, got {head_dim}")
    group_size = check_int(group_size, "group_size", minimum=1)
    part_len = check_int(part_len, "part_len", minimum=1)
    vec = 16 // dtype.itemsize
    tg = head_dim // vec
    gmax = group_kernel_size(group_size)
    unroll = _kernel_define("DECODE_UNROLL_GQA" if gmax >= 4 else "DECODE_UNROLL")
    return DecodeLayout(THREADS, vec, tg, THREADS // tg, unroll, part_len)


def _block_grid(ax, seq_lens, num_heads, num_kv_heads, part_len, focus):
    group = num_heads // num_kv_heads
    parts = -(-max(seq_lens) // part_len)
    rows = [(b, kvh) for b in range(len(seq_lens)) for kvh in range(num_kv_heads)]
    for r, (b, kvh) in enumerate(rows):
        bounds = partition_bounds(seq_lens[b], part_len)
        for p in range(parts):
            live = p < len(bounds)
            face = "#dde8f3" if live else "white"
            if (b, kvh, p) == focus:
                face = "#ffd966"
            ax.add_patch(Rectangle((p, -r - 1), 0.94, 0.9, facecolor=face, edgecolor="#777",
                                   hatch=None if live else "//", lw=0.6,
                                   gid=f"block:{b}:{kvh}:{p}:{'live' if live else 'exits'}"))
            text = (f"tokens {bounds[p][0]}-{bounds[p][1] - 1}" if live else "exits at once")
            ax.text(p + 0.47, -r - 0.55, text, ha="center", va="center", fontsize=7)
    labels = [f"seq {b} (len {seq_lens[b]}), kv head {kvh}: " +
              (f"q heads {kvh * group}-{kvh * group + group - 1}" if group > 1 else f"head {kvh}")
              for b, kvh in rows]
    ax.set_xlim(-0.05, parts)
    ax.set_ylim(-len(rows) - 0.1, 0.1)
    ax.set_xticks([p + 0.47 for p in range(parts)], [f"partition {p}" for p in range(parts)],
                  fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([-r - 0.55 for r in range(len(rows))], labels, fontsize=7)
    ax.tick_params(axis="y", length=0)
    for side in ("right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title("1. the grid: one block per (partition, KV head, sequence) = (blockIdx.x, .y, "
                 ".z); the yellow block is drawn below", fontsize=9, loc="left")


def _block_tokens(ax, layout, table_row, page_size, start, end):
    first_page, last_page = start // page_size, (end - 1) // page_size
    for r, vpage in enumerate(range(first_page, last_page + 1)):
        y = -r - 1
        for off in range(page_size):
            t = vpage * page_size + off
            if t < start or t >= end:
                ax.add_patch(Rectangle((off, y), 0.94, 0.88, facecolor="#f2f2f2",
                                       edgecolor="#ccc", lw=0.4, hatch="..",
                                       gid=f"tok:{t}:outside"))
                continue
            who = layout.owner(t)
            ax.add_patch(Rectangle((off, y), 0.94, 0.88,
                                   facecolor=WARP_COLORS[who["warp"] % len(WARP_COLORS)],
                                   edgecolor="white", lw=0.4,
                                   gid=f"tok:{t}:warp{who['warp']}:group{who['group']}"))
            ax.text(off + 0.47, y + 0.44, f"g{who['group']}\ns{who['step']}", ha="center",
                    va="center", fontsize=5.5, color="white")
    n_rows = last_page - first_page + 1
    ax.set_yticks([-r - 0.56 for r in range(n_rows)],
                  [f"virtual page {v} -> physical page {int(table_row[v])}"
                   for v in range(first_page, last_page + 1)], fontsize=7)
    ax.tick_params(axis="y", length=0)
    ax.set_xlim(-0.1, page_size)
    ax.set_ylim(-n_rows - 0.1, 0.1)
    ax.set_xticks(np.arange(page_size) + 0.47, range(page_size), fontsize=6)
    ax.set_xlabel("offset in the page (token % page_size)", fontsize=8)
    for side in ("right", "left", "top"):
        ax.spines[side].set_visible(False)
    warps = sorted({layout.owner(t)["warp"] for t in range(start, end)})
    ax.legend([Patch(color=WARP_COLORS[w % len(WARP_COLORS)]) for w in warps],
              [f"warp {w}" for w in warps], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"2. inside the yellow block: tokens {start}-{end - 1}, one row per page; "
                 f"colour = warp, g = thread group ({layout.tg} threads), s = step "
                 f"({layout.step} tokens per step)", fontsize=9, loc="left")


def _token_row(ax, layout, num_kv_heads, head_dim, kv_head, itemsize):
    row = num_kv_heads * head_dim
    for e in range(0, row, layout.vec):
        mine = kv_head * head_dim <= e < (kv_head + 1) * head_dim
        lane = (e - kv_head * head_dim) // layout.vec
        ax.add_patch(Rectangle((e, 0), layout.vec * 0.97, 1,
                               facecolor=WARP_COLORS[0] if mine else "#e6e6e6",
                               edgecolor="white", lw=0.8,
                               gid=f"chunk:{e}:{'lane' + str(lane) if mine else 'other head'}"))
        if mine and layout.tg <= 32:
            ax.text(e + layout.vec / 2, 0.5, f"t{lane}", ha="center", va="center", fontsize=6,
                    color="white")
    for h in range(1, num_kv_heads):
        ax.axvline(h * head_dim, color="black", lw=1)
    for h in range(num_kv_heads):
        ax.text((h + 0.5) * head_dim, 1.15, f"kv head {h}", ha="center", fontsize=7)
    ax.set_xlim(0, row)
    ax.set_ylim(-0.2, 1.5)
    ax.set_yticks([])
    ax.set_xlabel(f"one token's K row in the cache: k_cache[page, offset, :, :] = "
                  f"{num_kv_heads} x {head_dim} contiguous values", fontsize=8)
    ax.set_title(f"3. one token: thread t{{i}} of its group loads {layout.vec} values "
                 f"({layout.vec * itemsize} bytes) of K, the same of V; shuffles add the "
                 f"{layout.tg} partial dot products", fontsize=9, loc="left")


def plot_decode_mapping(seq_lens, *, page_size: int, head_dim: int, num_heads: int,
                        num_kv_heads: int, dtype=np.float32, part_len: int, block_tables,
                        focus=(0, 0, 0)):
    """Three panels: the grid of blocks; inside one block (`focus` = (sequence, kv head,
    partition)), which warp and thread group reads each token of each page; and how a thread
    group splits one token's K row. Returns the Figure; patches carry gids "block:...",
    "tok:<t>:warp<w>:group<g>" and "chunk:<element>:lane<i>"."""
    seq_lens = [int(n) for n in seq_lens]
    layout = decode_layout(head_dim, dtype, group_size=num_heads // num_kv_heads,
                           part_len=part_len)
    b, kv_head, part = focus
    start, end = partition_bounds(seq_lens[b], part_len)[part]
    pages = (end - 1) // page_size - start // page_size + 1
    n_rows = len(seq_lens) * num_kv_heads
    fig, axes = plt.subplots(3, 1, figsize=(11, 1.6 + 0.42 * n_rows + 0.42 * pages + 1.6),
                             gridspec_kw={"height_ratios": [0.5 + n_rows, 0.5 + pages, 1.6]},
                             layout="constrained")
    _block_grid(axes[0], seq_lens, num_heads, num_kv_heads, part_len, focus)
    _block_tokens(axes[1], layout, np.asarray(block_tables)[b], page_size, start, end)
    _token_row(axes[2], layout, num_kv_heads, head_dim, kv_head, np.dtype(dtype).itemsize)
    return fig


def plot_decode_roofline(points: dict, *, bandwidth: float, roofs: dict):
    """Attainable FLOP/s = min(roof, intensity x bandwidth), log-log.

    points: {label: FLOP per byte}; each is drawn on the memory slope (where it must sit if
    the kernel reads at `bandwidth`). roofs: {label: FLOP/s}, the compute ceilings; the
    first is drawn solid (the one the kernels can reach), the others dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.logspace(-1.3, 3.3, 300)
    first = next(iter(roofs.values()))
    for i, (label, peak) in enumerate(roofs.items()):
        ridge = peak / bandwidth
        shown = x >= (first / bandwidth if i else 0)   # the others only where they differ
        ax.loglog(x[shown], np.minimum(peak, x[shown] * bandwidth), color="black",
                  lw=1.5 if i == 0 else 1, ls="-" if i == 0 else "--", gid=f"roof:{label}")
        ax.text(x[-1], peak * 1.25, f"{label}: {peak / 1e12:.0f} TFLOP/s, ridge at "
                f"{ridge:.0f} FLOP/byte", fontsize=7, ha="right")
    ax.text(x[0] * 1.3, x[0] * bandwidth * 3.2, f"memory: {bandwidth / 1e12:.2f} TB/s",
            fontsize=7, rotation=28)
    for i, (label, intensity) in enumerate(points.items()):
        y = min(intensity * bandwidth, first)
        ax.loglog(intensity, y, "o", color=f"C{i}", ms=7, label=f"{label}: {intensity:g} FLOP/byte",
                  gid=f"point:{label}")
    ax.set_xlabel("arithmetic intensity (FLOP per byte read from memory)")
    ax.set_ylabel("attainable FLOP/s")
    ax.set_ylim(bandwidth * 0.03, max(roofs.values()) * 3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("where the attention kernels sit: left of the ridge, time is set by bytes",
                 fontsize=9)
    fig.tight_layout()
    return fig
