"""Hunt 45: every public entry point that takes arrays, fed each input kind (NumPy, a
non-contiguous view, np.memmap, CPU torch tensors of fp32/fp16/bf16 and int32/int64 tables,
Python lists, ml_dtypes bfloat16 NumPy). Each case either gives the float64 oracle's answer
(within its element type's rounding) or refuses with a TypeError/ValueError whose message
starts with the argument's name; never a bare traceback, never a silently wrong answer.
Found: slot_mapping and the three references refused the torch tensors their siblings
(write_kv, the attention calls) take."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.attention_common import bfloat16_dtype

torch = pytest.importorskip("torch")

PAGE, KV, HEADS, DIM, PAGES = 4, 2, 4, 64, 6        # GQA 2:1
LENS = np.array([7, 1], np.int32)                    # 7: not a page multiple; 1: one token
TABLES = np.array([[3, 0], [5, -1]], np.int32)
ARGS = ("q", "k_cache", "v_cache", "block_tables", "seq_lens", "qo_indptr", "block_table_row",
        "slot_mapping", "q_lens", "indptr", "indices", "last_page_len", "k", "v")


def _noncontig(a):
    wide = np.zeros(a.shape + (2,), a.dtype)
    wide[..., 0] = a
    return wide[..., 0]


def _memmap(a, tmp_path_factory):
    m = np.memmap(tmp_path_factory.mktemp("mm") / "a", dtype=a.dtype, mode="w+", shape=a.shape)
    m[...] = a
    return m


def _tensor(a):
    if a.dtype == bfloat16_dtype():
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a).copy())


FLOATS = {"np32": np.float32, "np16": np.float16, "npbf16": "bf16", "noncontig32": np.float32,
          "memmap32": np.float32, "t32": np.float32, "t16": np.float16, "tbf16": "bf16"}
INTS = ["np32", "np64", "noncontig", "memmap", "t32", "t64", "list"]
TOL = {np.float32: 1e-4, np.float16: 3e-2, "bf16": 1e-1}


@pytest.fixture
def make(tmp_path_factory):
    def floats(kind, a):
        dtype = FLOATS[kind]
        a = a.astype(bfloat16_dtype() if dtype == "bf16" else dtype)
        if kind.startswith("t"):
            return _tensor(a)
        return {"noncontig32": _noncontig, "memmap32": lambda x: _memmap(x, tmp_path_factory)
                }.get(kind, lambda x: x)(a)

    def ints(kind, a):
        a = np.asarray(a, np.int64 if kind.endswith("64") else np.int32)
        return {"noncontig": _noncontig, "memmap": lambda x: _memmap(x, tmp_path_factory),
                "t32": _tensor, "t64": _tensor, "list": lambda x: x.tolist()}.get(kind,
                                                                                   lambda x: x)(a)
    return floats, ints


def _values(x):
    return x.double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _judge(call, want, tol):
    """Either the right answer or a refusal naming an argument."""
    try:
        got = call()
    except (TypeError, ValueError) as e:
        assert str(e).split(":")[0].split("[")[0] in ARGS, f"refusal names no argument: {e}"
        return "refused"
    for g, w in zip(got if isinstance(want, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(_values(g), w, rtol=tol, atol=tol)
    return "ok"


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(45)
    k = rng.standard_normal((PAGES, PAGE, KV, DIM)).astype(np.float32)
    v = rng.standard_normal((PAGES, PAGE, KV, DIM)).astype(np.float32)
    return k, v, rng.standard_normal((2, HEADS, DIM)), rng.standard_normal((2, 7, HEADS, DIM))


def _rounded(a, kind):
    dtype = FLOATS[kind]
    return a.astype(bfloat16_dtype() if dtype == "bf16" else dtype).astype(np.float64)


@pytest.mark.parametrize("ints", INTS)
@pytest.mark.parametrize("floats", list(FLOATS))
def test_attention_calls_and_references(make, problem, floats, ints):
    f, i = make
    k, v, qd, qp = (_rounded(a, floats) for a in problem)
    tol = TOL[FLOATS[floats]]
    want_d = pl.reference_decode(qd, k, v, TABLES, LENS)
    want_p = pl.reference_prefill(qp, k, v, TABLES, LENS)
    def args(q):
        return f(floats, q), f(floats, k), f(floats, v), i(ints, TABLES), i(ints, LENS)
    seen = {name: _judge(lambda: fn(*args(q)), want, tol) for name, fn, q, want in (
        ("decode", pl.paged_attention_decode, qd, want_d),
        ("prefill", pl.paged_attention_prefill, qp, want_p),
        ("reference_decode", pl.reference_decode, qd, want_d),
        ("reference_prefill", pl.reference_prefill, qp, want_p))}
    # The oracle takes whatever decode takes (it reads every float type, so bf16 too).
    if seen["decode"] == "ok":
        assert seen["reference_decode"] == seen["reference_prefill"] == "ok", seen


@pytest.mark.parametrize("dtype", ["t32", "t16", "tbf16"])
def test_references_take_cpu_torch_tensors(make, problem, dtype):
    """Was: reference_decode(torch...) -> 'k_cache: expected a NumPy or CuPy array, got
    Tensor', though paged_attention_decode takes the same tensors."""
    f, i = make
    k, v, qd, qp = (_rounded(a, dtype) for a in problem)
    got = pl.reference_decode(*(f(dtype, a) for a in (qd, k, v)), i("t32", TABLES), i("t32", LENS))
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, pl.reference_decode(qd, k, v, TABLES, LENS))
    got = pl.reference_prefill(*(f(dtype, a) for a in (qp, k, v)), i("t32", TABLES),
                               i("t32", LENS))
    np.testing.assert_array_equal(got, pl.reference_prefill(qp, k, v, TABLES, LENS))
    indptr = np.array([0, 3, 4], np.int32)
    packed = qp[0, :4]
    got = pl.reference_prefill_packed(f(dtype, packed), f(dtype, k), f(dtype, v),
                                      i("t32", indptr), i("t32", TABLES), i("t32", LENS))
    np.testing.assert_array_equal(got, pl.reference_prefill_packed(packed, k, v, indptr,
                                                                   TABLES, LENS))


@pytest.mark.parametrize("ints", ["t32", "t64"])
def test_slot_mapping_takes_cpu_torch_tensors(make, ints):
    """Was: slot_mapping(torch...) -> 'block_tables: expected a NumPy or CuPy array, got
    Tensor', though write_kv takes its slot_mapping as a tensor. Now a torch int64 tensor."""
    _, i = make
    q_lens = np.array([2, 1], np.int32)
    got = pl.slot_mapping(i(ints, TABLES), i(ints, LENS), i(ints, q_lens), PAGE)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    want = pl.slot_mapping(TABLES, LENS, q_lens, PAGE)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(want, [1, 2, 20])


@pytest.mark.parametrize("ints", INTS)
def test_table_calls(make, ints):
    _, i = make
    csr = (np.array([0, 2, 3]), np.array([3, 0, 5]), np.array([3, 1]))
    assert _judge(lambda: pl.to_csr(i(ints, TABLES), i(ints, LENS), PAGE), csr, 0) in (
        "ok", "refused")
    assert _judge(lambda: pl.from_csr(*(i(ints, a) for a in csr), PAGE), (TABLES, LENS), 0) in (
        "ok", "refused")
    assert _judge(lambda: pl.slot_mapping(i(ints, TABLES), i(ints, LENS), i(ints, [2, 1]), PAGE),
                  np.array([1, 2, 20]), 0) in ("ok", "refused")
    assert _judge(lambda: pl.token_slots(i(ints, TABLES[0]), 7, PAGE),
                  np.array([12, 13, 14, 15, 0, 1, 2]), 0) == "ok"
    assert _judge(lambda: pl.physical_slot(i(ints, TABLES[0]), 5, PAGE), 1, 0) == "ok"
    if ints.startswith("t"):   # torch tables everywhere a NumPy int32 table goes
        assert _judge(lambda: pl.slot_mapping(i(ints, TABLES), i(ints, LENS), i(ints, [2, 1]),
                                              PAGE), np.array([1, 2, 20]), 0) == "ok"


@pytest.mark.parametrize("ints", ["np32", "np64", "noncontig", "t32", "t64", "list"])
@pytest.mark.parametrize("floats", ["np32", "np16", "npbf16", "noncontig32", "memmap32", "t32",
                                    "t16"])
def test_gather_and_write(make, problem, floats, ints):
    f, i = make
    k = _rounded(problem[0], floats)
    want = np.concatenate([k[3], k[0]])[:7]
    tol = TOL[FLOATS[floats]]
    for fn in (pl.gather_kv, pl.gather_kv_reference):
        _judge(lambda: fn(f(floats, k), f(floats, k), i(ints, TABLES[0]), 7)[0], want, tol)

    def write():
        kc, vc = f(floats, np.zeros_like(k)), f(floats, np.zeros_like(k))
        new = f(floats, k[0, :3])
        pl.write_kv(new, new, kc, vc, i(ints.replace("32", "64"), np.array([1, 2, 20])))
        return kc
    want = np.zeros_like(k)
    want.reshape(-1, KV, DIM)[[1, 2, 20]] = k[0, :3]
    _judge(write, want, tol)


@pytest.mark.parametrize("ints", ["np32", "np64", "noncontig", "t32", "t64", "list"])
@pytest.mark.parametrize("floats", ["np16", "npbf16", "noncontig32", "memmap32", "t16", "tbf16"])
def test_wrappers(make, problem, floats, ints):
    f, i = make
    k, v, qd, qp = (_rounded(a, floats) for a in problem)
    dtype, tol = FLOATS[floats], TOL[FLOATS[floats]]
    dtype = "bfloat16" if dtype == "bf16" else dtype
    indptr, packed = np.array([0, 3, 4], np.int32), qp[0, :4]
    _judge(lambda: pl.BatchDecodeWrapper().plan(i(ints, TABLES), i(ints, LENS), HEADS, KV, DIM,
                                                PAGE, dtype).run(f(floats, qd), f(floats, k),
                                                                 f(floats, v)),
           pl.reference_decode(qd, k, v, TABLES, LENS), tol)
    if dtype == np.float32:   # the prefill wrapper's tensor cores take 16-bit inputs only
        return
    _judge(lambda: pl.BatchPrefillWrapper().plan(
        i(ints, indptr), i(ints, TABLES), i(ints, LENS), HEADS, KV, DIM, PAGE, dtype).run(
            f(floats, packed), f(floats, k), f(floats, v)),
        pl.reference_prefill_packed(packed, k, v, indptr, TABLES, LENS), tol)


@pytest.mark.parametrize("floats", list(FLOATS))
def test_cache_and_manager(make, problem, floats):
    """Both hold NumPy (or CuPy) pages: torch tensors are refused by name, as before."""
    f, _ = make
    k = _rounded(problem[0][0, :3], floats)
    cache = pl.PagedKVCache(4, PAGE, KV, DIM, dtype="float32", device="cpu")
    seq = cache.add_sequence()
    _judge(lambda: (cache.append(seq, f(floats, k), f(floats, k)), cache.gather(seq)[0])[1],
           k, 0)
    q = np.repeat(k, HEADS // KV, axis=1)
    manager = pl.PagedAttentionManager(4, PAGE, HEADS, KV, DIM, dtype="float32", device="cpu")
    tables = np.array([[0]], np.int32)
    pages = np.zeros((1, PAGE, KV, DIM))
    pages[0, :3] = k
    want = pl.reference_prefill(q[None], pages, pages, tables, np.array([3], np.int32))[0]
    _judge(lambda: manager.add_sequence(f(floats, k), f(floats, k), f(floats, q))[1], want, 1e-4)
