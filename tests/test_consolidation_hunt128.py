"""Consolidation (helper 128): the behaviour changes that came with making the contiguity and
storage-dtype errors one helper each. A plan's (and to_csr's, from_csr's, gather_kv's)
strided torch tensor is told torch's fix, as the run paths are; a torch float8 cache is
refused by name before anything runs, with `.view(torch.uint8)` where the pages are e4m3
codes (as ml_dtypes' float8_e4m3fn is told `.view(np.uint8)`, hunt 107)."""
import numpy as np
import pytest

from pagedattn_lab import quant
from pagedattn_lab.addressing import gather_kv_reference
from pagedattn_lab.attention_decode import paged_attention_decode
from pagedattn_lab.csr import from_csr, to_csr
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.wrappers import BatchDecodeWrapper

torch = pytest.importorskip("torch")

TABLES = np.array([[0, 2], [1, 3]], np.int32)
LENS = np.array([3, 20], np.int32)
INDPTR = np.array([0, 1, 2], np.int32)


def strided_table():
    """TABLES' values as a transposed (non-contiguous) torch view."""
    t = torch.from_numpy(np.ascontiguousarray(TABLES.T)).T
    assert not t.is_contiguous() and np.array_equal(t.numpy(), TABLES)
    return t


def test_a_plans_strided_torch_table_is_told_torchs_fix():
    # before: "block_tables: ...; call np.ascontiguousarray(block_tables) first" (the
    # NumPy array torch shares its memory with), where every run path names .contiguous()
    fix = (r"^block_tables: expected a contiguous tensor .*; call "
           r"block_tables\.contiguous\(\) first$")
    lens = torch.from_numpy(LENS)
    with pytest.raises(ValueError, match=fix):
        BatchDecodeWrapper().plan(strided_table(), lens, 4, 2, 32, 16, "float16")
    with pytest.raises(ValueError, match=fix):
        BatchPrefillWrapper().plan(torch.from_numpy(INDPTR), strided_table(), lens, 4, 2, 32,
                                   16, "float16")
    with pytest.raises(ValueError, match=fix):
        to_csr(strided_table(), lens, 16)
    indices = torch.arange(8, dtype=torch.int32)[::2]
    with pytest.raises(ValueError, match=r"^indices: .*; call indices\.contiguous\(\) first$"):
        from_csr(torch.tensor([0, 2, 4], dtype=torch.int32), indices,
                 torch.tensor([3, 4], dtype=torch.int32), 16)
    # the contiguous tensor of the same values plans, and NumPy's view is told NumPy's fix
    BatchDecodeWrapper().plan(strided_table().contiguous(), lens, 4, 2, 32, 16, "float16")
    with pytest.raises(ValueError, match=r"call np\.ascontiguousarray\(block_tables\) first$"):
        BatchDecodeWrapper().plan(np.ascontiguousarray(TABLES.T).T, LENS, 4, 2, 32, 16,
                                  "float16")


def test_gather_of_a_strided_torch_cache_is_told_torchs_fix():
    k = torch.zeros((4, 16, 2, 64), dtype=torch.float16)[..., ::2]
    with pytest.raises(ValueError, match=r"^k_cache: .*; call k_cache\.contiguous\(\) first$"):
        gather_kv_reference(k, k.contiguous(), torch.tensor([0], dtype=torch.int32), 3)


# -- a torch float8 cache ------------------------------------------------------------------------

def codes_and_scales(rng):
    codes = quant.encode(rng.standard_normal((4, 16, 2, 32)), "fp8_e4m3")
    return codes, (np.ones(2, np.float32), np.ones(2, np.float32))


def wrappers(kv_dtype):
    return (BatchDecodeWrapper().plan(TABLES, LENS, 4, 2, 32, 16, "float16", kv_dtype=kv_dtype),
            BatchPrefillWrapper().plan(INDPTR, TABLES, LENS, 4, 2, 32, 16, "float16",
                                       kv_dtype=kv_dtype))


@pytest.mark.parametrize("which", [0, 1], ids=["decode", "prefill"])
def test_torch_e4m3_cache_is_told_to_view_its_bytes(rng, which):
    # before: TypeError "Got unsupported ScalarType Float8_e4m3fn" from inside torch,
    # naming no argument
    codes, scales = codes_and_scales(rng)
    w = wrappers("fp8")[which]
    q = torch.from_numpy(rng.standard_normal((2, 4, 32)).astype(np.float16))
    fp8 = torch.from_numpy(codes).view(torch.float8_e4m3fn)
    ks, vs = (torch.from_numpy(s) for s in scales)
    for arg in ("k_cache", "v_cache"):
        caches = {"k_cache": torch.from_numpy(codes), "v_cache": torch.from_numpy(codes.copy())}
        caches[arg] = fp8
        with pytest.raises(TypeError, match=rf"^{arg}: expected dtype uint8 \(the codes of "
                                            rf"fp8_e4m3 pages, as planned\), got "
                                            rf"torch\.float8_e4m3fn; those are the e4m3 "
                                            rf"codes' bytes: pass "
                                            rf"{arg}\.view\(torch\.uint8\)$"):
            w.run(q, caches["k_cache"], caches["v_cache"], k_scale=ks, v_scale=vs)
    # the view it names runs, and reads what the NumPy codes give
    got = w.run(q, fp8.view(torch.uint8), fp8.view(torch.uint8).clone(), k_scale=ks,
                v_scale=vs)
    want = w.run(q.numpy(), codes, codes.copy(), k_scale=scales[0], v_scale=scales[1])
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("which", [0, 1], ids=["decode", "prefill"])
def test_torch_float8_cache_of_another_plan_is_refused_without_a_view(rng, which):
    # int8 pages (or e5m2 bytes) are no e4m3 codes: a view would read garbage silently
    w = wrappers("int8")[which]
    q = torch.zeros((2, 4, 32), dtype=torch.float16)
    scales = torch.ones(2), torch.ones(2)
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        fp8 = torch.zeros((4, 16, 2, 32), dtype=dtype)
        with pytest.raises(TypeError, match=rf"^k_cache: expected dtype int8 \(the codes of int8 "
                                            rf"pages, as planned\), got {dtype}$"):
            w.run(q, fp8, fp8.clone(), k_scale=scales[0], v_scale=scales[1])
    w8 = wrappers("fp8")[which]
    e5m2 = torch.zeros((4, 16, 2, 32), dtype=torch.float8_e5m2)
    with pytest.raises(TypeError, match=r"^k_cache: .*got torch\.float8_e5m2$"):
        w8.run(q, e5m2, e5m2.clone(), k_scale=scales[0], v_scale=scales[1])


def test_torch_float8_where_no_codes_are_read_is_refused_by_name():
    # an uncompressed path, and q of a compressed one: named; the cache is told the codes'
    # view with the kv_dtype that reads them (session 31's read-through), q no view
    fp8 = torch.zeros((4, 16, 2, 32), dtype=torch.float8_e4m3fn)
    q = torch.zeros((2, 4, 32), dtype=torch.float16)
    nothing_shared = r"tensor, which NumPy and CuPy cannot share \(they have no fp8 type\)$"
    with pytest.raises(TypeError, match=r"^k_cache: a torch\.float8_e4m3fn tensor, which NumPy "
                       r"and CuPy cannot share \(they have no fp8 type\); if it holds e4m3 "
                       r"codes, pass k_cache\.view\(torch\.uint8\) with kv_dtype='fp8_e4m3'"):
        paged_attention_decode(q, fp8, fp8.clone(), torch.from_numpy(TABLES),
                               torch.from_numpy(LENS))
    codes = torch.zeros((4, 16, 2, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"^q: a torch\.float8_e4m3fn " + nothing_shared):
        wrappers("fp8")[0].run(q.to(torch.float8_e4m3fn), codes, codes.clone(),
                               k_scale=torch.ones(2), v_scale=torch.ones(2))
