"""Figures the README's "How fast" and lessons 09-10 quote outside their tables, held to the
results files they come from: a figure edited in the prose, or a range that no longer spans its
runs, fails here. A figure agrees when it is the file's value rounded to the places written.

Wrong when this file was written, each now checked below: the write-flushed side of the flush
sentence (fp8 GQA read 0.0906 ms in session 12's read-size run, head_dim 96 0.1284 in session
13's check), "x0.57-0.58 in every check" (the H100 checks read x0.55-0.56), "in many small
blocks at 87-89%" (the reader's best is 87.3%), lesson 09's "1.15x" (0.204 / 0.178 ms is
1.14x) and lesson 10's "1.55-1.75x" (v4 over v3's plan starts at 1.56x).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from tests.readme_figures import README, agree, readme_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DECODE = "2026-12-04_H200_session13_bench.json"
QUANT = "2026-12-04_H200_session13_quant.json"


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _readme() -> str:
    return _flat(README.read_text(encoding="utf-8"))


def _lesson(name: str) -> str:
    cells = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))["cells"]
    return _flat(" ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"))


def _json(name: str):
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _quoted(pattern: str, text: str) -> tuple[str, ...]:
    found = re.search(pattern, text)
    assert found, f"no sentence matches {pattern!r}"
    return found.groups()


def _disagreements(pairs: list[tuple[str, str, float]]) -> list[str]:
    """(what, written, the file's value) for each figure whose rounding differs."""
    return [f"{what}: {written} written, {value} in the file"
            for what, written, value in pairs if not agree(written, value)]


def _span(what: str, low: str, high: str, values: list[float]) -> list[tuple[str, str, float]]:
    return [(f"{what} (lowest)", low, min(values)), (f"{what} (highest)", high, max(values))]


def test_the_host_and_copy_figures_are_the_checks_files():
    text = _readme()
    data = _json(DECODE)
    host = {(r["workload"], r["kernel"]): r for r in data["results"] if r["kind"] == "host"}
    run, fi_run = _quoted(r"`BatchDecodeWrapper.run` ([\d.]+) us per run on a tiny problem "
                          r"\(FlashInfer's `run` ([\d.]+) us", text)
    ratio, wall, kernel = _quoted(r"on D64 ([\d.]+)x its kernel \(([\d.]+) against ([\d.]+) ms",
                                  text)
    one_shot = host["D64", "paged_attention_decode (one-shot)"]
    decode_copy, = _quoted(r"session13_bench\.json, copy ([\d.]+) TB/s\)", text)
    quant_copy, = _quoted(r"UTC, copy ([\d.]+) TB/s; results/2026-12-04_H200_session13_quant", text)
    assert not _disagreements([
        ("run()", run, host["tiny", "BatchDecodeWrapper.run"]["wall_us_per_run"]),
        ("FlashInfer's run()", fi_run,
         host["tiny", "flashinfer run (tensor cores)"]["wall_us_per_run"]),
        ("one-shot ratio", ratio, one_shot["ratio_to_kernel"]),
        ("one-shot ms", wall, one_shot["wall_ms_per_call"]),
        ("its kernel ms", kernel, one_shot["kernel_ms"]),
        ("decode copy TB/s", decode_copy, data["copy_bandwidth_GBps"] / 1e3),
        ("quant copy TB/s", quant_copy, _json(QUANT)["meta"]["copy_bytes_per_s"] / 1e12),
    ])


def _flush_times() -> dict[tuple[str, str], list[float]]:
    """(row, flush) -> every time sessions 12 and 13 logged for the flush sentence's rows."""
    times: dict[tuple[str, str], list[float]] = {}

    def add(row, flush, ms):
        times.setdefault((row, flush), []).append(ms)

    modes = _json("2026-12-04_H200_session12_l2_flush_modes.json")["ms"]
    sizes = _json("2026-12-04_H200_session12_l2_flush_read_sizes.json")["ms"]
    for row, key in (("gqa", "D64-gqa4"), ("d96", "D64-gqa4-d96"),
                     ("fp8", "fp8_e4m3:D64 GQA 32/8")):
        add(row, "write", min(modes[key]["write"]))
        add(row, "read", min(modes[key]["read"]))
    for row, key in (("d96", "D64-gqa4-d96"), ("fp8", "fp8 GQA 32/8")):
        add(row, "write", min(sizes[key]["write"]))
        add(row, "read", min(sizes[key]["read 2xL2"]))
    for session in ("session12", "session13"):
        stem = f"2026-12-04_H200_{session}"
        for flush, quant, d96 in (("write", "_quant.json", "_bench_d96.json"),
                                  ("read", "_quant_read_flush.json", "_bench_d96_read_flush.json")):
            for r in _json(stem + quant)["rows"]:
                if r["name"] == "D64 GQA 32/8" and r["scheme"] in (None, "static") and \
                        r["kv_dtype"] in ("float16", "fp8_e4m3"):
                    add("gqa" if r["kv_dtype"] == "float16" else "fp8", flush,
                        r["results"]["ours"]["median_ms"])
            add("d96", flush, next(r["ms"] for r in _json(stem + d96)["results"]
                                   if r["kernel"] == "paged-decode"))
    for flush in ("write", "read"):
        log = (RESULTS / f"2026-12-04_H200_session12_bench_flush_{flush}.log").read_text()
        add("gqa", flush, float(re.search(r"^paged-decode\s+D64-gqa4\s+([\d.]+)", log, re.M)[1]))
        txt = (RESULTS / f"2026-12-04_H200_session12_quant_flush_{flush}.txt").read_text()
        for row, kind in (("gqa", r"float16\s+None"), ("fp8", r"fp8_e4m3\s+static")):
            add(row, flush, float(re.search(rf"^D64 GQA 32/8\s+{kind} \| ours ([\d.]+) ms", txt,
                                            re.M)[1]))
    return times


def _read_flushed_fp8_over_fp16() -> list[float]:
    modes = _json("2026-12-04_H200_session12_l2_flush_modes.json")["ms"]
    ratios = [min(modes["fp8_e4m3:D64 GQA 32/8"]["read"]) / min(modes["D64-gqa4"]["read"])]
    for session in ("session12", "session13"):
        rows = _json(f"2026-12-04_H200_{session}_quant_read_flush.json")["rows"]
        ratios += [r["results"]["ours"]["vs_fp16"] for r in rows if r["name"] == "D64 GQA 32/8"
                   and r["kv_dtype"] == "fp8_e4m3" and r["scheme"] == "static"]
    return ratios


def test_the_flush_sentence_spans_the_runs_of_sessions_12_and_13():
    figures = _quoted(
        r"With it, D64 GQA 32/8 takes ([\d.]+)-([\d.]+) ms instead of ([\d.]+)-([\d.]+), "
        r"head_dim 96 ([\d.]+)-([\d.]+) instead of ([\d.]+)-([\d.]+) \(89-92% of copy\), "
        r"fp8 GQA ([\d.]+)-([\d.]+) instead of ([\d.]+)-([\d.]+) \(x([\d.]+)-([\d.]+) of fp16",
        _readme())
    times = _flush_times()
    pairs = []
    for i, row in enumerate(("gqa", "d96", "fp8")):
        read_low, read_high, write_low, write_high = figures[4 * i:4 * i + 4]
        pairs += _span(f"{row} read flush", read_low, read_high, times[row, "read"])
        pairs += _span(f"{row} write flush", write_low, write_high, times[row, "write"])
    pairs += _span("fp8 x fp16, read flush", *figures[12:], _read_flushed_fp8_over_fp16())
    assert not _disagreements(pairs)


def _best_static_code_ratios(results: Path, gpu: str, first: int, last: int) -> list[float]:
    """The best static-scale GQA 32/8 x fp16 of each write-flushed check on `gpu` in sessions
    `first`-`last` (a later session's file is not among the figures the README cites)."""
    ratios = []
    for path in sorted(results.glob(f"*_{gpu}_session*_quant.json")):
        session = re.search(r"_session(\d+)(?:_final)?_quant\.json$", path.name)
        if not session or not first <= int(session[1]) <= last:
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        ratios.append(min(r["results"]["ours"]["vs_fp16"] for r in data["rows"]
                          if r["name"] == "D64 GQA 32/8" and r["scheme"] == "static"))
    return ratios


def _code_ratio_disagreements(results: Path) -> list[str]:
    figures = _quoted(
        r"x([\d.]+)-([\d.]+) in every H200 check of sessions (\d+)-(\d+), x([\d.]+)-([\d.]+) "
        r"on the H100s of sessions (\d+)-(\d+)", _readme())
    pairs = []
    for gpu, (low, high, first, last) in (("H200", figures[:4]), ("H100", figures[4:])):
        ratios = _best_static_code_ratios(results, gpu, int(first), int(last))
        assert ratios, f"no {gpu} quant check of sessions {first}-{last} in {results}"
        pairs += _span(f"{gpu} checks of sessions {first}-{last}", low, high, ratios)
    return _disagreements(pairs)


def test_grouped_codes_over_fp16_span_the_checks_of_the_sessions_named():
    assert not _code_ratio_disagreements(RESULTS)


def test_a_later_sessions_quant_file_leaves_the_cited_span_alone(tmp_path):
    # a new session's check, outside the span, is not among the sessions the README names
    for path in RESULTS.glob("*_session*_quant.json"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    later = json.loads((RESULTS / "2026-12-07_H100_session40_quant.json").read_text())
    for row in later["rows"]:
        row["results"]["ours"]["vs_fp16"] = 0.5
    for gpu in ("H100", "H200"):
        (tmp_path / f"2026-12-08_{gpu}_session99_quant.json").write_text(json.dumps(later))
    assert not _code_ratio_disagreements(tmp_path)


def test_the_fp8_read_ceilings_are_the_tenth_sessions_readers():
    contiguous_ms, contiguous_pct, wave_pct, wave_ms, many_pct = _quoted(
        r"same 307 MB attains \(([\d.]+) ms, (\d+)%\); a paged reader with no arithmetic in the "
        r"plan's one wave, the KV heads of a range in adjacent blocks, reads them at (\d+)% "
        r"\(([\d.]+) ms\), in many small blocks at (\d+)%", _readme())
    rows = [r for r in _json("2026-12-03_H200_session10_read_ceiling.json")["results"]
            if r["row"].startswith("fp8")]

    def best(reader, order):
        return max((r for r in rows if r["reader"] == reader and r["order"] == order),
                   key=lambda r: r["copy_fraction"])

    contiguous, wave, many = best("contiguous", "-"), best("one wave", "heads on x"), \
        best("many waves", "heads on x")
    assert not _disagreements([
        ("contiguous ms", contiguous_ms, contiguous["ms"]),
        ("contiguous %", contiguous_pct, 100 * contiguous["copy_fraction"]),
        ("one wave %", wave_pct, 100 * wave["copy_fraction"]), ("one wave ms", wave_ms, wave["ms"]),
        ("many blocks %", many_pct, 100 * many["copy_fraction"]),
    ])


def test_lesson_09_quotes_the_simt_kernels_span_over_flashinfers_tensor_cores():
    low, high = _quoted(r"it took ([\d.]+)x to ([\d.]+)x FlashInfer's tensor-core time",
                        _lesson("09_tensor_core_decode.ipynb"))
    ms = {(r["workload"], r["kernel"]): r.get("ms")
          for r in _json("2026-12-01_H200_bench.json")["results"]}
    # section 5's first table: the GQA and MQA rows at head_dim 128
    rows = ("D64-gqa4", "D64-gqa8", "D64-mqa16", "8x32k-gqa4", "1x32k-gqa4")
    ratios = [ms[w, "paged-decode (simt, not chosen)"] / ms[w, "flashinfer-tensor-cores"]
              for w in rows]
    assert not _disagreements(_span("SIMT / FlashInfer TC", low, high, ratios))


def test_lesson_10_quotes_v4_over_v3s_plan_from_the_two_files():
    text = _lesson("10_tensor_core_prefill.ipynb")
    low, high = _quoted(r"runs ([\d.]+)-([\d.]+)× faster than v3's plan on every row", text)
    assert f"{low}-{high}× more with `mma.sync`" in text, "the summary quotes another span"

    def plan_tflops(name):
        return {r["name"]: r["results"]["ours"]["tflops"] for r in _json(name)["rows"]}

    v3 = plan_tflops("2026-12-02_H200_prefill.json")
    v4 = plan_tflops("2026-12-02_H200_prefill_mma.json")
    assert not _disagreements(_span("v4 / v3", low, high, [v4[n] / v3[n] for n in v3]))


def test_the_serving_table_is_the_fused_runs_file():
    data = _json("serve/2026-12-02_H200_serve_bench_fused.json")
    gib = 2 ** 30
    expected = {  # the row's label -> its run and the figures of its cells, in order
        ("engine", "the same 64"): ("engine_subset", ["tokens_per_s", "total_tokens_per_s",
                                                      "max_running", "mean_running"]),
        ("engine", "all 256"): ("engine", ["tokens_per_s", "total_tokens_per_s", "max_running",
                                           "mean_running"]),
        ("transformers `generate`", "the same 64"): ("hf", ["tokens_per_s",
                                                            "total_tokens_per_s", "batch"]),
    }
    pairs = []
    for cells in readme_table("| system | requests | output tok/s"):
        run, keys = expected[cells[0], cells[1]]
        written = re.findall(r"\d+(?:\.\d+)?", " ".join(cells[2:5]))
        pairs += [(f"{cells[0]}, {cells[1]}: {k}", w, data[run][k]) for w, k in zip(written, keys)]
        memory = re.findall(r"\d+\.\d+", cells[5])
        used = data[run]["peak_kv_bytes"] if run != "hf" else data[run]["kv_bytes"]
        pairs.append((f"{cells[0]}, {cells[1]}: KV GiB", memory[0], used / gib))
        if run != "hf":
            pairs.append((f"{cells[0]}, {cells[1]}: preemptions", cells[6].split()[0],
                          data[run]["preempted_recompute"]))
    speedup, = _quoted(r"([\d.]+)x `generate` on the same requests", _readme())
    pairs.append(("speed-up", speedup, data["speedup"]))
    assert not _disagreements(pairs)


def test_the_prefill_table_is_the_second_sessions_final_file():
    rows = _json("2026-12-02_H200_prefill_session2_final.json")["rows"]
    table = readme_table("| workload | WMMA kernel")
    assert len(table) == len(rows), "one table row per workload of the file, in its order"
    pairs = []
    for cells, row in zip(table, rows):
        res = row["results"]
        ours, theirs = res["ours"]["tflops"], res["flashinfer"]["tflops"]
        pairs += [(f"{row['name']} ours", cells[2].split()[0], ours),
                  (f"{row['name']} FlashInfer", cells[3].split()[0], theirs),
                  (f"{row['name']} ours / FlashInfer", cells[5].rstrip("%"), 100 * ours / theirs)]
        if "tflops" in res["sdpa-dense"]:
            pairs.append((f"{row['name']} SDPA", cells[4].split()[0], res["sdpa-dense"]["tflops"]))
    assert not _disagreements(pairs)
