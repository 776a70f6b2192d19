"""The oracle for the engine: a plain float64 Llama forward, no cache, no pages, no batching.

Written from the definition (as transformers' LlamaForCausalLM computes it) and sharing no
code with `model.py`, so a mistake there (a wrong RoPE pairing, a missing norm weight, GQA
heads mapped wrongly, a token written to the wrong slot) shows up as a difference here.
Each call recomputes the whole sequence: slow, and obviously right.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .model import rope_inv_freq   # the frequency table only (its scaling rules)


def _rms_norm(x, weight, eps):
    return weight * x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


def _rotate(x, positions, config: ModelConfig):
    """RoPE on x [len, heads, head_dim]: dimension i pairs with i + head_dim/2."""
    half = config.head_dim // 2
    angles = positions[:, None] * rope_inv_freq(config).astype(np.float64)[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def dense_logits(config: ModelConfig, weights: dict, token_ids, kv_round_trip=None) -> np.ndarray:
    """float64 logits [len(token_ids), vocab] of one sequence, causal. kv_round_trip(k, v)
    -> (k, v): what a cache gives back ([len, kv_heads, head_dim] each; e.g. quantized and
    dequantized), applied in every layer."""
    w = {k: np.asarray(v.get() if hasattr(v, "get") else v, dtype=np.float64)
         for k, v in weights.items()}
    ids = np.asarray(token_ids, dtype=np.int64)
    n, d = len(ids), config.head_dim
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    positions = np.arange(n, dtype=np.float64)
    causal = np.tril(np.ones((n, n), dtype=bool))
    x = w["model.embed_tokens.weight"][ids]
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], config.rms_norm_eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, heads, d)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, kv_heads, d)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, kv_heads, d)
        q, k = _rotate(q, positions, config), _rotate(k, positions, config)
        if kv_round_trip is not None:
            k, v = (np.asarray(a, np.float64) for a in kv_round_trip(k, v))
        out = np.empty_like(q)
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(d)
            scores = np.where(causal, scores, -np.inf)
            probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, head] = (probs / probs.sum(axis=-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(n, heads * d) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], config.rms_norm_eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w["model.embed_tokens.weight"] if config.tie_word_embeddings else w["lm_head.weight"]
    return _rms_norm(x, w["model.norm.weight"], config.rms_norm_eps) @ head.T


def dense_generate(config: ModelConfig, weights: dict, prompt_ids, max_tokens: int,
                   kv_round_trip=None):
    """Greedy decoding by recomputing the whole sequence each token: (tokens, logits
    [max_tokens, vocab]), stopping early at any of config.eos_token_ids."""
    ids, rows = list(prompt_ids), []
    for _ in range(max_tokens):
        logits = dense_logits(config, weights, ids, kv_round_trip)[-1]
        rows.append(logits)
        ids.append(int(np.argmax(logits)))
        if ids[-1] in config.eos_token_ids:
            break
    return ids[len(prompt_ids):], np.stack(rows)
