"""The serving engine over a compressed KV cache (int8 / fp8 e4m3 pages with scales).

The oracle is the dense float64 forward with the same quantization applied to K and V
(`kv_round_trip`): a float32 engine whose cache stores codes must give the same greedy tokens
and logits within LOGIT_TOL. Its quantization matches the NumPy reference bit for bit
(tests/test_cache_write_quant.py), so what remains is float32 arithmetic (and, in principle,
an element whose x / scale lands on a rounding boundary in float32 but not in float64: one
step in one element; not seen with these seeds).
"""
import numpy as np
import pytest

from pagedattn_lab import quant
from pagedattn_lab import quant_accuracy as qa
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.dense import dense_generate

LOGIT_TOL = 1e-4   # float32 engine over codes vs float64 dense over the same codes; seen ~1e-6
# (the codes themselves move the logits by 1e-2 to 4: int8 and fp8 against the plain forward)
PROMPT_LENS = (1, 8, 17)


def round_trip(kv_dtype, static=None):
    """The dense forward's K, V as the cache gives them back (per-token scales, or static
    scales per KV head of one layer, `static` = an iterator over the layers' (k, v) scales)."""
    def apply(k, v):
        out = []
        for x, which in ((k, 0), (v, 1)):
            x32 = np.asarray(x, np.float32)
            if static is None:
                scale = quant.per_token_scales(x32, kv_dtype)
            else:
                scale = static[which][apply.layer]
            out.append(quant.dequantize(quant.quantize(x32, kv_dtype, scale), kv_dtype, scale))
        apply.layer = (apply.layer + 1) % (len(static[0]) if static is not None else 1)
        return out
    apply.layer = 0
    return apply


def prompts(rng, vocab):
    return [rng.integers(0, vocab, n).tolist() for n in PROMPT_LENS]


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_engine_over_codes_matches_the_dense_forward_over_the_same_codes(rng, kv_dtype, device):
    config = tiny_config()
    weights = random_weights(config, seed=1)
    engine = LLMEngine(LlamaModel(config, weights, device=device),
                       EngineConfig(num_pages=32, page_size=8, kv_dtype=kv_dtype,
                                    max_num_batched_tokens=20))
    reqs = prompts(rng, config.vocab_size)
    outs = engine.generate(reqs, SamplingParams(max_tokens=6, return_logits=True))
    for prompt, out in zip(reqs, outs):
        tokens, logits = dense_generate(config, weights, prompt, 6, round_trip(kv_dtype))
        assert out.output_ids == tokens, f"prompt of {len(prompt)} tokens"
        err = np.abs(out.logits - logits).max()
        assert err < LOGIT_TOL, f"prompt of {len(prompt)} tokens: {err:.2e}"
        plain = dense_generate(config, weights, prompt, 6)[1]   # the test sees the codes:
        assert np.abs(out.logits - plain).max() > 10 * LOGIT_TOL   # not the plain forward


def test_static_scales_are_used_and_required(rng):
    config = tiny_config()
    weights = random_weights(config, seed=1)
    model = LlamaModel(config, weights, device="cpu")
    kw = dict(num_pages=32, page_size=8)
    calib = prompts(np.random.default_rng(7), config.vocab_size)
    scales = qa.calibrate_kv_scales(model, calib, "int8", **kw)
    assert scales[0].shape == (config.num_hidden_layers, config.num_key_value_heads)
    engine = LLMEngine(model, EngineConfig(**kw, kv_dtype="int8", kv_scale_scheme="static"),
                       kv_scales=scales)
    prompt = prompts(rng, config.vocab_size)[2]
    out, = engine.generate([prompt], SamplingParams(max_tokens=4, return_logits=True))
    tokens, logits = dense_generate(config, weights, prompt, 4, round_trip("int8", scales))
    assert out.output_ids == tokens and np.abs(out.logits - logits).max() < LOGIT_TOL
    with pytest.raises(ValueError, match="kv_scales"):
        LLMEngine(model, EngineConfig(**kw, kv_dtype="int8", kv_scale_scheme="static"))
    bad = (scales[0], -scales[1])
    with pytest.raises(ValueError, match=r"kv_scales\[1\]: every scale must be finite and > 0"):
        LLMEngine(model, EngineConfig(**kw, kv_dtype="int8", kv_scale_scheme="static"),
                  kv_scales=bad)
    with pytest.raises(ValueError, match="kv_dtype"):
        EngineConfig(kv_dtype="fp4")


@pytest.mark.parametrize("kw", [dict(kv_dtype="int8", kv_scale_scheme="per_token"), {}],
                         ids=["per_token", "uncompressed"])
def test_kv_scales_that_no_cache_reads_are_refused(kw):
    """kv_scales beside per-token scales or an uncompressed cache were taken and dropped."""
    config = tiny_config()
    model = LlamaModel(config, random_weights(config, seed=1), device="cpu")
    shape = (config.num_hidden_layers, config.num_key_value_heads)
    scales = (np.full(shape, 0.02, np.float32), np.full(shape, 0.03, np.float32))
    with pytest.raises(ValueError, match=r"^kv_scales: only a compressed cache with static"):
        LLMEngine(model, EngineConfig(num_pages=8, page_size=8, **kw), kv_scales=scales)


def test_static_scales_are_copied_when_checked():
    """A NaN the caller puts into its scale arrays after the check must not reach the pages'
    reads (the store keeps copies, as PagedKVCache does)."""
    config = tiny_config()
    model = LlamaModel(config, random_weights(config, seed=1), device="cpu")
    shape = (config.num_hidden_layers, config.num_key_value_heads)
    scales = (np.full(shape, 0.02, np.float32), np.full(shape, 0.03, np.float32))
    engine = LLMEngine(model, EngineConfig(num_pages=8, page_size=8, kv_dtype="int8",
                                           kv_scale_scheme="static"), kv_scales=scales)
    scales[0][:] = np.nan
    assert all(np.isfinite(np.asarray(s)).all() for s in engine.store.k_scale)


def test_swapped_and_shared_pages_keep_their_scales(rng):
    """Preemption by swap and copy on write (prefix caching) move the per-token scales with
    the codes: the tokens equal those of a run that never swaps."""
    config = tiny_config()
    weights = random_weights(config, seed=1)
    model = LlamaModel(config, weights, device="cpu")
    shared = rng.integers(0, config.vocab_size, 12).tolist()
    reqs = [shared + rng.integers(0, config.vocab_size, n).tolist() for n in (3, 5, 9)]
    params = SamplingParams(max_tokens=10)
    roomy = LLMEngine(model, EngineConfig(num_pages=64, page_size=4, kv_dtype="fp8_e4m3"))
    tight = LLMEngine(model, EngineConfig(num_pages=12, page_size=4, kv_dtype="fp8_e4m3",
                                          preemption_mode="swap", num_host_pages=32,
                                          watermark=0.0))
    want = [o.output_ids for o in roomy.generate(reqs, params)]
    got = [o.output_ids for o in tight.generate(reqs, params)]
    assert tight.store.swapped_out_pages > 0, "the tight pool must swap"
    assert got == want


def test_greedy_agreement_reports_fractions(rng):
    config = tiny_config()
    model = LlamaModel(config, random_weights(config, seed=1), dtype=np.float16, device="cpu")
    reqs = prompts(rng, config.vocab_size)
    a = qa.greedy_agreement(model, reqs, "int8", "per_token", max_tokens=4, num_pages=32,
                            page_size=8)
    assert a.kv_dtype == "int8" and 0 <= a.positions <= 1 and 0 <= a.identical <= a.prefix <= 1


def test_greedy_agreement_against_a_reference_run_once(rng):
    config = tiny_config()
    model = LlamaModel(config, random_weights(config, seed=1), dtype=np.float16, device="cpu")
    reqs = prompts(rng, config.vocab_size)
    kw = dict(max_tokens=4, num_pages=32, page_size=8)
    reference = qa.greedy_tokens(model, reqs, **kw)
    assert reference == qa.greedy_tokens(model, reqs, **kw)   # greedy: the same every run
    # the uncompressed cache's own tokens agree with themselves everywhere ...
    fp16_pages = qa.greedy_tokens(model, reqs, kv_dtype=None, **kw)
    assert fp16_pages == reference
    # ... and a reference passed in gives what the one generated inside gives
    assert qa.greedy_agreement(model, reqs, "int8", reference=reference, **kw) == \
        qa.greedy_agreement(model, reqs, "int8", **kw)
    flipped = [[t + 1 for t in r] for r in reference]   # another run's tokens: none agree
    assert qa.greedy_agreement(model, reqs, "int8", reference=flipped, **kw).positions == 0
    with pytest.raises(ValueError, match="reference: expected"):
        qa.greedy_agreement(model, reqs, "int8", reference=reference[:-1], **kw)


def test_the_cache_is_half_the_bytes(rng):
    config = tiny_config(head_dim=64, hidden_size=128)
    model = LlamaModel(config, random_weights(config, seed=1), dtype=np.float16, device="cpu")
    plain = LLMEngine(model, EngineConfig(num_pages=4))
    fp8 = LLMEngine(model, EngineConfig(num_pages=4, kv_dtype="fp8_e4m3",
                                        kv_scale_scheme="per_token"))
    # per (token, KV head): 2 x 64 codes + 2 float32 scales, against 2 x 64 fp16 values
    assert fp8.store.bytes_per_page / plain.store.bytes_per_page == (2 * 64 + 8) / (2 * 64 * 2)
