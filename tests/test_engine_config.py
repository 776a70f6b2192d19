"""ModelConfig and EngineConfig: a Hugging Face config.json read field by field, and every
refusal naming its field and the reason before anything is built."""
import json

import numpy as np
import pytest

from pagedattn_lab.engine import EngineConfig, ModelConfig, tiny_config
from pagedattn_lab.engine.config import llama_1b_config


def _hf(**changes):
    """A minimal Llama config.json (tiny_config's sizes), with `changes` (None: drop the key)."""
    hf = tiny_config().to_hf()
    for key, value in changes.items():
        if value is None:
            hf.pop(key, None)
        else:
            hf[key] = value
    return hf


@pytest.mark.parametrize("hf, exc, match", [
    (_hf(model_type="mistral"), ValueError, r"^config: expected model_type 'llama', got "
                                            r"'mistral'$"),
    (_hf(model_type="qwen2"), ValueError, r"^config: expected model_type 'llama', got 'qwen2'"),
    (_hf(attention_bias=True), ValueError,
     r"^config: attention_bias / mlp_bias checkpoints are not supported"),
    (_hf(mlp_bias=True), ValueError, r"^config: attention_bias / mlp_bias"),
    (_hf(intermediate_size=None, num_hidden_layers=None), ValueError,
     r"^config: missing 'intermediate_size', 'num_hidden_layers' \(a Llama config.json has "
     r"them all\)$"),
    (_hf(rope_scaling={"rope_type": "yarn", "factor": 4.0}), ValueError,
     r"^rope_scaling: rope type 'yarn' is not supported; supported: \('default', 'linear', "
     r"'llama3'\)"),
    (_hf(rope_scaling={"type": "dynamic", "factor": 2.0}), ValueError,
     r"^rope_scaling: rope type 'dynamic' is not supported"),
    (_hf(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0}),
     ValueError, r"^rope_scaling\['low_freq_factor'\]: expected a finite number > 0, got 0.0"),
    (_hf(rope_scaling={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": -4.0}),
     ValueError, r"^rope_scaling\['high_freq_factor'\]: expected a finite number > 0"),
    (_hf(rope_theta=None, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4,
                                           "factor": 4.0}),
     ValueError, r"^rope_scaling: rope type 'yarn' is not supported"),
    (_hf(hidden_size=60, num_attention_heads=8, num_key_value_heads=2, head_dim=None),
     ValueError,
     r"^head_dim: not given and hidden_size 60 is not a multiple of num_attention_heads 8$"),
    (_hf(eos_token_id=[128, 2]), ValueError,
     r"^eos_token_id\[0\]: expected an int <= 127, got 128$"),
    (_hf(eos_token_id=[1, 2, 128]), ValueError,   # a later id is checked too, not dropped
     r"^eos_token_id\[2\]: expected an int <= 127, got 128$"),
    (_hf(eos_token_id=[1, -2]), ValueError, r"^eos_token_id\[1\]: expected an int >= 0, got -2$"),
    (_hf(eos_token_id=[1, "2"]), TypeError, r"^eos_token_id\[1\]: expected an int, got '2'"),
], ids=["mistral", "qwen2", "attention-bias", "mlp-bias", "missing", "yarn", "dynamic",
        "llama3-low-0", "llama3-high-negative", "v5-yarn", "head-dim-not-given", "eos-list",
        "eos-list-third", "eos-list-negative", "eos-list-str"])
def test_from_hf_refuses_naming_the_field_and_the_reason(hf, exc, match):
    with pytest.raises(exc, match=match):
        ModelConfig.from_hf(hf)


def test_from_hf_reads_what_transformers_writes():
    """Llama 1 (no num_key_value_heads: MHA), Llama 3 (a list of end tokens, llama3 RoPE) and
    transformers 5 (rope_theta folded into rope_parameters) configs."""
    hf = _hf(num_key_value_heads=None, extra_key="ignored")
    assert ModelConfig.from_hf(hf).num_key_value_heads == 4
    assert ModelConfig.from_hf(_hf(num_key_value_heads=None) | {"num_key_value_heads": None}) \
        .num_key_value_heads == 4
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = ModelConfig.from_hf(_hf(eos_token_id=[3, 5, 7], bos_token_id=[1],
                                     rope_scaling=llama3))
    assert (config.eos_token_ids, config.bos_token_id, config.rope_type) == ((3, 5, 7), 1,
                                                                              "llama3")
    v5 = ModelConfig.from_hf(_hf(rope_theta=None, rope_scaling=None,
                                 rope_parameters=llama3 | {"rope_theta": 5e5}))
    assert (v5.rope_theta, v5.rope_type, v5.rope_scaling["factor"]) == (5e5, "llama3", 8.0)
    plain = ModelConfig.from_hf(_hf(rope_theta=None, rope_parameters={"rope_type": "default",
                                                                      "rope_theta": 123.0}))
    assert (plain.rope_theta, plain.rope_scaling) == (123.0, None)
    assert ModelConfig.from_hf(config.to_hf()) == config
    assert ModelConfig.from_hf(json.loads(json.dumps(config.to_hf()))) == config


def test_every_end_token_of_a_list_is_kept():
    """Llama 3.1 instruct ends at any of [128001, 128008, 128009]; from_hf kept only the first,
    so a request ending with <|eot_id|> (128009) ran on to max_tokens."""
    hf = _hf(vocab_size=128256, eos_token_id=[128001, 128008, 128009])
    config = ModelConfig.from_hf(hf)
    assert config.eos_token_id == config.eos_token_ids == (128001, 128008, 128009)
    assert config.to_hf()["eos_token_id"] == [128001, 128008, 128009]   # as transformers writes
    assert ModelConfig(eos_token_id=np.int64(5)).eos_token_ids == (5,)
    assert ModelConfig(eos_token_id=(np.int16(5), 6)).eos_token_id == (5, 6)
    assert type(ModelConfig(eos_token_id=(np.int16(5), 6)).eos_token_id[0]) is int
    assert ModelConfig(eos_token_id=[5]).eos_token_id == 5   # one id: an int, as before
    assert ModelConfig(eos_token_id=[]).eos_token_ids == ModelConfig().eos_token_ids == ()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(head_dim=7), ValueError, r"^head_dim: RoPE rotates pairs of dimensions, so it must be "
                                   r"even; got 7$"),
    (dict(num_attention_heads=6, num_key_value_heads=4, hidden_size=96), ValueError,
     r"^num_key_value_heads: 4 does not divide num_attention_heads 6 \(GQA needs whole "
     r"groups\)$"),
    (dict(rms_norm_eps="1e-5"), TypeError, r"^rms_norm_eps: expected a positive number, got "
                                           r"'1e-5' \(str\)$"),
    (dict(rope_scaling=[("rope_type", "linear")]), TypeError,
     r"^rope_scaling: expected a dict or None, got \[\('rope_type', 'linear'\)\]$"),
    (dict(rope_scaling={"rope_type": "longrope", "factor": 2.0}), ValueError,
     r"^rope_scaling: rope type 'longrope' is not supported"),
    (dict(rope_scaling={"type": "linear"}), ValueError,
     r"^rope_scaling: rope type 'linear' needs a 'factor', got \{'type': 'linear'\}$"),
    (dict(eos_token_id=-1), ValueError, r"^eos_token_id: expected an int >= 0, got -1$"),
    (dict(bos_token_id=1.0), TypeError, r"^bos_token_id: expected an int, got 1.0"),
    (dict(tie_word_embeddings="yes"), TypeError, r"^tie_word_embeddings: expected True or "
                                                 r"False, got 'yes'"),
], ids=["head-dim-odd", "gqa-groups", "eps-str", "scaling-list", "longrope", "no-factor",
        "eos-negative", "bos-float", "tie-str"])
def test_model_config_refuses_naming_the_field(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ModelConfig(**kwargs)


def test_numpy_numbers_are_stored_as_python_numbers():
    """to_hf writes JSON: a NumPy int64 or float32 there fails in json.dumps."""
    config = ModelConfig(vocab_size=np.int64(128), rope_theta=np.float32(500.0),
                         rms_norm_eps=np.float64(1e-6))
    assert type(config.vocab_size) is int and type(config.rope_theta) is float
    assert type(config.rms_norm_eps) is float
    engine = EngineConfig(watermark=np.float32(0.25), num_pages=np.int32(8))
    assert type(engine.watermark) is float and type(engine.num_pages) is int


def test_llama_1b_config_has_about_a_billion_parameters():
    config = llama_1b_config(num_hidden_layers=2)
    assert (config.head_dim, config.num_hidden_layers, config.rope_theta) == (64, 2, 500000.0)
    assert 1.0e9 < llama_1b_config().num_parameters() < 1.3e9


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(watermark="0.1"), TypeError, r"^watermark: expected a fraction in \[0, 1\), got '0.1' "
                                       r"\(str\)$"),
    (dict(watermark=-0.01), ValueError, r"^watermark: expected a fraction in \[0, 1\), got "
                                        r"-0.01$"),
    (dict(watermark=float("nan")), ValueError, r"^watermark: expected a fraction in \[0, 1\), "
                                               r"got nan$"),
    (dict(kv_dtype="int4"), ValueError, r"^kv_dtype: expected one of \('int8', 'fp8_e4m3'\), got "
                                        r"'int4'; accepted spellings: "),
    (dict(kv_scale_scheme="per_tensor"), ValueError, r"^kv_scale_scheme: expected one of"),
    (dict(max_prefill_chunk=0), ValueError, r"^max_prefill_chunk: expected an int >= 1, got 0$"),
    (dict(expected_output_len=-1), ValueError, r"^expected_output_len: expected an int >= 0"),
    (dict(enable_prefix_caching=1), TypeError, r"^enable_prefix_caching: expected True or "
                                               r"False, got 1"),
], ids=["watermark-str", "watermark-negative", "watermark-nan", "kv-dtype", "scheme",
        "chunk-0", "expected-len-negative", "caching-int"])
def test_engine_config_refuses_naming_the_field(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EngineConfig(**kwargs)
