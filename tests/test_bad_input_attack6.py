"""Bad input, sixth round: the public calls agree on one rule per kind of input. Each case
marked "failed before" was accepted (or refused later, or differently) before its fix; the
others hold a rule every entry point already kept, so a change to one of them shows."""
import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.cache_write_quant import write_kv_quant
from pagedattn_lab.engine import EngineConfig, LLMEngine, LlamaModel, random_weights, tiny_config
from pagedattn_lab.engine.attention import StepAttention
from pagedattn_lab.engine.kv_store import KVStore

from .test_bad_input_new_apis import assert_same, snapshot
from .test_bad_input_run_paths import decode_problem, offset_view
from .test_prefill_wrapper import packed_problem


def bits(a):
    """bfloat16 values as their uint16 bits (the form CuPy holds them in)."""
    return a.astype(ml_dtypes.bfloat16).view(np.uint16)


# -- a NumPy uint16 array is integers, not bfloat16 bits: run refuses it as the one-shot does --

@pytest.mark.parametrize("which", ["q", "k_cache", "out"])
def test_planned_bf16_decode_refuses_numpy_uint16_like_the_one_shot(rng, which):
    """Failed before: a bfloat16 plan on the CPU ran NumPy uint16 arrays as bf16 bits, which
    paged_attention_decode and write_kv refuse (uint16 is a view only CuPy and torch need)."""
    q, k, v, tables, lens = decode_problem(rng)
    b16 = ml_dtypes.bfloat16
    args = dict(q=q.astype(b16), k_cache=k.astype(b16), v_cache=v.astype(b16),
                out=np.full(q.shape, np.nan, b16))
    args[which] = args[which].view(np.uint16)
    if which == "k_cache":
        args["v_cache"] = args["v_cache"].view(np.uint16)
    w = pl.BatchDecodeWrapper().plan(tables, lens, 2, 1, 32, 4, "bfloat16")
    before = snapshot(w)
    with pytest.raises(TypeError, match=rf"^{which}: the plan is for bfloat16: expected dtype "
                                        r"bfloat16, got uint16 \(bfloat16 bits\? uint16 holds "
                                        r"them on CuPy only; .*x\.view\(ml_dtypes\.bfloat16\)\)$"):
        w.run(**args)
    assert_same(before, w)
    assert np.isnan(args["out"].view(b16).astype(np.float32)).all()
    with pytest.raises(TypeError, match=r"^(q|k_cache): expected dtype .*got uint16"):
        pl.paged_attention_decode(bits(q), bits(k), bits(v), tables, lens)


def test_bf16_torch_tensors_still_run_on_the_cpu(rng):
    """torch.bfloat16 tensors come in as uint16 views: both decode forms still take them."""
    torch = pytest.importorskip("torch")
    q, k, v, tables, lens = decode_problem(rng)
    t = lambda a: torch.from_numpy(a).to(torch.bfloat16)  # noqa: E731
    b16 = lambda a: a.astype(ml_dtypes.bfloat16)  # noqa: E731
    want = pl.paged_attention_decode(b16(q), b16(k), b16(v), tables, lens).astype(np.float32)
    got = pl.paged_attention_decode(t(q), t(k), t(v), torch.from_numpy(tables),
                                    torch.from_numpy(lens))
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.float().numpy(), want)
    w = pl.BatchDecodeWrapper().plan(tables, lens, 2, 1, 32, 4, "bfloat16")
    np.testing.assert_array_equal(w.run(t(q), t(k), t(v)).float().numpy(), want)


# -- an offset view: refused by every attention call, as BatchDecodeWrapper.run does ----------

@pytest.mark.parametrize("which", ["q", "k_cache", "v_cache"])
@pytest.mark.parametrize("kernel", ["tiled", "naive"])
def test_one_shot_prefill_refuses_an_offset_view_like_decode(rng, which, kernel):
    """Failed before: paged_attention_prefill copied an array 4 bytes past a 16-byte boundary
    (a whole cache, on every call) where paged_attention_decode refuses it by name."""
    q, k, v, tables, lens = decode_problem(rng, dim=64)
    args = dict(q=rng.standard_normal((2, 7, 2, 64)).astype(np.float32), k_cache=k,
                v_cache=v)
    args[which] = offset_view(args[which].shape, np.float32, fill=0.5)
    out = np.full(args["q"].shape, np.nan, np.float32)
    match = rf"^{which}: expected data starting on a 16-byte boundary"
    with pytest.raises(ValueError, match=match):
        pl.paged_attention_prefill(args["q"], args["k_cache"], args["v_cache"], tables, lens,
                                   kernel=kernel, out=out)
    assert np.isnan(out).all()
    if which != "q":   # the same refusal from decode
        with pytest.raises(ValueError, match=match):
            pl.paged_attention_decode(q, args["k_cache"], args["v_cache"], tables, lens)


@pytest.mark.parametrize("which", ["q", "k_cache"])
def test_prefill_wrapper_refuses_an_offset_view(rng, which):
    """Failed before: BatchPrefillWrapper.run copied it at every layer's call."""
    q, k, v, indptr, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32,
                                                   np.float16)
    w = pl.BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16)
    args = dict(q=q, k_cache=k, v_cache=v)
    args[which] = offset_view(args[which].shape, np.float16, fill=0.5)
    out = np.full(q.shape, np.nan, np.float16)
    before = snapshot(w)
    with pytest.raises(ValueError, match=rf"^{which}: expected data starting on a 16-byte "
                                         r"boundary \(the kernels load 16 bytes at a time\)"):
        w.run(**args, out=out)
    assert_same(before, w)
    assert np.isnan(out).all()


# -- kv_dtype: the engine's parts check it by name when they are made --------------------------

@pytest.mark.parametrize("make", [
    lambda kv: StepAttention(2, 1, 16, 4, np.float32, np, kv_dtype=kv),
    lambda kv: KVStore(tiny_config(), 4, 4, np.float32, np, kv_dtype=kv),
], ids=["StepAttention", "KVStore"])
@pytest.mark.parametrize("kv_dtype", ["int9", "", False, np.float16])
def test_engine_parts_refuse_a_kv_dtype_typo_by_name(make, kv_dtype):
    """Failed before (StepAttention): a typo was kept and refused only at the first step's
    plan; KVStore refused it but kept an alias ("fp8") as given."""
    with pytest.raises(ValueError, match=r"^kv_dtype: expected one of \('int8', 'fp8_e4m3'\), "
                                         r"got .*accepted spellings"):
        make(kv_dtype)


@pytest.mark.parametrize("alias", ["fp8", "float8_e4m3fn", ml_dtypes.float8_e4m3fn])
def test_engine_parts_keep_the_canonical_kv_dtype_name(alias):
    """Failed before: both kept the alias as given (EngineConfig already stores the name)."""
    assert StepAttention(2, 1, 16, 4, np.float32, np, kv_dtype=alias).kv_dtype == "fp8_e4m3"
    store = KVStore(tiny_config(), 4, 4, np.float32, np, kv_dtype=alias)
    assert store.kv_dtype == "fp8_e4m3" and store.k[0].dtype == np.uint8


def test_step_attention_refuses_a_scale_scheme_typo():
    """Failed before: kept, and refused only by the first step's plan."""
    with pytest.raises(ValueError, match=r"^scale_scheme: expected one of \('static', "
                                         r"'per_token'\), got 'per-token'$"):
        StepAttention(2, 1, 16, 4, np.float32, np, kv_dtype="int8", scale_scheme="per-token")


# -- static KV scales: float32 only, refused by name at every entry point (as vLLM keeps them) --

F64 = np.ones(2)
F32 = np.ones(2, np.float32)


def _quant_decode_run(k_scale, v_scale):
    _, k, _, tables, lens = decode_problem(np.random.default_rng(0), kv_heads=2, dim=32)
    w = pl.BatchDecodeWrapper().plan(tables, lens, 2, 2, 32, 4, "float32", kv_dtype="int8",
                                     scale_scheme="static")
    codes = np.zeros(k.shape, np.int8)
    w.run(np.zeros((2, 2, 32), np.float32), codes, codes.copy(), k_scale=k_scale,
          v_scale=v_scale)


def _quant_prefill_run(k_scale, v_scale):
    q, k, _, indptr, tables, lens = packed_problem(np.random.default_rng(0), [20, 9], [5, 9],
                                                   8, 2, 2, 32, np.float16)
    w = pl.BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16,
                                      kv_dtype="int8")
    codes = np.zeros(k.shape, np.int8)
    w.run(q, codes, codes.copy(), k_scale=k_scale, v_scale=v_scale)


def _write(k_scale, v_scale):
    codes = np.zeros((2, 4, 2, 32), np.int8)
    rows = np.ones((1, 2, 32), np.float32)
    write_kv_quant(rows, rows, codes, codes.copy(), np.zeros(1, np.int64), "int8", "static",
                   k_scale, v_scale)


def _engine(k_scale, v_scale):
    cfg = tiny_config()
    model = LlamaModel(cfg, random_weights(cfg, seed=0), device="cpu")
    layers, heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    scales = [np.broadcast_to(s, (layers, heads)).copy() for s in (k_scale[:1], v_scale[:1])]
    LLMEngine(model, EngineConfig(num_pages=8, page_size=4, kv_dtype="int8",
                                  kv_scale_scheme="static"), kv_scales=scales)


@pytest.mark.parametrize("call, k_name", [
    (_quant_decode_run, "k_scale"), (_quant_prefill_run, "k_scale"), (_write, "k_scale"),
    (lambda ks, vs: pl.PagedKVCache(4, 4, 2, 32, kv_dtype="int8", k_scale=ks, v_scale=vs),
     "k_scale"),
    (_engine, r"kv_scales\[0\]"),
], ids=["decode run", "prefill run", "write_kv_quant", "PagedKVCache", "LLMEngine"])
def test_float64_static_scales_are_refused_by_name_everywhere(call, k_name):
    """The rule kept by every entry point: no silent cast (a float64 array is no kernel
    argument; vLLM's k_scale / v_scale are float32)."""
    with pytest.raises(TypeError, match=rf"^{k_name}: expected (dtype )?float32"):
        call(F64, F32)
    call(F32, F32)   # the same call with float32 scales runs
