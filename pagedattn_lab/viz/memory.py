"""Memory pictures: KV memory over time, where it goes (tokens vs the kinds of waste), and
lesson 01's page counter that never frees."""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from ..sim import CATEGORIES, SimResult
from ..validate import check_int
from ..validate_kinds import is_finite_number
from .limits import check_cells
from .page_table import seq_color
from .state import as_state

CATEGORY_STYLE = {
    "tokens": ("#2f7ed8", None, "tokens (real K/V)"),
    "reserved": ("#f7a35c", None, "reserved for future tokens"),
    "internal": ("#e4d354", "//", "internal waste"),
    "external": ("#d9534f", "xx", "external fragmentation"),
    "free": ("#e6e6e6", None, "free"),
}
VALUE_BOX = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85)


@dataclass(frozen=True)
class MemorySnapshot:
    """KV memory at one step: per sequence, tokens cached and slots held (pages x page size)."""
    step: int
    tokens: dict
    slots: dict
    capacity: int

    @property
    def used(self) -> int:
        return sum(self.tokens.values())

    @property
    def held(self) -> int:
        return sum(self.slots.values())


def take_snapshot(obj, step: int) -> MemorySnapshot:
    """Measure a PagedKVCache (or PageMapState, or an object with `.cache`) at `step`.

    A shared page is counted once, for the first sequence that lists it.
    """
    state = as_state(obj)
    step = check_int(step, "step", minimum=0)   # the timeline's x axis
    seen, slots = set(), {}
    for seq, pages in state.tables.items():
        own = [p for p in pages if p not in seen]
        seen.update(own)
        slots[seq] = len(own) * state.page_size
    tokens = {s: min(n, slots[s]) if slots[s] else 0 for s, n in state.lengths.items()}
    return MemorySnapshot(step, tokens, slots, state.num_pages * state.page_size)


def plot_memory_timeline(snapshots, *, title: str | None = None, max_legend: int = 12):
    """Stacked area of tokens per sequence over time, internal waste on top, capacity line.

    snapshots: a list of MemorySnapshot (see `take_snapshot`). Returns the Figure.
    """
    max_legend = check_int(max_legend, "max_legend", minimum=0)   # -1 dropped the last label
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("snapshots: expected at least one MemorySnapshot, got an empty list")
    steps = np.array([s.step for s in snapshots])
    labels = []
    for snap in snapshots:
        labels += [k for k in snap.tokens if k not in labels]
    stack = np.array([[s.tokens.get(k, 0) for s in snapshots] for k in labels]).reshape(len(labels), -1)
    waste = np.array([s.held - s.used for s in snapshots])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = [seq_color(k) for k in labels]
    areas = ax.stackplot(steps, *stack, colors=colors, step="post", linewidth=0) if labels else []
    for area, label in zip(areas, labels):
        area.set_gid(f"seq:{label}")
    base = stack.sum(axis=0) if labels else np.zeros(len(steps))
    ax.fill_between(steps, base, base + waste, step="post", facecolor="white", edgecolor="#555",
                    hatch="///", lw=0, gid="internal-waste", label="internal waste (last pages)")
    ax.axhline(snapshots[0].capacity, color="black", ls="--", lw=1, label="capacity")
    handles, names = ax.get_legend_handles_labels()
    seq_handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors[:max_legend]]
    seq_names = [f"seq {k}" for k in labels[:max_legend]]
    ax.legend(handles + seq_handles, names + seq_names, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("step")
    ax.set_ylabel("KV slots (tokens)")
    ax.set_ylim(0, snapshots[0].capacity * 1.08)
    ax.set_xlim(steps[0], steps[-1])
    ax.set_title(title or "KV memory in use, stacked by sequence", fontsize=10)
    fig.tight_layout()
    return fig


def plot_fragmentation(breakdowns: dict, *, title: str | None = None):
    """Horizontal 100% bars: for each policy, the share of memory in each category.

    breakdowns: {policy name: {category: fraction}} (e.g. `SimResult.breakdown()`), or
    {policy name: SimResult}. Categories are those of `pagedattn_lab.sim.CATEGORIES`; any
    missing one counts as 0. Returns the Figure; each bar segment has gid "<policy>:<category>".
    """
    _check_results(breakdowns, "breakdowns", allow_dicts=True)
    rows = {name: (b.breakdown() if isinstance(b, SimResult) else dict(b))
            for name, b in breakdowns.items()}
    for name, row in rows.items():   # a NaN bar is drawn as nothing, silently
        for cat in CATEGORIES:
            value = row.get(cat, 0.0)
            if not (is_finite_number(value) and 0 <= value <= 1 + 1e-9):
                raise ValueError(f"breakdowns[{name!r}][{cat!r}]: expected a share in [0, 1], "
                                 f"got {value!r}")
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.6 * len(names)))
    for i, name in enumerate(names):
        left = 0.0
        for cat in CATEGORIES:
            value = float(rows[name].get(cat, 0.0))
            color, hatch, label = CATEGORY_STYLE[cat]
            ax.barh(i, value, left=left, color=color, hatch=hatch, edgecolor="white",
                    label=label if i == 0 else None, gid=f"{name}:{cat}")
            if value >= 0.06:
                # on a box: black on the hatched categories' crosshatching does not read
                ax.text(left + value / 2, i, f"{value:.0%}", ha="center", va="center", fontsize=8,
                        bbox=VALUE_BOX, gid=f"value:{name}:{cat}")
            left += value
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:.0%}"))
    ax.set_xlabel("share of KV-cache memory")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "Where the KV memory goes", fontsize=10)
    fig.tight_layout()
    return fig


def plot_sim_timeline(result: SimResult, *, title: str | None = None, max_steps: int | None = None):
    """One simulated run: memory by category over the steps, and the batch size below."""
    if not isinstance(result, SimResult):
        raise TypeError(f"result: expected a SimResult (from sim.simulate), got "
                        f"{type(result).__name__}")
    if max_steps is not None:
        check_int(max_steps, "max_steps", minimum=1)
    n = result.steps if max_steps is None else min(max_steps, result.steps)
    steps = np.arange(1, n + 1)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    values = [result.series[c][:n] / result.capacity for c in CATEGORIES]
    polys = ax.stackplot(steps, *values, colors=[CATEGORY_STYLE[c][0] for c in CATEGORIES],
                         labels=[CATEGORY_STYLE[c][2] for c in CATEGORIES], linewidth=0)
    for poly, cat in zip(polys, CATEGORIES):
        poly.set_hatch(CATEGORY_STYLE[cat][1])
        poly.set_gid(cat)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:.0%}"))
    ax.set_ylabel("KV memory")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"policy {result.policy}: memory over time", fontsize=10)
    ax2.plot(steps, result.series["running"][:n], color="black", lw=1)
    ax2.set_ylabel("running\nsequences", fontsize=8)
    ax2.set_xlabel("decoding step")
    fig.tight_layout()
    return fig


def plot_policy_batches(results: dict, *, title: str | None = None):
    """Bar chart: mean number of sequences running at once under each policy."""
    _check_results(results, "results", allow_dicts=False)
    names = list(results)
    values = [results[n].mean_running for n in names]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    bars = ax.bar(names, values, color=["#999"] * (len(names) - 1) + ["#2f7ed8"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.0f}", ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("sequences decoding at once")
    ax.set_title(title or "Batch size the same memory sustains", fontsize=10)
    ax.set_ylim(0, max(values) * 1.18)
    fig.tight_layout()
    return fig


def plot_counter_allocator(requests: int = 10, *, pages_per_request: int = 2, num_pages: int = 8):
    """Lesson 01's leak: a page counter that never frees hands out `pages_per_request` new
    pages per request and passes the cache's `num_pages` while only one request's pages are
    ever in use. Requests served one at a time, 1..`requests`; lines have gids "handed out",
    "in use" and "cache"."""
    requests = check_int(requests, "requests", minimum=1)
    check_cells(requests, "requests", "requests")
    pages_per_request = check_int(pages_per_request, "pages_per_request", minimum=1)
    num_pages = check_int(num_pages, "num_pages", minimum=1)
    served = np.arange(1, requests + 1)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(served, pages_per_request * served, "o-", color="C3", gid="handed out",
            label="pages handed out by the counter")
    ax.plot(served, np.full(requests, pages_per_request), "s-", color="C0", gid="in use",
            label="pages actually in use")
    ax.axhline(num_pages, color="black", ls="--", lw=1, gid="cache", label="pages in the cache")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # counts: no 2.5 requests or pages
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("requests served (one at a time)")
    ax.set_ylabel("pages")
    ax.set_title("A counter that never frees runs out while the cache is empty")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _check_results(results, name: str, *, allow_dicts: bool) -> None:
    """A non-empty {policy: SimResult} (or, for breakdowns, {policy: {category: share}})."""
    kinds = "SimResult or a {category: share} dict" if allow_dicts else "SimResult"
    if not isinstance(results, dict) or not results:
        raise ValueError(f"{name}: expected a non-empty {{policy name: {kinds}}} "
                         f"(e.g. from sim.compare_policies), got {results!r:.80}")
    for key, value in results.items():
        if not (isinstance(value, SimResult) or (allow_dicts and isinstance(value, dict))):
            raise TypeError(f"{name}[{key!r}]: expected a {kinds}, got {type(value).__name__}")
