"""A Llama decoder that keeps its K/V in the paged cache: the model half of the engine.

One forward pass runs a whole step's batch: the new tokens of every scheduled request,
packed one after another ([total_tokens]), each with its position in its own sequence.

    x = embed[tokens]
    per layer:  h = RMSNorm(x);  q, k, v = h Wq, h Wk, h Wv;  rotate q, k by position (RoPE)
                write k, v to their cache slots;  o = paged attention of q over the cache
                x += o Wo;  h = RMSNorm(x);  x += (silu(h Wgate) * h Wup) Wdown
    logits = RMSNorm(x[rows that sample]) Wlm_head

Arithmetic follows transformers' LlamaForCausalLM (RMSNorm in float32 then the weight in the
model's dtype, rotate-half RoPE with float32 angles, GQA by repeating KV heads), so greedy
tokens match it. Arrays are NumPy or CuPy (`xp`), so the same code runs on the CPU, with
the attention kernels on the CPU executor, and on the GPU.

`fused=True` (the default on the GPU) runs the elementwise work through `fused.LlamaOps`
(one launch each for the residual add with RMSNorm, RoPE with the cache write, and SiLU
times up) instead of array ops: the same arithmetic rounded the same way, a fraction of the
launches. The array-op forward stays as the readable form, the CPU's default, and the path
of a compressed (int8/fp8) cache, whose cache write quantizes.
"""
from __future__ import annotations

import math

import numpy as np

from ..attention_common import element_dtype
from ..backend import device_module, resolve_device, to_numpy
from .config import ModelConfig
from .fused import LlamaOps
from .weights import check_weights


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE's inverse frequencies (float32 [head_dim / 2]), with linear or Llama 3 scaling."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    inv = inv.astype(np.float32)
    scaling = config.rope_scaling or {}
    if config.rope_type == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if config.rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


class LlamaModel:
    """LlamaForCausalLM's forward over a paged KV cache.

    weights: Hugging Face parameter names -> arrays (see `weights.py`); they are copied to
    `device` in `dtype` (float32 or float16, spelled as PagedKVCache's: "float" is float32).
    fused: the fused elementwise kernels (None: on the GPU only; on the CPU they run on the
    CPU executor, slowly: for testing).
    """

    def __init__(self, config: ModelConfig, weights: dict, *, dtype=np.float32,
                 device: str = "auto", fused: bool | None = None):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
        check_weights(config, weights)
        # spelled as every `dtype` (attention_common.dtype_name): "float" is float32 here too
        dtype = element_dtype(dtype, ("float32", "float16"))
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused: expected True, False or None, got {fused!r}")
        self.config, self.dtype = config, dtype
        self.device = resolve_device(device)
        self.fused = self.device == "gpu" if fused is None else fused
        self.ops = LlamaOps(self.dtype) if self.fused else None
        self.xp = xp = device_module(self.device)

        def put(name):
            w = weights[name]
            return xp.asarray(to_numpy(w) if xp is np else w, dtype=self.dtype)

        self.embed = put("model.embed_tokens.weight")
        self.layers = []
        for n in range(config.num_hidden_layers):
            p = f"model.layers.{n}."
            # q, k, v (and gate, up) fused: one matmul each instead of three (two).
            self.layers.append(dict(
                ln1=put(p + "input_layernorm.weight"),
                qkv=xp.concatenate([put(p + f"self_attn.{x}_proj.weight") for x in "qkv"]),
                o=put(p + "self_attn.o_proj.weight"),
                ln2=put(p + "post_attention_layernorm.weight"),
                gate_up=xp.concatenate([put(p + "mlp.gate_proj.weight"),
                                        put(p + "mlp.up_proj.weight")]),
                down=put(p + "mlp.down_proj.weight")))
        self.norm = put("model.norm.weight")
        self.lm_head = self.embed if config.tie_word_embeddings else put("lm_head.weight")
        angles = (np.arange(config.max_position_embeddings, dtype=np.float32)[:, None]
                  * rope_inv_freq(config)[None, :])
        self.cos = xp.asarray(np.cos(angles))     # [max_pos, head_dim / 2], float32
        self.sin = xp.asarray(np.sin(angles))

    def rms_norm(self, x, weight):
        x32 = x.astype(np.float32)
        var = (x32 * x32).mean(axis=-1, keepdims=True)
        normed = x32 / self.xp.sqrt(var + np.float32(self.config.rms_norm_eps))
        return weight * normed.astype(self.dtype)

    def rope(self, x, cos, sin):
        """Rotate-half RoPE of x [tokens, heads, head_dim] (cos, sin: [tokens, 1, head_dim/2])."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return self.xp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def forward(self, token_ids, positions, attention, kv, sample_rows):
        """Logits (float32 [len(sample_rows), vocab]) for a packed batch.

        token_ids, positions: int arrays [total_tokens] (on the model's device);
        attention: a planned `StepAttention`; kv: the `KVStore`; sample_rows: which rows
        need logits (the last new token of each request that samples this step).
        """
        if self.fused and attention.compressed is None:   # a compressed cache's write quantizes
            return self._forward_fused(token_ids, positions, attention, kv, sample_rows)
        cfg, xp = self.config, self.xp
        n = int(token_ids.shape[0])
        heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos = self.cos[positions][:, None, :].astype(self.dtype)
        sin = self.sin[positions][:, None, :].astype(self.dtype)
        x = self.embed[token_ids]
        for layer, w in enumerate(self.layers):
            qkv = self.rms_norm(x, w["ln1"]) @ w["qkv"].T
            q = qkv[:, :cfg.q_size].reshape(n, heads, d)
            k = qkv[:, cfg.q_size:cfg.q_size + cfg.kv_size].reshape(n, kv_heads, d)
            v = qkv[:, cfg.q_size + cfg.kv_size:].reshape(n, kv_heads, d)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            attention.write_kv(kv.k[layer], kv.v[layer], k, v, **kv.scales(layer))
            o = attention.run(xp.ascontiguousarray(q), kv.k[layer], kv.v[layer],
                              **kv.scales(layer))
            x = x + o.reshape(n, heads * d) @ w["o"].T
            gate_up = self.rms_norm(x, w["ln2"]) @ w["gate_up"].T
            gate, up = gate_up[:, :cfg.intermediate_size], gate_up[:, cfg.intermediate_size:]
            x = x + (gate / (1 + xp.exp(-gate)) * up) @ w["down"].T
        h = self.rms_norm(x[sample_rows], self.norm)
        return (h @ self.lm_head.T).astype(np.float32)

    def _forward_fused(self, token_ids, positions, attention, kv, sample_rows):
        """`forward` with the fused kernels: per layer two norms (each with the residual add
        before it), four matmuls, RoPE with the cache write, attention, SiLU times up. Each
        residual add is deferred into the next norm, the last one into the final norm (run
        on every row: a norm is per row, so the sampled rows come out the same)."""
        cfg, ops, eps = self.config, self.ops, self.config.rms_norm_eps
        n = int(token_ids.shape[0])
        heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        x, delta = self.embed[token_ids], None
        for layer, w in enumerate(self.layers):
            x, h = ops.rms_norm(x, w["ln1"], eps, delta)
            q = ops.rope_qkv(h @ w["qkv"].T, positions, self.cos, self.sin,
                             attention.slot_mapping, kv.k[layer], kv.v[layer], heads, kv_heads)
            o = attention.run(q, kv.k[layer], kv.v[layer])
            x, h = ops.rms_norm(x, w["ln2"], eps, o.reshape(n, heads * d) @ w["o"].T)
            delta = ops.silu_mul(h @ w["gate_up"].T) @ w["down"].T
        _, h = ops.rms_norm(x, self.norm, eps, delta)
        return (h[sample_rows] @ self.lm_head.T).astype(np.float32)
