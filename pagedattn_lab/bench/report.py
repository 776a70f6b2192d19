"""The benchmark's outputs: a printed table, a JSON file and a PNG chart."""
from __future__ import annotations

import json
from pathlib import Path


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = ["kernel", "workload", "ms", "GB/s", "% copy", "TFLOP/s", "speed-up (x baseline)"]
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append([r["kernel"], r["workload"], "failed", "", "", "", r["error"][:60]])
            continue
        ups = ", ".join(f"{v:.2f}x {k}" for k, v in r.get("speedup", {}).items())
        lines.append([r["kernel"], r["workload"], _fmt(r.get("ms"), ".3f"),
                      _fmt(r.get("gbps"), ".0f"), _fmt(r.get("pct_copy"), ".1f"),
                      _fmt(r.get("tflops"), ".2f"), ups])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(str(x).ljust(n) for x, n in zip(head, widths)),
           "  ".join("-" * n for n in widths)]
    out += ["  ".join(str(x).ljust(n) for x, n in zip(line, widths)) for line in lines]
    return "\n".join(out)


def write_json(path: Path, meta: dict, rows: list[dict]) -> None:
    path.write_text(json.dumps({**meta, "results": rows}, indent=2, default=str) + "\n")


def write_chart(path: Path, meta: dict, rows: list[dict]) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    decode = [r for r in rows if r.get("kind") == "decode" and not r.get("error")]
    prefill = [r for r in rows if r.get("kind") == "prefill" and not r.get("error")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})

    workloads = list(dict.fromkeys(r["workload"] for r in decode))
    kernels = list(dict.fromkeys(r["kernel"] for r in decode))
    width = 0.8 / max(1, len(kernels))
    for i, k in enumerate(kernels):
        xs, ys = [], []
        for j, wl in enumerate(workloads):
            hit = [r for r in decode if r["kernel"] == k and r["workload"] == wl]
            if hit:
                xs.append(j + i * width)
                ys.append(hit[0]["gbps"])
        ax1.bar(xs, ys, width, label=k)
    copy = meta.get("copy_bandwidth_GBps")
    if copy:
        ax1.axhline(copy, color="k", linestyle="--", linewidth=1, label="device copy")
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))], workloads)
    ax1.set_ylabel("achieved GB/s (needed bytes / time)")
    ax1.set_title(f"Paged decode on {meta.get('gpu', '?')}")
    ax1.legend(fontsize=8)

    names = [r["kernel"] for r in prefill]
    ax2.bar(range(len(prefill)), [r["ms"] for r in prefill], color="tab:purple")
    ax2.set_xticks(range(len(prefill)), names, rotation=20)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (log scale)")
    ax2.set_title(prefill[0]["workload"] if prefill else "prefill")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
