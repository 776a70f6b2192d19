"""Benchmark charts: time bars against a bandwidth yardstick (the roofline is in `roofline`).

Decode attention reads every cached key and value once and does about one floating-point
operation per byte read, so its speed is set by memory bandwidth, not arithmetic. The
yardstick for a decode time is

    bytes the workload must move / copy rate measured in the same benchmark run

A yardstick, not a floor: the copy rate counts a device-to-device copy's bytes read plus
bytes written, and a memory that only streams reads (no switching the bus between reading
and writing) can deliver a little more, so a good read-only kernel can edge past 100%.

The charts take records from `python -m pagedattn_lab.bench` (JSON files under
`benchmarks/results/`) or, with no GPU results at hand, `recorded_figures()`: measurements
taken on an H100 while the course was written (`recorded.py`, with their source).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import matplotlib.pyplot as plt

from ..validate_kinds import is_finite_number
from .costs import workload_cost
from .recorded import recorded_figures
from .text_fit import widen_for_labels

_TIME_KEYS = ("ms", "time_ms", "median_ms")
_LABEL_KEYS = ("label", "name", "kernel", "impl", "method")


# The committed results live beside the package in a checkout (the course installs itself
# editable), whatever folder a notebook runs from.
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def load_results_json(name: str, path=RESULTS_DIR) -> dict | None:
    """One committed results document by file name (a measurement of its own shape, not a
    bench run), its "source" set to the file; None when the folder has no such file (an
    install without the checkout's benchmarks/)."""
    file = Path(path) / name
    if not file.is_file():
        return None
    with open(file) as fh:
        doc = json.load(fh)
    committed = Path(path).resolve() == RESULTS_DIR.resolve()
    doc["source"] = f"benchmarks/results/{name}" if committed else str(file)
    return doc


def load_bench_results(path=RESULTS_DIR) -> list[dict]:
    """Every kernel-bench JSON file under `path` (a file or a folder), parsed; [] when there
    is none. Other JSON documents there (the prefill benchmark's rows, serving results) have
    no "results" list and are left out.

    A missing folder is not an error: a fresh checkout has no GPU results yet.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    out = []
    for f in files:
        try:
            with open(f) as fh:
                data = json.load(fh)
        except ValueError as exc:   # a run cut short leaves a truncated file: say which
            raise ValueError(f"{f}: not a readable bench JSON ({exc}); delete or fix the "
                             f"file") from exc
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            data.setdefault("file", f.name)
            out.append(data)
        elif isinstance(data, list):
            out.append(data)
    return out


def _first(row, keys):
    return next((row[k] for k in keys if row.get(k) is not None), None)


def records(data, *, kind: str | None = None, workload: str | None = None) -> list[dict]:
    """Flatten a bench document (or a list of rows) into uniform records:
    {"label", "kernel", "workload", "kind", "shape", "time_ms", "bytes", "flops", "kernel_choice"}
    (shape, bytes, flops and kernel_choice, the package's "simt"/"tensor_core", may be None). Rows with an error or no time are left out; `kind` ("decode"/"prefill")
    and `workload` (e.g. "D64") filter."""
    rows = data.get("results", []) if isinstance(data, dict) else data
    if not isinstance(rows, (list, tuple)):
        raise TypeError(f"data: expected a bench document ({{'results': [...]}}) or a list of "
                        f"row dicts, got {type(data).__name__}")
    out = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"data: row {index}: expected a dict, got {type(row).__name__}")
        time = _first(row, _TIME_KEYS)
        if time is None or row.get("error"):
            continue
        # a NaN or text time would otherwise end in matplotlib's "Axis limits cannot be NaN"
        if not (is_finite_number(time) and time > 0):
            raise ValueError(f"data: row {index} ({row.get('kernel', '?')}): expected a "
                             f"positive finite time in ms, got {time!r}")
        time = float(time)
        if kind is not None and row.get("kind") != kind:
            continue
        if workload is not None and row.get("workload") != workload:
            continue
        nbytes = _row_count(row, index, "bytes", "gbps", 1e9, time)
        flops = _row_count(row, index, "flops", "tflops", 1e12, time)
        kernel = str(_first(row, _LABEL_KEYS) or "?")
        out.append({"label": kernel, "kernel": kernel, "workload": row.get("workload"),
                    "kind": row.get("kind"), "shape": row.get("shape"), "time_ms": time,
                    "bytes": nbytes, "flops": flops, "kernel_choice": row.get("kernel_choice")})
    return out


def _none_or_count(value) -> bool:
    """None, or a finite number >= 0 (a byte or FLOP count, a rate)."""
    return value is None or (is_finite_number(value) and value >= 0)


def _row_count(row: dict, index: int, count_key: str, rate_key: str, unit: float,
               time_ms: float):
    """A row's byte or FLOP count: its own, else from its rate (GB/s, TFLOP/s) and time;
    None when it has neither. A text or negative figure is named here, not left to fail
    as a bare float() or a negative rate in a plot."""
    for key in (count_key, rate_key):
        value = row.get(key)
        if not _none_or_count(value):
            raise ValueError(f"data: row {index} ({row.get('kernel', '?')}): expected "
                             f"{key!r} None or a finite number >= 0, got {value!r}")
    if row.get(count_key) is not None:
        return row[count_key]
    rate = row.get(rate_key)
    return float(rate) * unit * time_ms * 1e-3 if rate else None


def _check_record(record) -> None:
    """A record as `records` makes them: a kernel name, a positive time, and bytes and flops
    None or counts."""
    if not isinstance(record, dict):
        raise TypeError(f"record: expected a dict from viz.bench_plots.records(...), got "
                        f"{type(record).__name__}")
    missing = [key for key in ("kernel", "time_ms") if key not in record]
    if missing:
        raise ValueError(f"record: has no {' or '.join(map(repr, missing))} (keys: "
                         f"{sorted(record)}); pass a record from viz.bench_plots.records(...)")
    time = record["time_ms"]
    if not (is_finite_number(time) and time > 0):
        raise ValueError(f"record['time_ms']: expected a positive finite time in ms, got "
                         f"{time!r}")
    for key in ("bytes", "flops"):   # (rates are divided out of them)
        value = record.get(key)
        if not _none_or_count(value):
            raise ValueError(f"record[{key!r}]: expected None or a finite count >= 0, got "
                             f"{value!r}")


def record_line(record: dict) -> str:
    """One line for a record: kernel, workload shape, time, and the rate it reached (TFLOP/s,
    with FLOPs from the shape when the record has none; TB/s when it has bytes)."""
    _check_record(record)
    line = f"{record['kernel']}: {record.get('shape') or record.get('workload')}: {record['time_ms']:.3f} ms"
    seconds = record["time_ms"] * 1e-3
    if record.get("bytes"):
        return line + f", {record['bytes'] / seconds / 1e12:.2f} TB/s"
    cost = workload_cost(record)
    flops = record.get("flops") or (cost.flops if cost else None)
    return line + (f", {flops / seconds / 1e12:.2f} TFLOP/s" if flops else "")


def copy_bandwidth(data) -> float | None:
    """The document's measured copy bandwidth in bytes/s, if it has one."""
    if not isinstance(data, dict):
        return None
    if data.get("copy_bandwidth_GBps"):
        return float(data["copy_bandwidth_GBps"]) * 1e9
    return data.get("copy_bandwidth")


def describe(data) -> str:
    """"<gpu>, <date>" for a bench document, for titles and printouts: a run's ISO 8601
    timestamp (bench/run.py) to the minute, in UTC where its zone is recorded."""
    if not isinstance(data, dict):
        return "benchmark"
    where, date = data.get("gpu") or data.get("device") or "?", str(data.get("date", "?"))
    try:
        when = dt.datetime.fromisoformat(date)
    except ValueError:
        return f"{where}, {date}"   # not ISO 8601: as recorded
    if when.tzinfo is not None:
        return f"{where}, {when.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    timed = date[10:11] in ("T", " ")   # (ISO 8601 takes either before the time)
    return f"{where}, {when:%Y-%m-%d %H:%M}" if timed else f"{where}, {when:%Y-%m-%d}"


def yardstick(data, *, workload: str = "D64", kernel: str | None = None) -> dict:
    """One kernel's decode time against the yardstick of its own run: {"kernel", "workload",
    "bytes", "copy_rate" (bytes/s), "yardstick_ms" (bytes / copy rate), "time_ms",
    "achieved" (bytes/s), "of_copy" (achieved / copy rate)}.

    kernel: a kernel name; by default the course's "paged-decode" when the run has it, else
    the fastest kernel of the workload."""
    rows = [r for r in records(data, kind="decode", workload=workload) if r["bytes"]]
    if kernel is None:
        ours = [r for r in rows if r["kernel"] == "paged-decode"]
        rows = ours or sorted(rows, key=lambda r: r["time_ms"])
    else:
        rows = [r for r in rows if r["kernel"] == kernel]
    if not rows:
        raise ValueError(f"data: no decode record with bytes for kernel {kernel!r} on "
                         f"workload {workload!r}")
    copy = copy_bandwidth(data)
    if not copy:
        raise ValueError("data: has no copy_bandwidth_GBps, so there is no yardstick")
    r = rows[0]
    achieved = r["bytes"] / (r["time_ms"] * 1e-3)
    return {"kernel": r["kernel"], "workload": workload, "bytes": r["bytes"], "copy_rate": copy,
            "yardstick_ms": r["bytes"] / copy * 1e3, "time_ms": r["time_ms"],
            "achieved": achieved, "of_copy": achieved / copy}


def plot_bench_bars(data, *, kind: str | None = None, workload: str | None = None,
                    bandwidth: float | None = None, title: str | None = None):
    """Horizontal bars of time (ms), fastest first, with the bandwidth yardstick as a line.

    data: a bench document ({"results": [...], "copy_bandwidth_GBps": ...}) or a list of rows
    with "kernel", "ms" and optionally "bytes" or "gbps". Each bar with bytes is annotated
    with its achieved bandwidth and its share of `bandwidth` (default: the document's copy
    rate); when all bars move the same bytes, a dashed line marks bytes / that rate.
    """
    rows = sorted(records(data, kind=kind, workload=workload), key=lambda r: r["time_ms"])
    if not rows:
        raise ValueError(f"data: no timed results (kind={kind!r}, workload={workload!r})")
    bandwidth = bandwidth or copy_bandwidth(data)
    sized = [r["bytes"] for r in rows if r["bytes"]]
    one_size = bandwidth and sized and len({round(b, -6) for b in sized}) == 1
    line_ms = sized[0] / bandwidth * 1e3 if one_size else None
    fig, ax = plt.subplots(figsize=(8, 1.3 + 0.42 * len(rows)))
    times = [r["time_ms"] for r in rows]
    ax.barh(range(len(rows)), times, color="#2f7ed8")
    notes = []
    for i, r in enumerate(rows):
        if workload is None and r["workload"]:
            r["label"] = f"{r['label']} [{r['workload']}]"
        # A label that began at a bar ending left of the yardstick would have the dashed
        # line run through its digits: it begins a little right of the line instead.
        notes.append(ax.annotate(_bar_note(r, bandwidth), (max(r["time_ms"], line_ms or 0.0), i),
                                 xytext=(3, 0), textcoords="offset points", va="center",
                                 fontsize=8, gid=f"value:{i}"))
    if line_ms is not None:
        ax.axvline(line_ms, color="black", ls="--", lw=1, gid="yardstick",
                   label=f"yardstick: bytes / copy rate ({bandwidth / 1e12:.2f} TB/s) "
                         f"= {line_ms:.3g} ms")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.3), frameon=False)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(times + [line_ms or 0.0]) * 1.55)
    ax.set_xlabel("time per call (ms, lower is better)")
    shapes = {r["shape"] for r in rows}
    shape = f": {shapes.pop()}" if len(shapes) == 1 and None not in shapes else ""
    ax.set_title(title or f"{workload or kind or 'benchmark'}{shape}\non {describe(data)}", fontsize=10)
    fig.tight_layout()
    widen_for_labels(ax, notes)
    return fig


def _bar_note(r: dict, bandwidth: float | None) -> str:
    """A bar's value label: its time, and its bandwidth (share of copy) or its FLOP rate."""
    note = f"{r['time_ms']:.3g} ms"
    if r["bytes"] and bandwidth:
        achieved = r["bytes"] / (r["time_ms"] * 1e-3)
        return note + f"  ({achieved / 1e12:.2f} TB/s, {achieved / bandwidth:.0%} of copy)"
    if cost := workload_cost(r):
        return note + f"  ({cost.flops / (r['time_ms'] * 1e-3) / 1e12:.2f} TFLOP/s)"
    return note


def _is_complete_run(doc) -> bool:
    """Whether a bench JSON has decode and prefill rows: a run that left a kind out (a GPU
    check that timed only decode, say) is not what a lesson's "newest run" figure means."""
    rows = doc.get("results", []) if isinstance(doc, dict) else doc
    kinds = {row.get("kind") for row in rows if isinstance(row, dict)}
    return {"decode", "prefill"} <= kinds


def latest_results(path=RESULTS_DIR) -> dict:
    """The newest complete bench JSON under `path` (by file name; complete: it has decode and
    prefill rows; the newest of any when none is), or `recorded_figures()` when there is none.
    Its "source" says which."""
    docs = load_bench_results(path)
    if docs:
        return _newest([d for d in docs if _is_complete_run(d)] or docs)
    return recorded_figures()


def _newest(docs: list) -> dict:
    """The last of `docs` (sorted by file name), its "source" set to its file."""
    doc = docs[-1]
    doc.setdefault("source", f"benchmarks/results/{doc.get('file', '?')}")
    return doc


def results_file(name: str, path=RESULTS_DIR) -> dict:
    """One committed bench JSON by file name (e.g. "2026-11-26_H100_bench.json"), for a
    figure that needs rows only that run has; `recorded_figures()` when the folder has no
    such file (an install without the checkout's benchmarks/). Its "source" says which."""
    docs = load_bench_results(Path(path) / name)
    if not docs:
        return recorded_figures()
    docs[0].setdefault("source", f"benchmarks/results/{name}")
    return docs[0]


def results_file_or_newest(name: str, *, workload: str, path=RESULTS_DIR) -> dict:
    """The bench JSON `name` (see `results_file`) when the folder has it, else the newest one
    (by file name) with a timed decode row for `workload`, decode-only runs included (a GPU
    check times no prefill), else `recorded_figures()`. Its "source" says which."""
    path = Path(path)
    if (path / name).is_file():
        return results_file(name, path)
    docs = [d for d in load_bench_results(path)
            if isinstance(d, dict) and records(d, kind="decode", workload=workload)]
    return _newest(docs) if docs else recorded_figures()


def head_to_head(data, workloads, *, ours: str = "paged-decode",
                 theirs: str = "flashinfer-tensor-cores") -> list[dict]:
    """One row per workload of `workloads` that has both kernels timed: {"workload", "shape",
    "ours_ms", "theirs_ms", "ratio" (ours / theirs: below 1, ours faster), "kernel_choice",
    "of_copy" (ours' bytes / time / the run's copy rate; None without both)}."""
    copy = copy_bandwidth(data)
    out = []
    for workload in workloads:
        rows = {r["kernel"]: r for r in records(data, kind="decode", workload=workload)}
        if ours not in rows or theirs not in rows:
            continue
        mine = rows[ours]
        of_copy = (mine["bytes"] / (mine["time_ms"] * 1e-3) / copy
                   if mine["bytes"] and copy else None)
        out.append({"workload": workload, "shape": mine["shape"], "ours_ms": mine["time_ms"],
                    "theirs_ms": rows[theirs]["time_ms"],
                    "ratio": mine["time_ms"] / rows[theirs]["time_ms"],
                    "kernel_choice": mine["kernel_choice"], "of_copy": of_copy})
    return out


def plot_bench_file(path=RESULTS_DIR, **kwargs):
    """The bars for the newest bench JSON under `path`, or for `recorded_figures()` when
    there is none (the figure's title names the GPU and date)."""
    return plot_bench_bars(latest_results(path), **kwargs)


def page_size_speeds(data, *, workload_prefix: str = "D64") -> dict:
    """{kernel: {page_size: ms}} for the decode rows of one workload family at several page
    sizes: bench rows named "<prefix>", "<prefix>-p64", ... (the bench's default page size
    is 16), or recorded rows labelled "..., page N"."""
    import re  # noqa: PLC0415

    out: dict = {}
    for r in records(data, kind="decode"):
        name = r["workload"] or ""
        if not name.startswith(workload_prefix):
            continue
        label_page = re.search(r"page (\d+)", r["label"])
        name_page = re.fullmatch(re.escape(workload_prefix) + r"(?:-p(\d+))?", name)
        if label_page:
            kernel, page = r["label"][: label_page.start()].rstrip(", "), int(label_page.group(1))
        elif name_page:
            kernel, page = r["label"], int(name_page.group(1) or 16)
        else:
            continue
        out.setdefault(kernel, {})[page] = r["time_ms"]
    return {k: v for k, v in out.items() if len(v) > 1}
