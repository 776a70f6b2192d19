"""A small serving engine on the paged KV cache (a mini-vLLM).

A Llama-architecture model (`LlamaModel`) whose attention reads and writes the paged cache
through the course's kernels, and an engine (`LLMEngine`) that serves many requests at once:
continuous batching under a token budget, chunked prefill, prefix caching with hashed
blocks, preemption by recompute or swap. See lesson 12 (serving_engine).

    from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                      random_weights, tiny_config)
    config = tiny_config()
    engine = LLMEngine(LlamaModel(config, random_weights(config, seed=0)),
                       EngineConfig(num_pages=64, page_size=8))
    outputs = engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=8))
"""
from .config import EngineConfig, ModelConfig, llama_1b_config, tiny_config
from .engine import LLMEngine, RequestOutput
from .model import LlamaModel
from .request import SamplingParams
from .weights import load_checkpoint, random_weights, save_checkpoint

__all__ = ["EngineConfig", "LLMEngine", "LlamaModel", "ModelConfig", "RequestOutput",
           "SamplingParams", "llama_1b_config", "load_checkpoint", "random_weights",
           "save_checkpoint", "tiny_config"]
