"""A few engine steps on the GPU with the fused Llama kernels (`kernels/llama_ops.cu`: RMSNorm
with the residual, RoPE with the cache write, SiLU*up) for compute-sanitizer (GPU only):
`compute-sanitizer python benchmarks/sanitize_engine.py`. Prompts of awkward lengths and a
small token budget, so steps mix prefill chunks and decodes."""
import numpy as np

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)

for config in (tiny_config(),
               tiny_config(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=64, tie_word_embeddings=True)):
    for dtype in (np.float16, np.float32):
        model = LlamaModel(config, random_weights(config, seed=1), dtype=dtype, device="gpu",
                           fused=True)
        engine = LLMEngine(model, EngineConfig(num_pages=64, page_size=5,
                                               max_num_batched_tokens=20))
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (1, 3, 17, 30)]
        for result in engine.generate(prompts, SamplingParams(max_tokens=4)):
            assert len(result.output_ids) == 4, result
print("sanitize_engine: launches done")
