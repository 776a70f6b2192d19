"""Bad input to the APIs added for the plan/run wrappers, compressed pages and the serving
engine, as an attacker would try it: each probe asserts the exception type, that the message
names the argument, and that nothing it could touch changed (tables, pages, scales, the
wrapper's plan, the engine's queue). Each probe here failed before its fix (wrong exception,
no argument named, state changed, or silently accepted)."""
import json
import struct

import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper, BatchPrefillWrapper
from pagedattn_lab.cache import PagedKVCache
from pagedattn_lab.cache_write import slot_mapping, write_kv
from pagedattn_lab.cache_write_quant import write_kv_quant
from pagedattn_lab.engine import (EngineConfig, LlamaModel, LLMEngine, ModelConfig,
                                  SamplingParams, load_checkpoint, random_weights, tiny_config)
from pagedattn_lab.engine.weights import write_safetensors
from pagedattn_lab.reference import reference_prefill_packed
from pagedattn_lab.wrappers import from_csr

TABLES = np.array([[0, 1], [2, -1]], np.int32)
LENS = np.array([5, 3], np.int32)


def snapshot(obj) -> dict:
    """The attributes of a wrapper (arrays copied), to compare after a refused call."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(obj).items()}


def assert_same(before: dict, obj) -> None:
    after = vars(obj)
    assert after.keys() == before.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(after[k], v, err_msg=k)
        else:
            assert after[k] is v, k


def assert_arrays_unchanged(arrays, saved):
    for a, s in zip(arrays, saved):
        np.testing.assert_array_equal(a, s)


# ---- BatchDecodeWrapper ------------------------------------------------------------------

@pytest.mark.parametrize("bad_q", [None, [[0.0]], 3.0], ids=["None", "list", "float"])
def test_decode_run_refuses_a_q_that_is_no_array(bad_q):
    w = BatchDecodeWrapper().plan(TABLES, LENS, 4, 2, 16, 4, "float16")
    k = np.zeros((3, 4, 2, 16), np.float16)
    w._out[...] = 7   # the plan's buffer must not be written
    before = snapshot(w)
    with pytest.raises(TypeError, match=r"^q: .*expected a NumPy array"):
        w.run(bad_q, k, k.copy())
    assert_same(before, w)


# ---- to_csr / from_csr -------------------------------------------------------------------

def test_from_csr_refuses_a_negative_page_id():
    indptr, indices = np.array([0, 2, 3], np.int32), np.array([4, -5, 1], np.int32)
    last = np.array([3, 1], np.int32)
    saved = [a.copy() for a in (indptr, indices, last)]
    with pytest.raises(ValueError, match=r"^indices\[1\]: expected a page id >= 0, got -5"):
        from_csr(indptr, indices, last, 4)
    assert_arrays_unchanged((indptr, indices, last), saved)


# ---- slot_mapping ------------------------------------------------------------------------

Q_LENS = np.array([2, 1], np.int32)


@pytest.mark.parametrize("tables, lens, q_lens, page_size, exc, match", [
    (TABLES, LENS, Q_LENS, 0, ValueError, r"^page_size: expected an int >= 1, got 0"),
    (TABLES, LENS, Q_LENS, 4.0, TypeError, r"^page_size: expected an int"),
    (TABLES.astype(np.float64), LENS, Q_LENS, 4, TypeError,
     r"^block_tables: expected an integer dtype, got float64"),
    (TABLES.astype(np.int64) + 2**32, LENS, Q_LENS, 4, ValueError,
     r"^block_tables\[0, 0\]: value 4294967296 does not fit int32"),
    (TABLES.tolist(), LENS, Q_LENS, 4, TypeError, r"^block_tables: expected a NumPy"),
    (np.array([[-1, 1], [2, -1]], np.int32), LENS, Q_LENS, 4, ValueError,
     r"^block_tables\[0, 0\]: page id -1 is out of range"),
    (TABLES, np.array([9, 3], np.int32), Q_LENS, 4, ValueError, r"^seq_lens\[0\]: 9 tokens"),
    (TABLES, LENS, np.array([1.5, 1.0]), 4, TypeError, r"^q_lens: expected an integer dtype"),
    (TABLES, LENS, np.array([1], np.int32), 4, ValueError, r"^q_lens: expected 2 entries"),
], ids=["page0", "page-float", "tables-f64", "tables-past-int32", "tables-list", "page-minus-1",
        "len-over-capacity", "q_lens-float", "q_lens-short"])
def test_slot_mapping_refuses(tables, lens, q_lens, page_size, exc, match):
    inputs = [a for a in (tables, lens, q_lens) if isinstance(a, np.ndarray)]
    saved = [a.copy() for a in inputs]
    with pytest.raises(exc, match=match):
        slot_mapping(tables, lens, q_lens, page_size)
    assert_arrays_unchanged(inputs, saved)


# ---- write_kv / write_kv_quant: aliasing -------------------------------------------------

def test_write_kv_refuses_rows_inside_the_cache_and_one_cache_for_k_and_v():
    rng = np.random.default_rng(0)
    k_cache = rng.standard_normal((3, 4, 2, 16)).astype(np.float32)
    v_cache = rng.standard_normal((3, 4, 2, 16)).astype(np.float32)
    saved = (k_cache.copy(), v_cache.copy())
    slots = np.array([1, 2], np.int64)
    rows = k_cache[0, :2]   # slots 0 and 1: row 1 would read slot 1 while row 0 writes it
    with pytest.raises(ValueError, match=r"^k_cache: shares memory with k "):
        write_kv(rows, rows.copy(), k_cache, v_cache, slots)
    new = np.ones((2, 2, 16), np.float32)
    with pytest.raises(ValueError, match=r"^v_cache: shares memory with k_cache"):
        write_kv(new, new, k_cache, k_cache, slots)
    assert_arrays_unchanged((k_cache, v_cache), saved)


def quant_cache(kv_dtype="int8"):
    storage = np.int8 if kv_dtype == "int8" else np.uint8
    return np.zeros((3, 4, 2, 16), storage), np.zeros((3, 4, 2, 16), storage)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(kv_dtype=["int8"]), ValueError, r"^kv_dtype: expected one of"),
    (dict(scale_scheme=["static"]), ValueError, r"^scale_scheme: expected one of"),
    (dict(k_scale=np.array([1e38, 1], np.float32)), ValueError,
     r"^k_scale: expected scales <= .*k_scale\[0\]"),
    (dict(v_scale=np.array([1, 1e37], np.float32), kv_dtype="fp8_e4m3"), ValueError,
     r"^v_scale: expected scales <= .*v_scale\[1\]"),
], ids=["kv_dtype-list", "scheme-list", "k_scale-huge", "v_scale-huge-fp8"])
def test_write_kv_quant_refuses(kwargs, exc, match):
    kv_dtype = kwargs.pop("kv_dtype", "int8")
    k_cache, v_cache = quant_cache("int8" if isinstance(kv_dtype, list) else kv_dtype)
    args = dict(scale_scheme="static", k_scale=np.ones(2, np.float32),
                v_scale=np.ones(2, np.float32)) | kwargs
    rows = np.ones((2, 2, 16), np.float32)
    saved = (k_cache.copy(), v_cache.copy())
    with pytest.raises(exc, match=match):
        write_kv_quant(rows, rows, k_cache, v_cache, np.array([0, 1], np.int64), kv_dtype,
                       args["scale_scheme"], k_scale=args["k_scale"], v_scale=args["v_scale"])
    assert_arrays_unchanged((k_cache, v_cache), saved)


def test_write_kv_quant_refuses_one_array_for_both_per_token_scales():
    k_cache, v_cache = quant_cache()
    scales = np.full((3, 4, 2), 5.0, np.float32)
    saved = (k_cache.copy(), v_cache.copy(), scales.copy())
    rows = np.ones((2, 2, 16), np.float32)
    with pytest.raises(ValueError, match=r"^v_scale: shares memory with k_scale"):
        write_kv_quant(rows, rows, k_cache, v_cache, np.array([0, 1], np.int64), "int8",
                       "per_token", k_scale=scales, v_scale=scales)
    assert_arrays_unchanged((k_cache, v_cache, scales), saved)


# ---- BatchPrefillWrapper -----------------------------------------------------------------

INDPTR = np.array([0, 2, 3], np.int32)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(warps=2.0), TypeError, r"^warps: expected an int"),
    (dict(warps=True), TypeError, r"^warps: expected an int"),
    (dict(causal="no"), TypeError, r"^causal: expected True or False, got 'no'"),
    (dict(causal=None), TypeError, r"^causal: expected True or False"),
    (dict(kv_dtype=["int8"]), ValueError, r"^kv_dtype: expected one of"),
    (dict(dtype="bogus"), TypeError, r"^dtype: expected float16 or bfloat16, got 'bogus'"),
    (dict(scale_scheme="bogus"), ValueError, r"^scale_scheme: expected one of"),
], ids=["warps-float", "warps-bool", "causal-str", "causal-None", "kv_dtype-list",
        "dtype-bogus", "scheme-without-kv_dtype"])
def test_prefill_plan_refuses_and_keeps_the_previous_plan(kwargs, exc, match):
    w = BatchPrefillWrapper().plan(INDPTR, TABLES, LENS, 4, 2, 32, 4, np.float16)
    before = snapshot(w)
    args = dict(dtype=np.float16) | kwargs
    dtype = args.pop("dtype")
    with pytest.raises(exc, match=match):
        w.plan(INDPTR, TABLES, LENS, 4, 2, 32, 4, dtype, **args)
    assert_same(before, w)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_prefill_run_refuses_a_static_scale_whose_codes_overflow(kv_dtype):
    w = BatchPrefillWrapper().plan(INDPTR, TABLES, LENS, 4, 2, 32, 4, np.float16,
                                   kv_dtype=kv_dtype)
    k_cache, v_cache = (np.zeros((3, 4, 2, 32), np.int8 if kv_dtype == "int8" else np.uint8)
                        for _ in range(2))
    q = np.ones((3, 4, 32), np.float16)
    out = np.full(q.shape, np.nan, np.float16)
    k_scale, v_scale = np.array([1.0, 1e38], np.float32), np.ones(2, np.float32)
    before = snapshot(w)
    with pytest.raises(ValueError, match=r"^k_scale: expected scales <= .*k_scale\[1\]"):
        w.run(q, k_cache, v_cache, out=out, k_scale=k_scale, v_scale=v_scale)
    assert np.isnan(out).all()
    assert_same(before, w)


# ---- PagedKVCache(kv_dtype=...) ----------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dtype="bogus"), TypeError,
     r"^dtype: expected float32, float16 or bfloat16, got 'bogus'"),
    (dict(kv_dtype="int8", k_scale=np.array([1e37, 1], np.float32),
          v_scale=np.ones(2, np.float32)), ValueError, r"^k_scale: expected scales <="),
    (dict(kv_dtype=["int8"]), ValueError, r"^kv_dtype: expected one of"),
], ids=["dtype-bogus", "scale-huge",
        "kv_dtype-list"])
def test_paged_kv_cache_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PagedKVCache(4, 4, 2, 16, device="cpu", **kwargs)


# ---- reference_prefill_packed ------------------------------------------------------------

def test_reference_prefill_packed_refuses_fractional_offsets():
    k_cache = np.zeros((3, 4, 2, 16), np.float32)
    with pytest.raises(TypeError, match=r"^qo_indptr: expected integer offsets, got dtype float64"):
        reference_prefill_packed(np.zeros((3, 4, 16), np.float32), k_cache, k_cache.copy(),
                                 np.array([0, 1.5, 3]), TABLES, LENS)


# ---- the serving engine ------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights():
    return random_weights(tiny_config(), seed=0)


def engine(weights):
    return LLMEngine(LlamaModel(tiny_config(), weights), EngineConfig(num_pages=64, page_size=8))


def engine_state(e):
    return (e.has_unfinished(), e._next_rid, e.stats.prompt_tokens, e.kv.pool.num_free)


@pytest.mark.parametrize("prompts, params, exc, match", [
    ([[1, 2], [999]], None, ValueError, r"^prompts\[1\]\[0\]: token id 999 is outside"),
    ([[1, 2], []], None, ValueError, r"^prompts\[1\]: expected at least one token"),
    ([[1.7, 2.2]], None, TypeError, r"^prompts\[0\]\[0\]: expected an integer token id, got 1.7"),
    ([["1", "2"]], None, TypeError, r"^prompts\[0\]\[0\]: expected an integer token id"),
    ([[True, 2]], None, TypeError, r"^prompts\[0\]\[0\]: expected an integer token id"),
    ([1, 2, 3], None, TypeError, r"^prompts\[0\]: expected a list of token ids, got 1"),
    (["hello"], None, TypeError, r"^prompts\[0\]: expected a list of token ids, got 'hello'"),
    ([None], None, TypeError, r"^prompts\[0\]: expected a list of token ids, got None"),
    (5, None, TypeError, r"^prompts: expected a list of prompts"),
    ([[1, 2]], {"max_tokens": 2}, TypeError, r"^params: expected a SamplingParams"),
    ([[1, 2], [3]], [SamplingParams(), {"max_tokens": 2}], TypeError,
     r"^params\[1\]: expected a SamplingParams"),
], ids=["second-out-of-vocab", "second-empty", "float-ids", "str-ids", "bool-ids", "flat-list",
        "str-prompt", "None-prompt", "int-prompts", "params-dict", "params-list-dict"])
def test_generate_refuses_before_queueing_anything(weights, prompts, params, exc, match):
    e = engine(weights)
    before = engine_state(e)
    with pytest.raises(exc, match=match):
        e.generate(prompts, params)
    assert engine_state(e) == before
    assert [o.output_ids for o in e.generate([[1, 2]], SamplingParams(max_tokens=1))]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(seed=-1), ValueError, r"^seed: expected an int >= 0, got -1"),
    (dict(seed=1.5), TypeError, r"^seed: expected an int"),
    (dict(temperature=float("inf")), ValueError, r"^temperature: expected a finite number"),
    (dict(temperature=True), TypeError, r"^temperature: expected a number"),
    (dict(temperature="1"), TypeError, r"^temperature: expected a number"),
], ids=["seed-negative", "seed-float", "temperature-inf", "temperature-bool", "temperature-str"])
def test_sampling_params_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(watermark="0.1"), TypeError, r"^watermark: expected a fraction"),
    (dict(seed=1.5), TypeError, r"^seed: expected an int"),
    (dict(seed=-3), ValueError, r"^seed: expected an int >= 0"),
], ids=["watermark-str", "seed-float", "seed-negative"])
def test_engine_config_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EngineConfig(**kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(rms_norm_eps=-1.0), ValueError, r"^rms_norm_eps: expected a finite number > 0"),
    (dict(rms_norm_eps=float("nan")), ValueError, r"^rms_norm_eps: expected a finite number"),
    (dict(rope_theta=0.0), ValueError, r"^rope_theta: expected a finite number > 0"),
    (dict(rope_theta="1e4"), TypeError, r"^rope_theta: expected a positive number"),
    (dict(rope_scaling="linear"), TypeError, r"^rope_scaling: expected a dict or None"),
    (dict(rope_scaling={"rope_type": "linear"}), ValueError, r"^rope_scaling: .* needs a 'factor'"),
], ids=["eps-negative", "eps-nan", "theta-zero", "theta-str", "scaling-str", "scaling-no-factor"])
def test_model_config_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("hf, exc, match", [
    ({"hidden_size": 64}, ValueError, r"^config: missing 'vocab_size'"),
    ([1], TypeError, r"^config: expected a dict"),
], ids=["missing-sizes", "not-a-dict"])
def test_model_config_from_hf_refuses(hf, exc, match):
    with pytest.raises(exc, match=match):
        ModelConfig.from_hf(hf)


@pytest.mark.parametrize("bad, exc, match", [
    (np.ones(64, np.int32), TypeError, r"^weights\['model.norm.weight'\]: expected a floating"),
    ([1.0] * 64, TypeError, r"^weights\['model.norm.weight'\]: expected a NumPy or CuPy array"),
], ids=["int-dtype", "list"])
def test_model_refuses_weights_of_the_wrong_kind(weights, bad, exc, match):
    with pytest.raises(exc, match=match):
        LlamaModel(tiny_config(), {**weights, "model.norm.weight": bad})


def write_checkpoint(directory, header_bytes: bytes):
    (directory / "config.json").write_text(json.dumps(tiny_config().to_hf()))
    (directory / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header_bytes)) + header_bytes + b"\0" * 256)


@pytest.mark.parametrize("header, match", [
    (b"{{{{{", r"the header is not valid JSON"),
    (json.dumps([1, 2]).encode(), r"the header is a JSON list"),
    (json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [64]}}).encode(),
     r"tensor 'model.norm.weight' has header entry .* expected the keys"),
    (json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [-64],
                                       "data_offsets": [0, 0]}}).encode(),
     r"tensor 'model.norm.weight' has shape \[-64\]"),
], ids=["bad-json", "list-header", "no-offsets", "negative-shape"])
def test_load_checkpoint_refuses_a_malformed_safetensors_header(tmp_path, header, match):
    write_checkpoint(tmp_path, header)
    with pytest.raises(ValueError, match=r"model\.safetensors: " + match):
        load_checkpoint(tmp_path)


def test_load_checkpoint_refuses_integer_weights(tmp_path, weights):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_hf()))
    write_safetensors(tmp_path / "model.safetensors",
                      {**weights, "model.norm.weight": np.ones(64, np.int32)})
    with pytest.raises(TypeError, match=r"^weights\['model.norm.weight'\]: expected a floating"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("make, exc, match", [
    (lambda w: LLMEngine(LlamaModel(tiny_config(), w), {"num_pages": 4}), TypeError,
     r"^config: expected an EngineConfig"),
    (lambda w: LLMEngine("model"), TypeError, r"^model: expected a LlamaModel"),
    (lambda w: LlamaModel({"hidden_size": 64}, w), TypeError, r"^config: expected a ModelConfig"),
    (lambda w: LlamaModel(tiny_config(), w, dtype="bogus"), TypeError,
     r"^dtype: expected float32 or float16, got 'bogus'"),
], ids=["engine-config-dict", "engine-model-str", "model-config-dict", "model-dtype-bogus"])
def test_engine_and_model_constructors_refuse(weights, make, exc, match):
    with pytest.raises(exc, match=match):
        make(weights)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: EngineConfig(enable_prefix_caching="no"), TypeError,
     r"^enable_prefix_caching: expected True or False, got 'no'"),
    (lambda: SamplingParams(ignore_eos="yes"), TypeError, r"^ignore_eos: expected True or False"),
    (lambda: SamplingParams(return_logits=None), TypeError,
     r"^return_logits: expected True or False"),
    (lambda: ModelConfig(tie_word_embeddings="false"), TypeError,
     r"^tie_word_embeddings: expected True or False"),
    (lambda: ModelConfig(eos_token_id=1000), ValueError, r"^eos_token_id: expected an int <= 127"),
    (lambda: ModelConfig(bos_token_id=-1), ValueError, r"^bos_token_id: expected an int >= 0"),
], ids=["prefix-caching-str", "ignore_eos-str", "return_logits-None", "tie-str", "eos-past-vocab",
        "bos-negative"])
def test_engine_flags_and_special_tokens_are_checked(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
