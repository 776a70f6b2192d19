"""Torch callers are told torch's dtypes; bfloat16 values are all tensors or all arrays.

Before: a bfloat16 plan's decode run told a torch tensor of another dtype "expected dtype
bfloat16 or uint16"; the prefill run, the one-shot decode (its out= too) and the one-shot
prefill's out= named NumPy's dtypes ("expected dtype bfloat16, got float16"), and write_kv
and gather_kv told a tensor beside a torch.bfloat16 cache "expected dtype uint16", the dtype
of the bits a torch.bfloat16 tensor is shared as. Beside torch.bfloat16 tensors a NumPy uint16
array of integers passed for bfloat16: the decode run read such a cache (or out) and returned
NumPy uint16 for such a q, write_kv wrote such rows, gather_kv copied such a v_cache, and the
one-shot decode blamed q ("expected dtype uint16") for the cache; an ml_dtypes.bfloat16 array
beside tensors was told "expected one dtype, got uint16, bfloat16" by the decode run and
accepted by the prefill run; torch scales beside NumPy values let a NumPy uint16 q pass for
bfloat16 in the decode run. All on the CPU executor; no kernel runs.
"""
import re

import numpy as np
import pytest

from pagedattn_lab import (BatchDecodeWrapper, BatchPrefillWrapper, gather_kv,
                           paged_attention_decode, paged_attention_prefill, write_kv)

torch = pytest.importorskip("torch")

PAGES, PAGE, KV_HEADS, HEADS, DIM = 4, 16, 2, 4, 64
TABLES = np.array([[0, 1], [2, 3]], np.int32)
LENS = np.array([20, 9], np.int32)
QO_INDPTR = np.array([0, 3, 5], np.int32)


def bf16(*shape):
    return torch.zeros(shape, dtype=torch.bfloat16)


def caches():
    return bf16(PAGES, PAGE, KV_HEADS, DIM), bf16(PAGES, PAGE, KV_HEADS, DIM)


def decode_args():
    k, v = caches()
    return dict(q=bf16(2, HEADS, DIM), k_cache=k, v_cache=v, out=bf16(2, HEADS, DIM))


def prefill_args():
    k, v = caches()
    return dict(q=bf16(5, HEADS, DIM), k_cache=k, v_cache=v, out=bf16(5, HEADS, DIM))


def decode_plan():
    return BatchDecodeWrapper().plan(TABLES, LENS, HEADS, KV_HEADS, DIM, PAGE, "bfloat16")


def prefill_plan():
    return BatchPrefillWrapper().plan(QO_INDPTR, TABLES, LENS, HEADS, KV_HEADS, DIM, PAGE,
                                      "bfloat16")


def numpy_bits(t):
    """A torch.bfloat16 tensor's bits as a NumPy uint16 array (integers, on the CPU)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def torch_dtype_refusal(name, want, got, source):
    return rf"^{name}: expected dtype torch\.{want} \({re.escape(source)}\), got torch\.{got}$"


# ---- 1, 2: a tensor of another dtype is told torch's, on every path ------------------------
@pytest.mark.parametrize("name", ["q", "k_cache", "v_cache", "out"])
def test_decode_run_tells_a_torch_tensor_torch_bfloat16(name):
    args = decode_args()
    args[name] = args[name].to(torch.float16)
    with pytest.raises(TypeError, match=torch_dtype_refusal(name, "bfloat16", "float16",
                                                            "as planned")):
        decode_plan().run(**args)


@pytest.mark.parametrize("name", ["q", "k_cache", "out"])
def test_prefill_run_tells_a_torch_tensor_torch_bfloat16(name):
    args = prefill_args()
    args[name] = args[name].to(torch.float32)
    with pytest.raises(TypeError, match=torch_dtype_refusal(name, "bfloat16", "float32",
                                                            "as planned")):
        prefill_plan().run(**args)


@pytest.mark.parametrize("name", ["q", "v_cache", "out"])
def test_one_shot_decode_tells_a_torch_tensor_the_caches_torch_dtype(name):
    args = decode_args()
    args[name] = args[name].to(torch.float16)
    with pytest.raises(TypeError, match=torch_dtype_refusal(name, "bfloat16", "float16",
                                                            "k_cache's")):
        paged_attention_decode(block_tables=TABLES, seq_lens=LENS, **args)


def test_one_shot_prefill_tells_a_torch_out_the_caches_torch_dtype():
    k_cache, v_cache = (x.to(torch.float32) for x in caches())
    q = torch.zeros((2, 20, HEADS, DIM))
    with pytest.raises(TypeError, match=torch_dtype_refusal("out", "float32", "float16",
                                                            "k_cache's")):
        paged_attention_prefill(q, k_cache, v_cache, TABLES, LENS, out=q.to(torch.float16))


def test_write_kv_tells_torch_rows_the_caches_torch_dtype():
    k_cache, v_cache = caches()
    rows = torch.zeros((1, KV_HEADS, DIM), dtype=torch.float16)
    with pytest.raises(TypeError, match=torch_dtype_refusal("k", "bfloat16", "float16",
                                                            "k_cache's")):
        write_kv(rows, rows, k_cache, v_cache, np.array([0]))
    assert not k_cache.any()


def test_gather_tells_a_torch_v_cache_the_k_caches_torch_dtype():
    k_cache, v_cache = caches()
    with pytest.raises(TypeError, match=torch_dtype_refusal("v_cache", "bfloat16", "float16",
                                                            "k_cache's")):
        gather_kv(k_cache, v_cache.to(torch.float16), np.array([0], np.int32), 3)


# ---- 3: values are all tensors or all arrays --------------------------------------------------
def mixed_refusal(name, like):
    return rf"^{name}: expected a torch tensor like {like} \(.*\), got numpy\.ndarray; "


def with_numpy(args, *names):
    """args with `names` as NumPy uint16 arrays of their bits."""
    return {n: numpy_bits(x) if n in names else x for n, x in args.items()}


CALLS = {
    "decode run": lambda a: decode_plan().run(**a),
    "one-shot decode": lambda a: paged_attention_decode(block_tables=TABLES, seq_lens=LENS, **a),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("names, like", [(("k_cache", "v_cache"), "q"), (("out",), "q"),
                                         (("q",), "k_cache")])
def test_decode_refuses_numpy_values_beside_torch_tensors(call, names, like):
    args = with_numpy(decode_args(), *names)
    with pytest.raises(TypeError, match=mixed_refusal(names[0], like) +
                       rf"torch\.from_numpy\({names[0]}\)\.view\(torch\.bfloat16\) shares its "
                       r"memory$"):
        CALLS[call](args)


def test_prefill_run_refuses_an_ml_dtypes_cache_beside_a_torch_q():
    import ml_dtypes  # noqa: PLC0415 - a dependency of the course
    args = prefill_args()
    for name in ("k_cache", "v_cache"):
        args[name] = numpy_bits(args[name]).view(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=mixed_refusal("k_cache", "q") +
                       r"torch\.from_numpy\(k_cache\.view\(np\.uint16\)\)\.view\("
                       r"torch\.bfloat16\) shares its memory$"):
        prefill_plan().run(**args)


def test_write_kv_refuses_numpy_rows_into_a_torch_cache():
    k_cache, v_cache = caches()
    rows = np.full((1, KV_HEADS, DIM), 0x3F80, np.uint16)   # bfloat16 1.0's bits as integers
    with pytest.raises(TypeError, match=mixed_refusal("k", "k_cache")):
        write_kv(rows, rows.copy(), k_cache, v_cache, np.array([0]))
    assert not k_cache.any()


def test_gather_refuses_a_numpy_v_cache_beside_a_torch_k_cache():
    k_cache, v_cache = caches()
    with pytest.raises(TypeError, match=mixed_refusal("v_cache", "k_cache")):
        gather_kv(k_cache, numpy_bits(v_cache), np.array([0], np.int32), 3)



def test_torch_scales_do_not_make_numpy_uint16_pass_for_bfloat16():
    """Torch scales beside NumPy values: the values stay NumPy's, whose uint16 is integers."""
    plan = BatchDecodeWrapper().plan(TABLES, LENS, HEADS, KV_HEADS, DIM, PAGE, "bfloat16",
                                     kv_dtype="int8")
    codes = np.zeros((PAGES, PAGE, KV_HEADS, DIM), np.int8)
    q = np.full((2, HEADS, DIM), 0x3F80, np.uint16)   # bfloat16 1.0's bits as integers
    with pytest.raises(TypeError, match=r"^q: the plan is for bfloat16: expected dtype bfloat16, "
                                        r"got uint16 \(bfloat16 bits\? uint16 holds them on "
                                        r"CuPy only; .*x\.view\(ml_dtypes\.bfloat16\)\)$"):
        plan.run(q, codes, codes.copy(), k_scale=torch.ones(KV_HEADS),
                 v_scale=torch.ones(KV_HEADS))
