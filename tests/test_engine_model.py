"""The engine's model against the dense float64 forward; weights and checkpoints.

The dense forward (`pagedattn_lab.engine.dense`) shares no code with the paged model but the
RoPE frequency table; transformers itself is the oracle in test_engine_hf.py (needs torch).
"""
import json
import struct

import numpy as np
import pytest

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, ModelConfig,
                                  SamplingParams, load_checkpoint, random_weights,
                                  save_checkpoint, tiny_config)
from pagedattn_lab.engine.dense import dense_generate, dense_logits
from pagedattn_lab.engine.weights import read_safetensors, write_safetensors

LOGIT_TOL = 1e-4   # float32 engine vs float64 dense; observed ~1e-6
PROMPT_LENS = (1, 3, 8, 17, 30)   # one token, inside a page, a page exactly, several pages
DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


def _prompts(rng, vocab, lens=PROMPT_LENS):
    return [rng.integers(0, vocab, n).tolist() for n in lens]


@pytest.mark.parametrize("config, engine_kw", [
    # head_dim 16: prefill chunks on the naive kernel; a budget that chunks the prompts
    (tiny_config(), dict(page_size=8, max_num_batched_tokens=20)),
    # head_dim 64 (tiled prefill kernel), MQA, tied embeddings, page size 5 (not a power of two)
    (tiny_config(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                 tie_word_embeddings=True), dict(page_size=5, max_num_batched_tokens=64)),
])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_matches_dense_forward(rng, config, engine_kw, device):
    weights = random_weights(config, seed=1)
    prompts = _prompts(rng, config.vocab_size)
    engine = LLMEngine(LlamaModel(config, weights, device=device),
                       EngineConfig(num_pages=64, **engine_kw))
    outs = engine.generate(prompts, SamplingParams(max_tokens=8, return_logits=True))
    assert engine.summary()["max_running"] == len(prompts), "the prompts must share batches"
    for prompt, out in zip(prompts, outs):
        tokens, logits = dense_generate(config, weights, prompt, 8)
        assert out.output_ids == tokens, f"prompt of {len(prompt)} tokens"
        assert np.abs(out.logits - logits).max() < LOGIT_TOL, f"prompt of {len(prompt)} tokens"


def test_float16_model_stays_close(rng):
    config = tiny_config()
    weights = random_weights(config, seed=1)
    prompts = _prompts(rng, config.vocab_size, (4, 19))
    engine = LLMEngine(LlamaModel(config, weights, dtype=np.float16, device="cpu"),
                       EngineConfig(num_pages=16, page_size=8))
    for prompt, out in zip(prompts, engine.generate(prompts, SamplingParams(
            max_tokens=1, return_logits=True))):
        want = dense_logits(config, weights, prompt)[-1]
        assert np.abs(out.logits[0] - want).max() < 0.05 * np.abs(want).max()


def test_end_of_sequence_stops_a_request(rng):
    config = tiny_config()
    weights = random_weights(config, seed=1)
    prompt = _prompts(rng, config.vocab_size, (6,))[0]
    free_run, _ = dense_generate(config, weights, prompt, 6)
    eos = free_run[2]
    config = tiny_config(eos_token_id=eos)
    engine = LLMEngine(LlamaModel(config, weights, device="cpu"), EngineConfig(num_pages=8))
    out, = engine.generate([prompt], SamplingParams(max_tokens=6))
    assert out.output_ids == free_run[:free_run.index(eos) + 1] and out.finish_reason == "stop"
    out, = engine.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True))
    assert out.output_ids == free_run and out.finish_reason == "length"


def test_any_of_several_end_tokens_stops_a_request(rng):
    """Llama 3.1 instruct's config.json lists three end tokens ([128001, 128008, 128009]) and
    transformers' generate stops at any of them: so must the engine and the dense reference.
    The end ids: one the model never emits, then tokens the greedy runs reach (the second id
    stops the first prompt, the third the second prompt; the third prompt meets none)."""
    config = tiny_config()
    weights = random_weights(config, seed=1)
    prompts = _prompts(rng, config.vocab_size, (6, 11, 3))
    runs = [dense_generate(config, weights, prompt, 8)[0] for prompt in prompts]
    never = next(t for t in range(config.vocab_size) if all(t not in run for run in runs))
    ends = [never, runs[0][3], runs[1][2]]
    config = ModelConfig.from_hf(config.to_hf() | {"eos_token_id": ends})
    engine = LLMEngine(LlamaModel(config, weights, device="cpu"),
                       EngineConfig(num_pages=16, page_size=4, max_num_batched_tokens=8))
    outs = engine.generate(prompts, SamplingParams(max_tokens=8))
    assert [(o.output_ids, o.finish_reason) for o in outs] == [
        (runs[0][:4], "stop"), (runs[1][:3], "stop"), (runs[2], "length")]
    assert [dense_generate(config, weights, p, 8)[0] for p in prompts] == \
        [o.output_ids for o in outs]
    outs = engine.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert [(o.output_ids, o.finish_reason) for o in outs] == [(r, "length") for r in runs]
    assert config.eos_token_ids == tuple(ends)


# -- weights and checkpoints ----------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    config = tiny_config(rope_scaling={"rope_type": "linear", "factor": 2.0}, eos_token_id=3)
    weights = random_weights(config, seed=2)
    save_checkpoint(tmp_path, config, weights)
    got_config, got = load_checkpoint(tmp_path)
    assert got_config == config
    assert got.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(got[name], weights[name])


def test_the_end_tokens_of_generation_config_json_are_the_ones_used(tmp_path):
    """transformers' generate stops at generation_config.json's end tokens where that file
    gives them (Llama 3.1 instruct lists three there, config.json may name one)."""
    config = tiny_config(eos_token_id=3)
    save_checkpoint(tmp_path, config, random_weights(config, seed=2))
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [3, 7, 9]}')
    assert load_checkpoint(tmp_path)[0].eos_token_ids == (3, 7, 9)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [3, 7, 900]}')
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id\[2\]: "
                                         r"expected an int <= 127"):
        load_checkpoint(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"do_sample": false}')
    assert load_checkpoint(tmp_path)[0].eos_token_ids == (3,)


@pytest.mark.parametrize("name, text, message", [
    ("generation_config.json", '{"eos_token_id": [3,', r"generation_config.json: not valid JSON"),
    ("generation_config.json", '[3, 7]', r"generation_config.json: expected a JSON object, "
                                         r"got a JSON list"),
    ("config.json", '"llama"', r"config.json: expected a JSON object, got a JSON str"),
    ("model.safetensors.index.json", '{"metadata": {}}',
     r"model.safetensors.index.json: expected a 'weight_map' object"),
])
def test_a_checkpoint_json_file_that_is_not_the_expected_object_is_refused_naming_it(
        tmp_path, name, text, message):
    """json's own errors name a line and column but not the file, and a list where an object
    belongs failed with "'list' object has no attribute 'get'"."""
    config = tiny_config(eos_token_id=3)
    save_checkpoint(tmp_path, config, random_weights(config, seed=2))
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path)


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    weights = random_weights(config, seed=2)
    names = sorted(weights)
    bf16 = {n: (weights[n].view(np.uint32) >> 16).astype(np.uint16) for n in names}
    halves = [names[:4], names[4:]]
    for i, part in enumerate(halves):
        _write_bf16(tmp_path / f"part{i}.safetensors", {n: bf16[n] for n in part})
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f"part{i}.safetensors" for i, part in enumerate(halves) for n in part}}))
    _, got = load_checkpoint(tmp_path)
    for n in names:   # bfloat16 -> float32 is exact: the low 16 bits are zero
        np.testing.assert_array_equal(got[n], (bf16[n].astype(np.uint32) << 16).view(np.float32))


def _write_bf16(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        blob = arr.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_bad_checkpoints_are_named(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    weights = random_weights(config, seed=2)
    del weights["model.norm.weight"]
    with pytest.raises(ValueError, match="missing 'model.norm.weight'"):
        save_checkpoint(tmp_path, config, weights)
    write_safetensors(tmp_path / "x.safetensors", {"a": np.arange(6, dtype=np.float32)})
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="outside the file"):
        read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (dict(head_dim=15), "head_dim"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope type 'yarn'"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_model_config_refuses(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ModelConfig(**kwargs)


def test_packed_prefill_matches_the_padded_path_and_the_oracle():
    """float16, head_dim 32: prefill chunks go through BatchPrefillWrapper (packed queries,
    bottom-right causal, one plan per step for both layers). Chunked prompts (budget 24),
    a prefix hit and decodes in one batch; the padded path and the float64 oracle agree."""
    from pagedattn_lab.engine.attention import StepAttention
    config = tiny_config(hidden_size=128, intermediate_size=128)
    weights = random_weights(config, seed=2)
    model = LlamaModel(config, weights, dtype=np.float16, device="cpu")
    rng = np.random.default_rng(5)
    shared = rng.integers(0, 128, 16).tolist()
    prompts = [rng.integers(0, 128, 33).tolist(), rng.integers(0, 128, 5).tolist(),
               shared + [1, 2, 3], shared + [4], rng.integers(0, 128, 2).tolist()]
    params = SamplingParams(max_tokens=3, return_logits=True, ignore_eos=True)
    runs = {}
    for packed in (True, False):
        engine = LLMEngine(model, EngineConfig(num_pages=32, page_size=8,
                                               max_num_batched_tokens=24))
        assert engine.attention.packed                     # chosen by default here
        engine.attention = StepAttention(4, 2, 32, 8, np.float16, np, packed_prefill=packed)
        runs[packed] = engine.generate(prompts, params)
        assert engine.summary()["prefix_hit_rate"] > 0
    for prompt, a, b in zip(prompts, runs[True], runs[False]):
        scale = np.abs(b.logits).max()
        assert np.abs(a.logits - b.logits).max() < 0.01 * scale, f"prompt of {len(prompt)}"
        want = dense_logits(config, weights, prompt)[-1]
        assert np.abs(a.logits[0] - want).max() < 0.05 * np.abs(want).max()


def test_packed_prefill_refuses_what_it_cannot_run():
    from pagedattn_lab.engine.attention import StepAttention
    with pytest.raises(ValueError, match="packed_prefill"):
        StepAttention(4, 2, 16, 8, np.float16, np, packed_prefill=True)
    with pytest.raises(ValueError, match="packed_prefill"):
        StepAttention(4, 2, 32, 8, np.float32, np, packed_prefill=True)
    assert not StepAttention(4, 2, 32, 8, np.float32, np).packed


# -- RoPE scaling, checkpoint refusals, slots left unwritten ---------------------------------

def _hf_llama3_inv_freq(inv, factor, low, high, old):
    """transformers' _compute_llama3_parameters, written out per frequency."""
    out = []
    for freq in inv.astype(np.float64):
        wavelen = 2 * np.pi / freq
        if wavelen < old / high:
            out.append(freq)
        elif wavelen > old / low:
            out.append(freq / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def test_rope_scaling_linear_and_llama3():
    from pagedattn_lab.engine.model import rope_inv_freq
    base = tiny_config(rope_theta=500.0)
    inv = rope_inv_freq(base)
    linear = rope_inv_freq(tiny_config(rope_theta=500.0,
                                       rope_scaling={"rope_type": "linear", "factor": 4.0}))
    np.testing.assert_allclose(linear, inv / 4, rtol=1e-6)
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    got = rope_inv_freq(tiny_config(rope_theta=500.0, rope_scaling=scaling))
    want = _hf_llama3_inv_freq(inv, 8.0, 1.0, 4.0, 32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got == inv).any() and (got == inv / np.float32(8)).any() and \
        ((got != inv) & (got != inv / np.float32(8))).any(), "expected all three bands"


def test_bad_weights_and_safetensors_are_named(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    with pytest.raises(TypeError, match=r"^weights: expected a dict of arrays by parameter "
                                        r"name, got list$"):
        LlamaModel(config, [], device="cpu")
    weights = random_weights(config, seed=2)
    weights["model.norm.weight"] = weights["model.norm.weight"][:-1]
    with pytest.raises(ValueError, match=r"^weights\['model\.norm\.weight'\]: expected shape "
                                         rf"\({config.hidden_size},\), got "
                                         rf"\({config.hidden_size - 1},\)$"):
        LlamaModel(config, weights, device="cpu")
    (tmp_path / "short.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match=r"short\.safetensors: not a safetensors file \(shorter "
                                         r"than its 8-byte header size\)$"):
        read_safetensors(tmp_path / "short.safetensors")
    for entry, match in [
        ({"dtype": "C64", "shape": [1], "data_offsets": [0, 8]},
         r"tensor 'a' has dtype C64, which is not supported \(F64, F32, F16, BF16"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
         r"tensor 'a' of shape \(3,\) and dtype F32 needs 12 bytes, its offsets give 8$"),
    ]:
        text = json.dumps({"a": entry}).encode()
        (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(text)) + text +
                                                   bytes(8))
        with pytest.raises(ValueError, match=match):
            read_safetensors(tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match=r"^tensors\['c'\]: dtype complex64 cannot be stored "
                                        r"\(safetensors here takes float64, float32"):
        write_safetensors(tmp_path / "c.safetensors", {"c": np.zeros(2, np.complex64)})
    assert not (tmp_path / "c.safetensors").exists()
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    with pytest.raises(FileNotFoundError, match=r"^directory: no model\.safetensors or "
                                                r"model\.safetensors\.index\.json in "):
        load_checkpoint(tmp_path)


def test_empty_tensors_round_trip(tmp_path):
    write_safetensors(tmp_path / "e.safetensors", {"e": np.zeros((0, 3), np.float16)})
    got = read_safetensors(tmp_path / "e.safetensors")["e"]
    assert got.shape == (0, 3) and got.dtype == np.float16
    _write_bf16(tmp_path / "b.safetensors", {"b": np.zeros((2, 0), np.uint16)})
    got = read_safetensors(tmp_path / "b.safetensors")["b"]
    assert got.shape == (2, 0) and got.dtype == np.float32   # bfloat16 widens, even when empty


def test_write_kv_skips_the_slots_of_tokens_already_cached():
    """SKIP_SLOT (-1) in the slot mapping: that token's K/V is not written (the fused RoPE
    kernel's convention); the others land in their slots."""
    from pagedattn_lab.engine.attention import SKIP_SLOT, StepAttention
    att = StepAttention(2, 1, 16, 4, np.float32, np)
    att.plan([3], [3], [[1]], np.array([4, SKIP_SLOT, 6]))
    assert not att.write_all
    k_cache = np.full((2, 4, 1, 16), np.nan, np.float32)
    v_cache = k_cache.copy()
    rng = np.random.default_rng(0)
    k, v = (rng.standard_normal((3, 1, 16)).astype(np.float32) for _ in range(2))
    att.write_kv(k_cache, v_cache, k, v)
    np.testing.assert_array_equal(k_cache[1, [0, 2]], k[[0, 2]])
    np.testing.assert_array_equal(v_cache[1, [0, 2]], v[[0, 2]])
    assert np.isnan(k_cache[1, [1, 3]]).all() and np.isnan(k_cache[0]).all()
