"""The decode bench's report and FlashInfer's skip list on the CPU: a FlashInfer head size known
to take the CUDA context down is not run but reported as such (a bench of every row survives
it), and the table and chart read such a row as no time, not as a failure to crash on."""
from types import SimpleNamespace

import pytest

from pagedattn_lab.bench import report
from pagedattn_lab.bench.flashinfer_baseline import skip_reason


@pytest.mark.parametrize("version,head_dim,skipped", [
    ("0.6.6", 80, True), ("0.6.6", 96, True), ("0.6.6", 128, False), ("0.6.6", 256, False),
    ("0.7.0", 96, False), ("", 96, False)])
def test_flashinfer_head_sizes_not_run(version, head_dim, skipped):
    reason = skip_reason(SimpleNamespace(__version__=version), head_dim)
    assert (reason is not None) == skipped
    if skipped:
        assert f"head_dim {head_dim}" in reason and version in reason


ROWS = [
    {"kind": "decode", "workload": "D64-gqa4-d96", "kernel": "paged-decode", "shape": "s",
     "ms": 0.128, "gbps": 3600.0, "pct_copy": 85.0, "bytes": 1, "floor_ms": 0.11},
    {"kind": "decode", "workload": "D64-gqa4-d96", "kernel": "flashinfer-tensor-cores",
     "shape": "s", "skipped": "not run: FlashInfer 0.6.6's head_dim 96 decode fails"},
    {"kind": "decode", "workload": "D64-gqa4-d96", "kernel": "flashinfer-cuda-cores",
     "shape": "s", "error": "RuntimeError: boom"},
]


def test_table_says_not_run_and_failed_apart():
    lines = report.table(ROWS).splitlines()
    (tc,) = [x for x in lines if "flashinfer-tensor-cores" in x]
    (cc,) = [x for x in lines if "flashinfer-cuda-cores" in x]
    assert "not run" in tc and "head_dim 96" in tc and "failed" not in tc
    assert "failed" in cc and "boom" in cc


def test_chart_passes_over_rows_without_a_time(tmp_path):
    pytest.importorskip("matplotlib")
    report.write_chart(tmp_path / "bench.png", {"gpu": "test", "copy_bandwidth_GBps": 4200.0},
                       ROWS)
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_shown_never_rounds_a_figure_across_its_mark():
    assert report.shown(89.96, 1, 90, at_least=True) == "89.9"     # not 90.0, a miss
    assert report.shown(89.94, 1, 90, at_least=True) == "89.9"
    assert report.shown(90.0, 1, 90, at_least=True) == "90.0"      # met: as rounded
    assert report.shown(0.5504, 2, 0.55, at_least=False) == "0.56"  # not 0.55, a miss
    assert report.shown(0.5496, 2, 0.55, at_least=False) == "0.55"
    assert report.shown(1.03004, 3, 1.03, at_least=False) == "1.031"


def test_a_missed_copy_target_does_not_print_as_90_percent():
    """Session 14's page-64 GQA row read 89.951% of copy: MISS, printed "pct_copy 89.951"; the
    table's one decimal made it 90.0."""
    rows = [{"kind": "decode", "workload": "W", "kernel": "paged-decode", "shape": "s",
             "ms": 0.1614, "gbps": 3800.0, "pct_copy": 89.9996, "bytes": 614_000_000,
             "group": 8}]
    checks = report.targets(rows, copy_bw=4.24e12)
    (copy,) = [c for c in checks if c["target"].startswith(">= 90%")]
    assert not copy["pass"]
    text = report.targets_table(checks)
    assert "pct_copy 89.999" in text and "90.000" not in text, text
    (line,) = [x for x in report.table(rows).splitlines() if x.startswith("paged-decode")]
    assert " 89.9 " in line and "90.0" not in line, line


def test_one_shot_ratio_is_against_the_kernel_timed_as_the_calls_run_it():
    """The one-shot calls run back to back with no L2 flush; the row's flushed kernel time also
    pays the flush's dirty lines (7-10 us on the H200), which made the ratio read ~1.5% low."""
    import time

    from pagedattn_lab.bench.run import Bench
    from pagedattn_lab.bench.timing import Timing

    timed = []

    class FakeTimer:
        def time(self, fn, reps=30, warmup=3, flush=True, hide_launch=True):
            fn()
            timed.append(flush)
            return Timing(0.5 if not flush else 0.6, 0.5, 0.6, reps)

    bench = Bench.__new__(Bench)
    bench.cp = SimpleNamespace(empty_like=lambda x: None, cuda=SimpleNamespace(
        Device=lambda: SimpleNamespace(synchronize=lambda: None)))
    bench.timer, bench.reps, bench.rows = FakeTimer(), 3, []
    w = SimpleNamespace(name="D64", describe=lambda: "D64 shape")
    inp = dict.fromkeys(("q", "k_cache", "v_cache", "block_tables", "seq_lens"))
    bench.one_shot(w, inp, {"ms": 0.6}, lambda: None,
                   lambda *a, **k: time.sleep(0.001), 0.1)
    (row,) = bench.rows
    assert timed == [False]
    assert row["kernel_ms"] == 0.5 and row["kernel_ms_flushed"] == 0.6
    assert row["ratio_to_kernel"] == row["wall_ms_per_call"] / 0.5
    assert row["ratio_to_kernel"] >= 1.0 / 0.5   # 1 ms of wall time a call at least
