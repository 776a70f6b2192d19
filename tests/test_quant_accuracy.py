"""The accuracy table of compressed KV caches (pagedattn_lab.quant_accuracy)."""
import numpy as np

from pagedattn_lab.quant_accuracy import accuracy_table, attention, format_table, round_trip


def test_attention_matches_the_packed_reference(rng):
    from pagedattn_lab.reference import reference_prefill_packed
    q = rng.standard_normal((5, 4, 32))
    k, v = rng.standard_normal((2, 5, 2, 32))
    ref = reference_prefill_packed(q, k[None], v[None], np.array([0, 5], np.int32),
                                   np.array([[0]], np.int32), np.array([5], np.int32))
    np.testing.assert_allclose(attention(q, k, v), ref, rtol=1e-12, atol=1e-12)


def test_table_orders_formats_as_their_precision_does():
    rows = {(r.kv_dtype, r.scheme, r.data): r for r in accuracy_table(n_tokens=48, head_dim=64)}
    assert len(rows) == 10
    for data in ("normal", "outliers"):
        fp16 = rows["float16", "-", data].rel_error
        assert fp16 < 2e-3
        for fmt in ("int8", "fp8_e4m3"):
            for scheme in ("static", "per_token"):
                assert rows[fmt, scheme, data].rel_error > 5 * fp16
                assert rows[fmt, scheme, data].rel_error < 0.2
    # outlier channels hurt, and per-token scales recover part of it for int8
    assert rows["int8", "static", "outliers"].rel_error > 2 * rows["int8", "static", "normal"].rel_error
    assert rows["int8", "per_token", "outliers"].rel_error < rows["int8", "static", "outliers"].rel_error
    assert "fp8_e4m3" in format_table(list(rows.values()))


def test_round_trip_keeps_the_row_maximum_with_per_token_scales(rng):
    x = rng.standard_normal((7, 2, 16)).astype(np.float32)
    for fmt in ("int8", "fp8_e4m3"):
        back = round_trip(x, fmt, "per_token")
        np.testing.assert_allclose(np.abs(back).max(-1), np.abs(x).max(-1), rtol=1e-6)
