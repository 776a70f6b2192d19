"""The compressed-KV benchmark's host-side pieces (no GPU): bytes counted, targets judged."""
from pagedattn_lab.bench import quant as bq
from pagedattn_lab.bench.workloads import D64_TOKENS


def test_bytes_count_codes_scales_tables_and_q_out():
    mha, gqa = bq.workloads()
    assert sum(mha.lens) == D64_TOKENS and (mha.num_kv_heads, gqa.num_kv_heads) == (32, 8)
    pages = sum(-(-n // bq.PAGE) for n in mha.lens)
    extra = 4 * (pages + 64) + 2 * 2 * 64 * 32 * 128
    assert bq.bytes_read(mha, "float16", None) == D64_TOKENS * 32 * 2 * 128 * 2 + extra
    assert bq.bytes_read(mha, "int8", "static") == D64_TOKENS * 32 * 2 * 128 + extra
    assert bq.bytes_read(mha, "fp8_e4m3", "per_token") == D64_TOKENS * 32 * (2 * 128 + 8) + extra


def test_targets_take_the_best_compressed_row():
    def row(kv, ms, ratio, copy):
        return {"name": "W", "kv_dtype": kv, "scheme": "static",
                "results": {"ours": {"median_ms": ms, "vs_fp16": ratio,
                                     "copy_rate_fraction": copy, "kernel": "simt"}}}
    met = bq.targets([row("float16", 1.0, 1.0, 0.9), row("int8", 0.6, 0.6, 0.8),
                      row("fp8_e4m3", 0.5, 0.5, 0.95)])
    assert met == ["targets W: best fp8_e4m3 static (simt) x0.500 of fp16 (<= 0.55), 95.0% of "
                   "copy (>= 90%): MET"]
    missed = bq.targets([row("int8", 0.5, 0.5, 0.85)])
    assert missed[0].endswith("MISSED (85.0% < 90%)")
    assert bq.targets([row("float16", 1.0, 1.0, 0.9)]) == ["targets W: no compressed row ran"]


def _row(kv, scheme, ms, ratio, copy):
    return {"name": "W", "kv_dtype": kv, "scheme": scheme,
            "results": {"ours": {"median_ms": ms, "vs_fp16": ratio,
                                 "copy_rate_fraction": copy, "kernel": "tensor_core"}}}


def test_a_missed_mark_is_never_printed_as_met():
    """x0.5504 and 89.96% once printed as "x0.55 (<= 0.55)" and "90% (>= 90%)" beside MISSED:
    the figures quoted from it read as met."""
    (text,) = bq.targets([_row("fp8_e4m3", "static", 0.082, 0.5504, 0.8996)])
    assert "x0.551 of fp16" in text and "89.9% of copy" in text, text
    assert text.endswith("MISSED (x0.551 > 0.55, 89.9% < 90%)"), text
    row_line = bq.line(_row("fp8_e4m3", "static", 0.082, 0.5504, 0.8996))
    assert "89.9% copy x0.551" in row_line, row_line
    (text,) = bq.targets([_row("fp8_e4m3", "static", 0.082, 0.553, 0.95)])
    assert text.endswith("MISSED (x0.553 > 0.55)"), text


def test_targets_are_met_by_any_row_that_meets_both_marks():
    """The fastest row (static) misses the copy mark; the per-token row, slower, meets both."""
    rows = [_row("int8", "static", 0.080, 0.50, 0.85), _row("int8", "per_token", 0.085, 0.54, 0.91)]
    (text,) = bq.targets(rows)
    assert "best int8 per_token" in text and text.endswith(": MET"), text


def test_decode_bench_counts_the_same_bytes_as_the_compressed_bench():
    """The decode bench counted every block table padded to the longest sequence's pages
    (64 x 256 ids on D64), which no kernel reads; bench.quant counts each sequence's pages."""
    from pagedattn_lab.bench.workloads import decode_workloads
    mha, gqa = bq.workloads()
    by_name = {w.name: w for w in decode_workloads()}
    assert by_name["D64"].bytes_moved() == bq.bytes_read(mha, "float16", None)
    assert by_name["D64-gqa4"].bytes_moved() == bq.bytes_read(gqa, "float16", None)
    p128 = by_name["D64-p128"]   # K/V by tokens, not whole pages; ids of the pages used
    pages = sum(-(-n // 128) for n in p128.lens)
    assert p128.bytes_moved() == (D64_TOKENS * 2 * 32 * 128 * 2 + 2 * 64 * 32 * 128 * 2
                                  + 4 * (pages + 64))
