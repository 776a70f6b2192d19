"""The engine against transformers' LlamaForCausalLM on the same weights (needs torch).

Skipped where torch or transformers do not import (CI: the PyPI torch wheel is gigabytes);
it runs on the GPU machine and wherever torch is installed. A seeded random small Llama is
saved with `save_pretrained`, loaded back by the course's own safetensors reader, and served
by the engine as one batch of mixed-length prompts. Greedy tokens must be identical to
`generate`'s, and every generated token's logits within LOGIT_TOL (float32).
"""
import numpy as np
import pytest

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  load_checkpoint, random_weights, tiny_config)
from pagedattn_lab.engine.weights import parameter_shapes, read_safetensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LOGIT_TOL = 1e-4      # float32, 2 layers: observed differences are ~1e-6
MAX_TOKENS = 12
PROMPT_LENS = (1, 5, 16, 23, 40)

ROPES = {
    "default": None,
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
}


def _hf_model(tmp_path, rope_scaling, dtype=None):
    config = tiny_config(max_position_embeddings=256, rope_scaling=rope_scaling,
                         rope_theta=500.0)
    hf_config = transformers.LlamaConfig(**config.to_hf())
    model = transformers.LlamaForCausalLM(hf_config).eval()
    # Our seeded init (sharper logits than the 0.02 default; norm weights not all ones).
    weights = random_weights(config, seed=3)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("rope", sorted(ROPES))
def test_greedy_tokens_and_logits_match_transformers(tmp_path, rope, device):
    hf = _hf_model(tmp_path, ROPES[rope])
    config, weights = load_checkpoint(tmp_path)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in PROMPT_LENS]
    engine = LLMEngine(LlamaModel(config, weights, device=device),
                       EngineConfig(page_size=8, num_pages=64, max_num_batched_tokens=24))
    outs = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True,
                                                   return_logits=True))
    assert engine.summary()["steps"] > MAX_TOKENS, "expected chunked prefill over several steps"
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                                 dtype=torch.long),
                              max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                              do_sample=False, output_logits=True, return_dict_in_generate=True,
                              pad_token_id=0)
        tokens = ref.sequences[0, len(prompt):].tolist()
        logits = torch.stack(ref.logits)[:, 0].float().numpy()
        assert out.output_ids == tokens, f"prompt of {len(prompt)} tokens"
        err = np.abs(out.logits - logits).max()
        assert err < LOGIT_TOL, f"prompt of {len(prompt)} tokens: logits differ by {err:.2e}"


def test_bfloat16_checkpoint_reads_exactly(tmp_path):
    hf = _hf_model(tmp_path, None, dtype=torch.bfloat16)
    got = read_safetensors(tmp_path / "model.safetensors")
    for name, param in hf.state_dict().items():
        if name in parameter_shapes(tiny_config(max_position_embeddings=256)):
            np.testing.assert_array_equal(got[name], param.float().numpy(), err_msg=name)


def test_a_list_of_end_tokens_stops_where_generate_stops(tmp_path):
    """Llama 3 instruct lists several end tokens; generate stops at any of them. The list is
    written by transformers' save_pretrained (config.json and generation_config.json) and
    read back by load_checkpoint: the engine must stop at the same token, with the same ids."""
    hf = _hf_model(tmp_path / "free", None)
    config, weights = load_checkpoint(tmp_path / "free")
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (5, 16, 23)]
    runs = [o.output_ids for o in LLMEngine(LlamaModel(config, weights, device="cpu")).generate(
        prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))]
    never = next(t for t in range(config.vocab_size) if all(t not in run for run in runs))
    ends = [never, runs[0][4], runs[1][2]]   # the second and third ids stop a prompt each
    hf.config.eos_token_id = hf.generation_config.eos_token_id = ends
    hf.save_pretrained(tmp_path / "ends")
    config, weights = load_checkpoint(tmp_path / "ends")
    assert config.eos_token_ids == tuple(ends)
    outs = LLMEngine(LlamaModel(config, weights, device="cpu")).generate(
        prompts, SamplingParams(max_tokens=MAX_TOKENS))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                                 dtype=torch.long),
                              max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
        tokens = ref[0, len(prompt):].tolist()
        assert out.output_ids == tokens, f"prompt of {len(prompt)} tokens"
        assert out.finish_reason == ("stop" if tokens[-1] in ends else "length")
    assert [o.finish_reason for o in outs[:2]] == ["stop", "stop"]
