"""Torch tensors in the prefill calls and the CSR converters, as paged_attention_decode,
BatchDecodeWrapper, gather_kv and write_kv take them: each refused a CPU torch tensor with
"expected a NumPy or CuPy array, got Tensor". Results against the NumPy path on the same data
(which the float64 reference checks elsewhere), and against the reference here too."""
import numpy as np
import pytest

from pagedattn_lab import paged_attention_prefill
from pagedattn_lab.csr import from_csr, to_csr
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.reference import reference_prefill_packed

from .test_prefill_wrapper import bf16, packed_problem, rel_err

torch = pytest.importorskip("torch")


def tensor(a):
    """A CPU torch tensor of a NumPy array (ml_dtypes.bfloat16 as torch.bfloat16)."""
    if a.dtype == bf16():
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def elements(t):
    """A CPU torch tensor's values as NumPy float32."""
    return t.float().numpy()


@pytest.mark.parametrize("dtype", [np.float16, "bf16"])
def test_prefill_wrapper_takes_cpu_torch_tensors(rng, dtype):
    dtype = bf16() if dtype == "bf16" else np.dtype(dtype)
    lens, q_lens = [23, 1, 9], [5, 1, 9]          # a chunk over a prefix, a decode, a prompt
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, 7, 4, 2, 32, dtype)
    ref = reference_prefill_packed(q.astype(np.float32), k.astype(np.float32),
                                   v.astype(np.float32), indptr, tables, seq_lens)
    numpy_out = BatchPrefillWrapper().plan(indptr, tables, seq_lens, 4, 2, 32, 7, dtype).run(
        q, k, v).astype(np.float32)
    w = BatchPrefillWrapper().plan(tensor(indptr), tensor(tables), tensor(seq_lens), 4, 2, 32,
                                   7, dtype)
    got = w.run(tensor(q), tensor(k), tensor(v))
    assert isinstance(got, torch.Tensor) and got.dtype == tensor(q).dtype
    np.testing.assert_array_equal(elements(got), numpy_out)
    assert rel_err(elements(got), ref) < 1e-2
    out = torch.full_like(tensor(q), float("nan"))
    assert w.run(tensor(q), tensor(k), tensor(v), out=out).data_ptr() == out.data_ptr()
    np.testing.assert_array_equal(elements(out), numpy_out)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_one_shot_prefill_takes_cpu_torch_tensors(rng, dtype):
    batch, max_len, heads, kv, dim, page = 2, 9, 4, 2, 64, 4     # 9: not a page multiple
    lens = np.array([9, 1], np.int32)
    num_pages = 6
    k = rng.standard_normal((num_pages, page, kv, dim)).astype(dtype)
    v = rng.standard_normal((num_pages, page, kv, dim)).astype(dtype)
    tables = np.array([[4, 0, 2], [5, -1, -1]], np.int32)
    q = rng.standard_normal((batch, max_len, heads, dim)).astype(dtype)
    want = paged_attention_prefill(q, k, v, tables, lens)
    got = paged_attention_prefill(tensor(q), tensor(k), tensor(v), tensor(tables), tensor(lens))
    assert isinstance(got, torch.Tensor) and got.dtype == tensor(q).dtype
    np.testing.assert_array_equal(got.numpy(), want)


def test_one_shot_prefill_names_a_bfloat16_tensor(rng):
    q = torch.zeros((1, 4, 2, 64), dtype=torch.bfloat16)
    k = torch.zeros((2, 4, 2, 64), dtype=torch.bfloat16)
    tables, lens = torch.zeros((1, 1), dtype=torch.int32), torch.tensor([4], dtype=torch.int32)
    with pytest.raises(TypeError, match=r"^q: expected dtype float32 or float16 .*torch\."
                                        r"bfloat16; BatchPrefillWrapper runs bfloat16"):
        paged_attention_prefill(q, k, k, tables, lens)


def test_csr_round_trip_of_torch_tables(rng):
    tables = np.array([[3, 1, -1], [0, -1, -1], [-1, -1, -1], [2, 4, 5]], np.int32)
    lens = np.array([5, 1, 0, 9], np.int32)                       # page 4: 5 = 4 + 1
    want = to_csr(tables, lens, 4)
    got = to_csr(tensor(tables), tensor(lens), 4)
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor) and g.dtype == torch.int32
        np.testing.assert_array_equal(g.numpy(), w)
    back_tables, back_lens = from_csr(*got, 4)
    assert isinstance(back_tables, torch.Tensor) and isinstance(back_lens, torch.Tensor)
    np.testing.assert_array_equal(back_lens.numpy(), lens)
    np.testing.assert_array_equal(back_tables.numpy(), from_csr(*want, 4)[0])


def test_int64_torch_tables_are_refused_by_name():
    with pytest.raises(TypeError, match=r"^block_tables: expected dtype int32, got int64"):
        to_csr(torch.zeros((1, 1), dtype=torch.int64), torch.tensor([1], dtype=torch.int32), 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, "bf16"])
def test_prefill_wrapper_takes_cuda_torch_tensors(rng, dtype):
    """CUDA tensors through DLPack: the same output as CuPy arrays (bf16 as its uint16 bits)."""
    cp = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    dtype = bf16() if dtype == "bf16" else np.dtype(dtype)
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, [23, 1, 9], [5, 1, 9], 7, 4, 2, 32,
                                                       dtype)
    bits = (lambda a: a.view(np.uint16) if a.dtype == bf16() else a)   # noqa: E731
    dev = [cp.asarray(bits(a)) for a in (q, k, v, indptr, tables, seq_lens)]
    want = BatchPrefillWrapper().plan(*dev[3:], 4, 2, 32, 7, dtype).run(*dev[:3]).get()
    cuda = [tensor(a).cuda() for a in (q, k, v, indptr, tables, seq_lens)]
    got = BatchPrefillWrapper().plan(*cuda[3:], 4, 2, 32, 7, dtype).run(*cuda[:3])
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == cuda[0].dtype
    host = got.cpu()
    host = host.view(torch.int16).numpy().view(np.uint16) if dtype == bf16() else host.numpy()
    np.testing.assert_array_equal(host, want)
