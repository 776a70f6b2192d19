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
    assert met == ["targets W: best fp8_e4m3 static (simt) x0.50 of fp16 (<= 0.55), 95% of copy "
                   "(>= 90%): MET"]
    missed = bq.targets([row("int8", 0.5, 0.5, 0.85)])
    assert missed[0].endswith("MISSED")
    assert bq.targets([row("float16", 1.0, 1.0, 0.9)]) == ["targets W: no compressed row ran"]
