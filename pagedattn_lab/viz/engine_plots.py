"""Pictures of the serving engine (lesson 12): who holds which pages, the per-step series,
and the adaptive page-management results.

    snap = prefix_snapshot(engine)          # at any step of an LLMEngine
    plot_shared_blocks(snap); plt.show()
    plot_engine_series(engine.stats.series, engine.config.num_pages,
                       engine.config.page_size); plt.show()
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch, Rectangle

from ..validate import check_int
from ..validate_kinds import is_finite_number, is_int

SHARED, PRIVATE, EMPTY = "#f7a35c", "#2f7ed8", "#e6e6e6"
ALLOCATION_COLORS = {"on_demand": "#2f7ed8", "predictive": "#f7a35c"}
# Series panels: the y range over the panel's top (the pool's pages, or the data's maximum),
# leaving room above it for a one-row legend.
HEADROOM = 1.35


@dataclass(frozen=True)
class PrefixSnapshot:
    """The running requests' pages at one step: block tables, computed tokens, each page's
    reference count and whether the prefix cache names it (a hashed, full block)."""
    page_size: int
    tables: dict          # rid -> list of pages, block order
    computed: dict        # rid -> tokens whose K/V are in those pages
    ref_cnt: dict         # page -> running requests holding it
    hashed: frozenset     # pages registered in the prefix cache

    def shared_pages(self) -> list[int]:
        return sorted(p for p, n in self.ref_cnt.items() if n > 1)


def prefix_snapshot(engine) -> PrefixSnapshot:
    """Read the running requests' pages from an `LLMEngine` (between steps)."""
    pool = engine.kv.pool
    running = engine.scheduler.running
    tables = {r.rid: list(r.pages) for r in running}
    pages = {p for t in tables.values() for p in t}
    return PrefixSnapshot(engine.config.page_size, tables,
                          {r.rid: r.num_computed_tokens for r in running},
                          {p: pool.ref_cnt[p] for p in pages},
                          frozenset(p for p in pages if pool.page_hash[p] is not None))


def plot_shared_blocks(snap: PrefixSnapshot, *, title: str | None = None):
    """One row per request, one cell per block: the page that holds it, orange when several
    requests hold it (a shared prefix, with its reference count), blue when private; a bold
    edge marks a hashed block (in the prefix cache); the fill shows how full the page is."""
    rids = list(snap.tables)
    width = max((len(t) for t in snap.tables.values()), default=1)
    fig, ax = plt.subplots(figsize=(min(1.0 + 0.75 * width, 14), 0.6 + 0.55 * max(len(rids), 1)))
    ps = snap.page_size
    for row, rid in enumerate(rids):
        y = len(rids) - 1 - row
        for i, page in enumerate(snap.tables[rid]):
            fill = min(ps, max(0, snap.computed[rid] - i * ps)) / ps
            shared = snap.ref_cnt[page] > 1
            ax.add_patch(Rectangle((i, y + 0.08), 0.92, 0.84, facecolor=EMPTY, edgecolor="none"))
            ax.add_patch(Rectangle((i, y + 0.08), 0.92 * fill, 0.84,
                                   facecolor=SHARED if shared else PRIVATE, edgecolor="none"))
            hashed = page in snap.hashed
            ax.add_patch(Rectangle((i, y + 0.08), 0.92, 0.84, fill=False,
                                   edgecolor="black", linewidth=2.0 if hashed else 0.6))
            label = f"p{page}" + (f"\n×{snap.ref_cnt[page]}" if shared else "")
            ax.text(i + 0.46, y + 0.5, label, ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.1, width)
    ax.set_ylim(-0.1, max(len(rids), 1))
    ax.set_yticks(np.arange(len(rids)) + 0.5, [f"request {r}" for r in reversed(rids)])
    ax.set_xticks(np.arange(width) + 0.46, [str(i) for i in range(width)])
    ax.set_xlabel(f"block (page_size {ps} tokens); bold edge: hashed, in the prefix cache")
    ax.legend(handles=[Patch(color=SHARED, label="shared (×ref count)"),
                       Patch(color=PRIVATE, label="private"),
                       Patch(color=EMPTY, label="empty slots")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title or "Which request holds which page")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def plot_engine_series(series: dict, num_pages: int, page_size: int, *,
                       title: str | None = None):
    """Three panels over the engine's steps (`engine.stats.series`): KV memory (pages held,
    tokens in them, capacity), the batch (running / waiting requests, prefill and decode
    tokens), and the prefix-cache hit rate so far."""
    num_pages = check_int(num_pages, "num_pages", minimum=1)   # the pool line
    page_size = check_int(page_size, "page_size", minimum=1)   # tokens / page_size
    s = {k: np.asarray(v) for k, v in series.items()}
    steps = np.arange(len(s["running"]))
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    mem, batch, hits = axes
    mem.fill_between(steps, s["pages_used"], step="mid", color="#f7a35c", alpha=0.5,
                     label="pages held")
    mem.plot(steps, s["tokens_stored"] / page_size, drawstyle="steps-mid", color="#2f7ed8",
             label="tokens in them (in pages)")
    mem.axhline(num_pages, color="black", linestyle="--", linewidth=1, label="pool")
    mem.set_ylabel("pages")
    mem.set_ylim(0, num_pages * HEADROOM)
    mem.legend(loc="upper center", ncols=3, fontsize=8)
    batch.bar(steps, s["decode_tokens"], color="#90ed7d", label="decode tokens")
    batch.bar(steps, s["prefill_tokens"], bottom=s["decode_tokens"], color="#7cb5ec",
              label="prefill tokens")
    batch.set_ylabel("tokens in the step")
    twin = batch.twinx()
    twin.plot(steps, s["running"], color="black", drawstyle="steps-mid", label="running")
    twin.plot(steps, s["waiting"] + s["swapped"], color="#d9534f", drawstyle="steps-mid",
              label="waiting + swapped")
    twin.set_ylabel("requests")
    batch.set_ylim(0, _top(s["decode_tokens"] + s["prefill_tokens"]) * HEADROOM)
    top = max(_top(s["running"]), _top(s["waiting"] + s["swapped"])) * HEADROOM
    twin.set_ylim(-0.03 * top, top)   # a line at 0 requests stays clear of the axis
    # On the twin: the axes drawn last, so that no request line is painted across the legend.
    twin.legend(handles=batch.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0],
                loc="upper center", ncols=4, fontsize=8)
    hits.plot(steps, s["hit_rate"], color="#8085e9", drawstyle="steps-mid")
    hits.set_ylim(0, 1)
    hits.set_ylabel("prefix hit rate")
    hits.set_xlabel("engine step")
    mem.set_title(title or "The engine, step by step")
    fig.tight_layout()
    return fig


def _top(values) -> float:
    """The largest value of a series panel's data (1 for an empty or all-zero series)."""
    return max(1.0, float(np.max(values, initial=0)))


def plot_page_size_waste(waste: dict, chosen: int, max_waste: float = 0.05):
    """Tail waste per page size (from `choose_page_size`), the target and the choice."""
    sizes = sorted(_check_waste(waste, chosen, max_waste))
    values = [100 * waste[p] for p in sizes]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar([str(p) for p in sizes], values,
           color=["#f7a35c" if p == chosen else "#7cb5ec" for p in sizes])
    ax.axhline(100 * max_waste, color="black", linestyle="--", linewidth=1,
               label=f"target {100 * max_waste:g}%")
    ax.set_xlabel("page size (tokens); orange: the largest under the target")
    ax.set_ylabel("slots held but empty (%)")
    ax.legend(fontsize=8)
    ax.set_title("Page size from the length distribution")
    fig.tight_layout()
    return fig


def _check_waste(waste, chosen, max_waste) -> list[int]:
    """The page sizes of `waste` ({page size: share of slots wasted}), refused by name unless
    they are ints >= 1 with shares in [0, 1], `chosen` one of them, and the target a share
    (a string size raised KeyError; a chosen size not among them drew no orange bar)."""
    if not isinstance(waste, dict) or not waste:
        raise ValueError(f"waste: expected {{page size: waste share}} (choose_page_size's "
                         f"second answer) with at least one size, got {waste!r}")
    for p, share in waste.items():
        if not is_int(p) or p < 1:
            raise ValueError(f"waste: expected page sizes (ints >= 1) as keys, got {p!r}")
        if not is_finite_number(share) or not 0 <= share <= 1:
            raise ValueError(f"waste[{p}]: expected a share of the slots in [0, 1], got "
                             f"{share!r}")
    if not is_int(chosen) or chosen not in waste:
        raise ValueError(f"chosen: expected one of the page sizes {sorted(waste)}, got "
                         f"{chosen!r}")
    if not is_finite_number(max_waste) or not 0 <= max_waste <= 1:
        raise ValueError(f"max_waste: expected a share of the slots in [0, 1], got "
                         f"{max_waste!r}")
    return [int(p) for p in waste]


# per metric: the factor from the recorded value and the axis label (waste in %, as the
# page-size chart and the lesson's table give it)
_ALLOCATION_AXES = {"waste_fraction": (100, "slots held but empty (%)"),
                    "preemptions": (1, "preemptions (whole run)"),
                    "steps": (1, "engine steps (forward passes)")}


def plot_allocation_comparison(rows, metrics=("waste_fraction", "preemptions", "steps")):
    """Grouped bars per page size, on-demand vs predictive, one panel per metric; rows are
    `DryRun.summary()` dicts (or the recorded dry run's JSON rows)."""
    sizes = sorted({r["page_size"] for r in rows})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    x = np.arange(len(sizes))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        factor, label = _ALLOCATION_AXES.get(metric, (1, metric.replace("_", " ")))
        for k, (alloc, color) in enumerate(ALLOCATION_COLORS.items()):
            by_size = {r["page_size"]: r[metric] * factor for r in rows
                       if r["allocation"] == alloc}
            ax.bar(x + (k - 0.5) * 0.4, [by_size.get(p, np.nan) for p in sizes], 0.4,
                   color=color, label=alloc.replace("_", "-"))
        ax.set_xticks(x, [str(p) for p in sizes])
        ax.set_xlabel("page size (tokens)")
        ax.set_ylabel(label)
        ax.set_title(metric.replace("_", " "))
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
