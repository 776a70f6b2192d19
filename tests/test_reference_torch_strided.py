"""The float64 references refuse a strided torch tensor as the kernels do, naming torch's fix
(`.contiguous()`): they converted it to NumPy first, and then named np.ascontiguousarray, which
would hand back NumPy arrays."""
import numpy as np
import pytest

from pagedattn_lab import reference_decode

torch = pytest.importorskip("torch")


def _decode_inputs():
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.standard_normal((2, 4, 16)).astype(np.float32))
    k = torch.from_numpy(rng.standard_normal((3, 4, 2, 16)).astype(np.float32))
    tables = torch.tensor([[0, 1], [2, 0]], dtype=torch.int32)
    lens = torch.tensor([5, 3], dtype=torch.int32)
    return dict(q=q, k_cache=k, v_cache=k.clone(), block_tables=tables, seq_lens=lens)


@pytest.mark.parametrize("name", ["q", "k_cache", "block_tables"])
def test_a_strided_tensor_is_told_contiguous(name):
    args = _decode_inputs()
    x = args[name]
    args[name] = torch.cat([x, x], dim=-1)[..., ::2] if name != "block_tables" else \
        torch.cat([x, x], dim=1)[:, ::2]
    assert not args[name].is_contiguous()
    with pytest.raises(ValueError, match=rf"{name}.*{name}\.contiguous\(\)"):
        reference_decode(**args)


def test_contiguous_tensors_give_the_numpy_result():
    args = _decode_inputs()
    got = reference_decode(**args)
    want = reference_decode(**{k: v.numpy() for k, v in args.items()})
    np.testing.assert_array_equal(got, want)
