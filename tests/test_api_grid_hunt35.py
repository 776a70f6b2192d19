"""An outsider's grid over the public API (hunt 35), on the CPU executor.

Written against `pagedattn_lab.__all__` as a vLLM / FlashInfer user would call it. What it found
broken (each failed before its fix): `kv_dtype` was read as an exact key, so vLLM's "fp8" (its
name for e4m3) and torch's "float8_e4m3fn" were refused, and the error listed no spellings;
the manager answered a misspelt kv_dtype with a rule about `dtype`; write_kv took NumPy uint16
caches on the CPU, which gather_kv and paged_attention_decode refuse (on the CPU bfloat16 is
ml_dtypes'; uint16 is integers); a `q` that is no array got a ValueError about its shape where
every other argument gets a TypeError. The rest of the grid (page sizes, lengths at page edges,
GQA 3/5/7 and MQA, shared pages, refused re-plans, refused writes) passed before and stays.
"""
import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.cache import page_bytes
from pagedattn_lab.engine.config import EngineConfig

E4M3_SPELLINGS = ["fp8_e4m3", "fp8", "float8_e4m3fn", ml_dtypes.float8_e4m3fn]
UNKNOWN = r"^kv_dtype: expected one of \('int8', 'fp8_e4m3'\), got 'fp4'; accepted spellings: "


def _entry_points(kv_dtype):
    """Every public way to name a compressed format, each returning the name it stored."""
    tables, lens = np.array([[0, 1]], np.int32), np.array([5], np.int32)
    return {
        "PagedKVCache": lambda: pl.PagedKVCache(4, 4, 2, 64, dtype="fp16", kv_dtype=kv_dtype,
                                                scale_scheme="per_token").kv_dtype,
        "BatchDecodeWrapper.plan": lambda: pl.BatchDecodeWrapper().plan(
            tables, lens, 4, 2, 64, 4, "fp16", kv_dtype=kv_dtype,
            scale_scheme="per_token").kv_format.name,
        "BatchPrefillWrapper.plan": lambda: pl.BatchPrefillWrapper().plan(
            np.array([0, 1], np.int32), tables, lens, 4, 2, 64, 4, "fp16", kv_dtype=kv_dtype,
            scale_scheme="per_token").kv_format.name,
        "PagedAttentionManager": lambda: pl.PagedAttentionManager(
            4, 4, 4, 2, 64, dtype="fp16", kv_dtype=kv_dtype,
            scale_scheme="per_token").cache.kv_dtype,
        "EngineConfig": lambda: EngineConfig(kv_dtype=kv_dtype).kv_dtype,
        "page_bytes": lambda: page_bytes(4, 2, 64, "fp16", kv_dtype) and "fp8_e4m3",
    }


@pytest.mark.parametrize("spelling", E4M3_SPELLINGS, ids=str)
@pytest.mark.parametrize("entry", list(_entry_points(None)))
def test_every_kv_dtype_entry_point_reads_the_e4m3_spellings(entry, spelling):
    assert _entry_points(spelling)[entry]() == "fp8_e4m3"


@pytest.mark.parametrize("entry", list(_entry_points(None)))
def test_every_kv_dtype_entry_point_reads_int8_as_a_dtype_too(entry):
    if entry == "page_bytes":
        assert page_bytes(4, 2, 64, "fp16", np.int8) == page_bytes(4, 2, 64, "fp16", "int8")
    else:
        assert _entry_points(np.int8)[entry]() == "int8"


@pytest.mark.parametrize("entry", list(_entry_points(None)))
def test_an_unknown_kv_dtype_names_the_argument_and_the_accepted_spellings(entry):
    with pytest.raises(ValueError, match=UNKNOWN + r".*'fp8'"):
        _entry_points("fp4")[entry]()


def test_the_manager_names_a_misspelt_kv_dtype_before_the_rule_on_dtype():
    """float32 with a real format is refused for the dtype; with no format, for the name."""
    with pytest.raises(ValueError, match=UNKNOWN):
        pl.PagedAttentionManager(4, 4, 4, 2, 64, dtype="float32", kv_dtype="fp4")


def test_fp8_runs_exactly_as_fp8_e4m3():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((5, 2, 64)).astype(np.float16)
    q = rng.standard_normal((5, 4, 64)).astype(np.float16)
    runs = []
    for spelling in ("fp8", "fp8_e4m3"):
        m = pl.PagedAttentionManager(8, 4, 4, 2, 64, dtype="float16", kv_dtype=spelling,
                                     scale_scheme="per_token")
        sid, prefill = m.add_sequence(k, k, q)
        runs.append((prefill, m.decode_step([sid], q[:1], k[:1], k[:1]), m.cache.k_cache))
    for a, b in zip(*runs):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


# ---- uint16 on the CPU: integers for write_kv as for gather_kv and decode ------------------

def test_write_kv_refuses_numpy_uint16_caches_on_the_cpu_and_writes_nothing():
    rng = np.random.default_rng(1)
    caches = [rng.integers(0, 2**16, (4, 3, 2, 8), dtype=np.uint16) for _ in range(2)]
    before = [c.copy() for c in caches]
    rows = np.ones((2, 2, 8), np.uint16)
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype float32 or float16 or "
                                        r"bfloat16, got uint16 \(bfloat16 bits\? .*ml_dtypes\.bfloat16\)\)$"):
        pl.write_kv(rows, rows, *caches, np.array([0, 5]))
    for c, b in zip(caches, before):
        assert np.array_equal(c, b)
    for refused in (lambda: pl.gather_kv(*caches, np.array([0], np.int32), 1),
                    lambda: pl.paged_attention_decode(np.ones((1, 2, 8), np.uint16), *caches,
                                                      np.array([[0]], np.int32),
                                                      np.array([1], np.int32))):
        with pytest.raises(TypeError, match=r"^k_cache: expected dtype .* got uint16 \(bfloat16 "
                                            r"bits\? .*\)$"):
            refused()


def test_write_kv_still_writes_torch_bfloat16_caches_in_place_on_the_cpu():
    torch = pytest.importorskip("torch")
    k_cache, v_cache = (torch.zeros((4, 3, 2, 8), dtype=torch.bfloat16) for _ in range(2))
    rows = torch.full((2, 2, 8), 1.5, dtype=torch.bfloat16)
    pl.write_kv(rows, rows * 2, k_cache, v_cache, np.array([0, 5]))
    assert torch.equal(k_cache[1, 2], rows[1]) and torch.equal(v_cache[0, 0], rows[0] * 2)


def test_bfloat16_caches_on_the_cpu_are_written_and_gathered_as_ml_dtypes():
    bf16 = np.dtype(ml_dtypes.bfloat16)
    k_cache, v_cache = (np.zeros((4, 3, 2, 8), bf16) for _ in range(2))
    rows = np.arange(32, dtype=np.float32).reshape(2, 2, 8).astype(bf16)
    pl.write_kv(rows, rows, k_cache, v_cache, np.array([3, 4]))
    k, _ = pl.gather_kv(k_cache, v_cache, np.array([1], np.int32), 2)
    assert k.dtype == bf16 and np.array_equal(k.view(np.uint16), rows.view(np.uint16))


# ---- a q that is no array: a TypeError like every other argument's ------------------------

@pytest.mark.parametrize("call", ["decode", "prefill", "reference_decode"])
@pytest.mark.parametrize("q", [None, "list"])
def test_a_q_that_is_no_array_is_a_type_error_naming_q(call, q):
    k = np.zeros((2, 4, 1, 8), np.float32)
    tables, lens = np.array([[0, 1]], np.int32), np.array([5], np.int32)
    shape = (1, 1, 8) if call != "prefill" else (1, 1, 1, 8)
    q = np.zeros(shape).tolist() if q == "list" else q
    fn = {"decode": pl.paged_attention_decode, "prefill": pl.paged_attention_prefill,
          "reference_decode": pl.reference_decode}[call]
    with pytest.raises(TypeError, match=r"^q: expected a NumPy or CuPy array \(a (decode|"
                                        r"prefill) query of shape \[.*\]\), got (NoneType|list)$"):
        fn(q, k, k, tables, lens)


def test_a_q_of_the_wrong_rank_is_still_a_value_error_about_its_shape():
    k = np.zeros((2, 4, 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"^q: expected a decode query of shape .* got \(1, 8\)"):
        pl.paged_attention_decode(np.zeros((1, 8), np.float32), k, k,
                                  np.array([[0, 1]], np.int32), np.array([5], np.int32))


# ---- the grid: results against the float64 reference -------------------------------------

def _paged(rng, lens, page, kv_heads, dim, dtype, share):
    width = max(-(-n // page) for n in lens)
    num_pages = len(lens) * width + 1
    k, v = (rng.standard_normal((num_pages, page, kv_heads, dim)).astype(dtype)
            for _ in range(2))
    order = rng.permutation(num_pages)
    tables = np.array([order[:width] if share else order[b * width:(b + 1) * width]
                       for b in range(len(lens))], np.int32)
    return k, v, tables, np.array(lens, np.int32)


@pytest.mark.parametrize("page", [1, 3, 5, 16])
@pytest.mark.parametrize("heads, kv_heads", [(3, 1), (5, 1), (7, 1), (6, 2), (1, 1)],
                         ids=["group3-mqa", "group5-mqa", "group7-mqa", "gqa6/2", "mha1"])
@pytest.mark.parametrize("share", [False, True], ids=["own-pages", "shared-pages"])
def test_decode_at_page_edges_matches_the_reference(page, heads, kv_heads, share):
    rng = np.random.default_rng(page * 100 + heads)
    lens = [1, max(page - 1, 1), page, page + 1]
    k, v, tables, lens = _paged(rng, lens, page, kv_heads, 8, np.float32, share)
    q = rng.standard_normal((len(lens), heads, 8)).astype(np.float32)
    want = pl.reference_decode(q.astype(np.float64), k.astype(np.float64),
                               v.astype(np.float64), tables, lens)
    one_shot = pl.paged_attention_decode(q, k, v, tables, lens)
    planned = pl.BatchDecodeWrapper().plan(tables, lens, heads, kv_heads, 8, page,
                                           "fp32").run(q, k, v)
    np.testing.assert_allclose(one_shot, want, atol=2e-5)
    np.testing.assert_allclose(planned, want, atol=2e-5)


@pytest.mark.parametrize("page", [1, 3, 17])
@pytest.mark.parametrize("heads, kv_heads", [(3, 1), (7, 1), (4, 4)])
def test_prefill_wrapper_at_page_edges_matches_the_reference(page, heads, kv_heads):
    rng = np.random.default_rng(page + heads)
    lens, q_lens = [max(page - 1, 1), page + 1, page], [1, page + 1, 0]
    k, v, tables, lens = _paged(rng, lens, page, kv_heads, 32, np.float16, share=False)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((int(indptr[-1]), heads, 32)).astype(np.float16)
    want = pl.reference_prefill_packed(q.astype(np.float64), k.astype(np.float64),
                                       v.astype(np.float64), indptr, tables, lens)
    got = pl.BatchPrefillWrapper().plan(indptr, tables, lens, heads, kv_heads, 32, page,
                                        "half").run(q, k, v)
    np.testing.assert_allclose(got.astype(np.float64), want, atol=3e-3)


# ---- refused calls change nothing --------------------------------------------------------

@pytest.mark.parametrize("which", ["decode", "prefill"])
@pytest.mark.parametrize("bad", ["negative page", "int64 tables", "zero length",
                                 "bad kv_dtype", "heads not a multiple"])
def test_a_refused_replan_keeps_the_previous_plan(which, bad):
    rng = np.random.default_rng(3)
    k, v = (rng.standard_normal((6, 4, 2, 32)).astype(np.float16) for _ in range(2))
    tables, lens = np.array([[2, 5], [0, 3]], np.int32), np.array([5, 7], np.int32)
    indptr = np.array([0, 1, 2], np.int32)
    q = rng.standard_normal((2, 4, 32)).astype(np.float16)
    args = dict(block_tables=tables, seq_lens=lens, num_heads=4, num_kv_heads=2, head_dim=32,
                page_size=4, dtype="float16")
    w = pl.BatchDecodeWrapper() if which == "decode" else pl.BatchPrefillWrapper()
    plan = w.plan if which == "decode" else (lambda **kw: w.plan(indptr, **kw))
    first = plan(**args).run(q, k, v).copy()
    changed = {"negative page": dict(block_tables=np.array([[2, -1], [0, 3]], np.int32)),
               "int64 tables": dict(block_tables=tables.astype(np.int64)),
               "zero length": dict(seq_lens=np.array([0, 7], np.int32)),
               "bad kv_dtype": dict(kv_dtype="fp4"),
               "heads not a multiple": dict(num_heads=3)}[bad]
    with pytest.raises((TypeError, ValueError)):
        plan(**{**args, **changed})
    assert np.array_equal(w.run(q, k, v), first)


@pytest.mark.parametrize("bad", ["slot -2", "slot past the cache", "shared slot", "int32 slots",
                                 "float16 rows", "rows of 3 heads", "fortran rows"])
def test_a_refused_write_changes_no_cache(bad):
    rng = np.random.default_rng(4)
    k_cache, v_cache = (rng.standard_normal((6, 3, 2, 4)).astype(np.float32) for _ in range(2))
    before = k_cache.copy(), v_cache.copy()
    k = rng.standard_normal((3, 2, 4)).astype(np.float32)
    slots = np.array([0, 4, 17])
    k, slots = {"slot -2": (k, np.array([0, -2, 1])),
                "slot past the cache": (k, np.array([0, 1, 18])),
                "shared slot": (k, np.array([0, 1, 1])),
                "int32 slots": (k, slots.astype(np.int32)),
                "float16 rows": (k.astype(np.float16), slots),
                "rows of 3 heads": (np.zeros((3, 3, 4), np.float32), slots),
                "fortran rows": (np.asfortranarray(k), slots)}[bad]
    with pytest.raises((TypeError, ValueError), match=r"^(k|slot_mapping)(\[\d+\])?: "):
        pl.write_kv(k, k, k_cache, v_cache, slots)
    assert np.array_equal(k_cache, before[0]) and np.array_equal(v_cache, before[1])
