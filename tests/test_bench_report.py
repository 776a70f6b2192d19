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
