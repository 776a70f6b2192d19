"""Another team's test grid (hunt 107): edges of the decode wrapper's plan/run contract."""
import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper, BatchPrefillWrapper, quant
from pagedattn_lab.cache_write_quant import write_kv_quant


@pytest.mark.parametrize("first", ["simt", "tensor_core"])
def test_an_empty_batch_replanned_describes_itself_not_the_last_plan(first):
    # An empty batch is planned (and runs, returning [0, heads, dim]); before the fix its
    # part_len, max_parts and grid were the previous plan's, and describe() reported them
    # (or raised AttributeError for the SIMT kernel's block size after a tensor-core plan).
    w = BatchDecodeWrapper().plan(np.array([[0, 1]], np.int32), np.array([20], np.int32),
                                  32, 1, 64, 16, "float16", kernel=first)
    w.plan(np.zeros((0, 2), np.int32), np.zeros(0, np.int32), 4, 2, 64, 16, "float16")
    assert (w.part_len, w.max_parts, w.grid, w.scheme) == (0, 0, None, None)
    assert w.describe() == "simt: 0 sequences, nothing to launch"
    out = w.run(np.zeros((0, 4, 64), np.float16), *(np.zeros((1, 16, 2, 64), np.float16),) * 2)
    assert out.shape == (0, 4, 64)


def _two_rows(dtype=np.float16):
    rng = np.random.default_rng(107)
    tables = np.array([[2, 0], [1, 3]], np.int32)
    lens = np.array([20, 9], np.int32)
    k, v = (rng.standard_normal((4, 16, 2, 32)).astype(dtype) for _ in "kv")
    return tables, lens, k, v


def test_decode_and_prefill_plans_keep_their_own_tables():
    """Documented in both plans' docstrings: the tables are the plan's copy, so a caller's
    array changed after plan (a step's next pages written into it) changes no run."""
    tables, lens, k, v = _two_rows()
    q = np.random.default_rng(1).standard_normal((2, 4, 32)).astype(np.float16)
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 32, 16, "float16")
    p = BatchPrefillWrapper().plan(np.array([0, 1, 2], np.int32), tables, lens, 4, 2, 32, 16,
                                   "float16")
    before = w.run(q, k, v).copy(), p.run(q, k, v).copy()
    tables[:] = tables[::-1].copy()
    lens[:] = 1
    assert np.array_equal(w.run(q, k, v), before[0])
    assert np.array_equal(p.run(q, k, v), before[1])


def test_e4m3_pages_held_as_ml_dtypes_are_told_to_view_their_bytes():
    # Before: "expected dtype uint8 (the codes), got float8_e4m3fn" and no way out, where
    # bfloat16 through ml_dtypes is how the CPU takes bf16. The hint is only for e4m3fn:
    # int8 or float8_e5m2 bytes are not e4m3 codes, and a view would read garbage silently.
    tables, lens, _, _ = _two_rows()
    e4m3 = np.zeros((4, 16, 2, 32), ml_dtypes.float8_e4m3fn)
    scales = np.ones(2, np.float32), np.ones(2, np.float32)
    q = np.zeros((2, 4, 32), np.float16)
    fix = r"; those are the e4m3 codes' bytes: pass k_cache.view\(np.uint8\)$"
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 32, 16, "float16", kv_dtype="fp8")
    with pytest.raises(TypeError, match=r"^k_cache: .*got float8_e4m3fn" + fix):
        w.run(q, e4m3, e4m3.copy(), k_scale=scales[0], v_scale=scales[1])
    p = BatchPrefillWrapper().plan(np.array([0, 1, 2], np.int32), tables, lens, 4, 2, 32, 16,
                                   "float16", kv_dtype="fp8")
    with pytest.raises(TypeError, match=r"^k_cache: .*got float8_e4m3fn" + fix):
        p.run(q, e4m3, e4m3.copy(), k_scale=scales[0], v_scale=scales[1])
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype uint8 \(the codes of "
                                        r"fp8_e4m3 pages\), got float8_e4m3fn" + fix):
        write_kv_quant(np.zeros((1, 2, 32), np.float32), np.zeros((1, 2, 32), np.float32),
                       e4m3, e4m3.copy(), np.array([0], np.int32), "fp8", "static", *scales)
    with pytest.raises(TypeError, match=r"pass codes\.view\(np\.uint8\)$"):
        quant.decode(e4m3[0], "fp8_e4m3")
    for wrong in (np.int8, ml_dtypes.float8_e5m2):   # not e4m3 codes: no view offered
        with pytest.raises(TypeError) as info:
            w.run(q, np.zeros(e4m3.shape, wrong), np.zeros(e4m3.shape, wrong),
                  k_scale=scales[0], v_scale=scales[1])
        assert "view" not in str(info.value)
    # and the view it names runs: the same bytes as the uint8 codes
    codes = quant.encode(np.random.default_rng(2).standard_normal(e4m3.shape), "fp8_e4m3")
    as_fp8 = codes.view(ml_dtypes.float8_e4m3fn)
    assert np.array_equal(
        w.run(q, as_fp8.view(np.uint8), as_fp8.view(np.uint8).copy(), k_scale=scales[0],
              v_scale=scales[1], out=np.empty_like(q)),
        w.run(q, codes, codes.copy(), k_scale=scales[0], v_scale=scales[1],
              out=np.empty_like(q)))
