"""Hunt 142: vLLM's top_k, top_p and stop_token_ids in SamplingParams.

Before: SamplingParams(top_k=...) (or top_p, stop_token_ids) raised TypeError, an unexpected
keyword. The filters are checked against a float64 NumPy reference written per token (a
token survives top-k when fewer than k tokens are strictly more likely, top-p when the
tokens strictly more likely than it hold less than p), on seeded logits full of ties.
"""
import math

import numpy as np
import pytest

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)
from pagedattn_lab.engine.request import Request
from pagedattn_lab.engine.sampling import filtered_weights, request_rng, sample

VOCAB = tiny_config().vocab_size
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 16, 17, 18]]


@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    return LlamaModel(config, random_weights(config, seed=0))


def new_engine(model, **config):
    return LLMEngine(model, EngineConfig(**({"num_pages": 64, "page_size": 4} | config)))


def reference_probs(z, top_k, top_p):
    """float64 probabilities after temperature-scaled logits z, top-k, then top-p."""
    z = np.asarray(z, np.float64)
    if top_k > 0:
        z = np.array([zi if (z > zi).sum() < top_k else -np.inf for zi in z])
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.array([p[p > pi].sum() < top_p for pi in p])
    p = np.where(keep, p, 0.0)
    return p / p.sum()


def seeded_logits(seed, n):
    rng = np.random.default_rng(seed)
    if seed % 2:   # few distinct values: ties at every cut
        return rng.integers(-3, 3, n) * 0.75
    return rng.standard_normal(n) * 3


# -- the filters against the reference -------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("top_k", [0, -1, 1, 2, 5, 13, 40])
@pytest.mark.parametrize("top_p", [1e-12, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_filters_keep_what_the_reference_keeps(seed, top_k, top_p):
    z = seeded_logits(seed, 13 + seed)
    want = reference_probs(z, top_k, top_p)
    w = filtered_weights(z, top_k, top_p)
    got = w / w.sum()
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_a_tiny_top_p_keeps_every_tied_maximum_and_only_those():
    z = np.array([1.0, 3.0, -2.0, 3.0, 2.999, 3.0])
    w = filtered_weights(z, 0, 1e-9)
    assert (np.flatnonzero(w) == [1, 3, 5]).all()
    assert (np.flatnonzero(filtered_weights(z, 1, 1.0)) == [1, 3, 5]).all()   # top_k ties too


def test_top_p_cuts_where_the_running_sum_first_reaches_p():
    z = np.log([0.5, 0.25, 0.125, 0.125])   # exact in binary
    assert (np.flatnonzero(filtered_weights(z, 0, 0.5)) == [0]).all()   # 0.5 reaches 0.5
    assert (np.flatnonzero(filtered_weights(z, 0, 0.75)) == [0, 1]).all()
    assert (np.flatnonzero(filtered_weights(z, 0, 0.76)) == [0, 1, 2, 3]).all()   # (tie)


def test_top_k_then_top_p_in_that_order():
    # top-p on the top-2 renormalized (0.625, 0.375) keeps one token at p=0.6; top-p first
    # (0.5 + 0.3 reaches 0.6), then top-k, would keep two
    z = np.log([0.5, 0.3, 0.2])
    assert (np.flatnonzero(filtered_weights(z, 2, 0.6)) == [0]).all()
    assert (np.flatnonzero(filtered_weights(z, 0, 0.6)) == [0, 1]).all()


# -- sampled frequencies ---------------------------------------------------------------------

def test_seeded_draws_follow_the_filtered_distribution():
    """20,000 draws (one per seed) of one row: each token's frequency is within 5 standard
    errors of its filtered probability (seeded: the same draws every run), and no filtered
    token is ever drawn."""
    z = np.array([2.0, 1.5, 1.5, 0.3, -1.0, 0.9, 1.5, -3.0])
    params = dict(temperature=0.7, top_k=6, top_p=0.8)
    want = reference_probs(z / 0.7, 6, 0.8)
    logits = z.astype(np.float32)[None]
    n = 20_000
    counts = np.zeros(z.size)
    for seed in range(n):
        req = Request(0, [1], SamplingParams(seed=seed, **params))
        counts[sample(logits, [req], 0, np)[0]] += 1
    freq = counts / n
    assert (counts[want == 0] == 0).all() and (want == 0).sum() >= 2
    bound = 5 * np.sqrt(want * (1 - want) / n)
    assert (np.abs(freq - want) <= bound).all(), (freq, want, bound)


def test_with_the_filters_off_a_request_draws_what_it_drew_before_them():
    """top_k 0 or -1 and top_p 1.0 sample the token the sampler took before the filters came
    (request_rng's u over the cdf of exp(z - max z)), position by position: no stream moved."""
    logits = np.random.default_rng(5).standard_normal((1, VOCAB)).astype(np.float32)
    z = logits[0].astype(np.float64) / 0.9
    cdf = np.cumsum(np.exp(z - z.max()))
    for pos in range(40):
        reqs = [Request(7, [1], SamplingParams(temperature=0.9, **kw), output_ids=[0] * pos)
                for kw in ({}, {"top_k": -1, "top_p": 1.0}, {"top_k": 0}, {"top_k": VOCAB})]
        before = int(np.searchsorted(cdf, request_rng(reqs[0], 3).random() * cdf[-1], "right"))
        assert [sample(logits, [r], 3, np)[0] for r in reqs] == [before] * 4


# -- in the engine ---------------------------------------------------------------------------

def test_top_k_1_equals_greedy(model):
    greedy = new_engine(model).generate(PROMPTS, SamplingParams(max_tokens=8, ignore_eos=True))
    top1 = new_engine(model).generate(PROMPTS, [
        SamplingParams(max_tokens=8, ignore_eos=True, temperature=t, top_k=1, seed=s)
        for t, s in ((0.8, 1), (2.0, None), (1e-3, 4), (5.0, 7))])
    assert [o.output_ids for o in top1] == [o.output_ids for o in greedy]


def test_a_tiny_top_p_equals_greedy(model):
    greedy = new_engine(model).generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    tiny = new_engine(model).generate(PROMPTS, SamplingParams(
        max_tokens=6, ignore_eos=True, temperature=3.0, top_p=1e-9))
    assert [o.output_ids for o in tiny] == [o.output_ids for o in greedy]


def test_filtered_sampling_does_not_depend_on_the_schedule(model):
    params = [SamplingParams(max_tokens=10, ignore_eos=True, temperature=1.3, top_k=k, top_p=p,
                             seed=s) for k, p, s in ((5, 0.9, 3), (0, 0.6, None), (20, 1.0, 9),
                                                     (-1, 0.95, None))]
    alone = [new_engine(model).generate([prompt], sp)[0].output_ids
             for prompt, sp in zip(PROMPTS, params)]
    # (alone, each request is rid 0: give the unseeded ones their batch id's stream)
    for i in (1, 3):
        e = new_engine(model)
        for _ in range(i):
            e.abort_request(e.add_request([1], SamplingParams(max_tokens=1)))
        alone[i] = e.generate([PROMPTS[i]], params[i])[0].output_ids
    for config in ({}, {"max_num_batched_tokens": 3, "max_prefill_chunk": 2},
                   {"num_pages": 9, "watermark": 0.0}):
        outs = new_engine(model, **config).generate(PROMPTS, params)
        assert [o.output_ids for o in outs] == alone, config


def _baseline(model, params):
    return [o.output_ids for o in new_engine(model).generate(PROMPTS, params)]


def _stop_at(tokens, index):
    """A token first generated at `index`, as a stop id."""
    first = next(t for i, t in enumerate(tokens) if i >= index and t not in tokens[:i])
    return first, tokens.index(first)


def test_a_stop_token_ends_the_request_kept_in_the_output(model):
    base = _baseline(model, SamplingParams(max_tokens=10, ignore_eos=True))[1]
    stop, at = _stop_at(base, 2)
    assert at < 9
    (out,) = new_engine(model).generate([PROMPTS[1]], SamplingParams(
        max_tokens=10, ignore_eos=True, stop_token_ids=[VOCAB - 1, stop]))
    assert (out.output_ids, out.finish_reason) == (base[:at + 1], "stop")


def test_a_stop_token_that_is_also_the_last_allowed_is_a_stop(model):
    base = _baseline(model, SamplingParams(max_tokens=4, ignore_eos=True))[0]
    stop, at = _stop_at(base, 3)
    (out,) = new_engine(model).generate([PROMPTS[0]], SamplingParams(
        max_tokens=at + 1, ignore_eos=True, stop_token_ids=(stop,)))
    assert (out.output_ids, out.finish_reason) == (base[:at + 1], "stop")


def test_a_request_that_stops_mid_batch_frees_its_pages_and_disturbs_no_other(model):
    params = [SamplingParams(max_tokens=12, ignore_eos=True, temperature=t, seed=s, top_k=k)
              for t, s, k in ((0.0, None, 0), (0.9, None, 8), (1.1, 5, 0), (0.0, None, 0))]
    base = _baseline(model, params)
    stop, at = _stop_at(base[1], 2)
    assert at < 11   # (it stops early, while the others run on)
    params[1] = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.9, top_k=8,
                               stop_token_ids=[stop])
    engine = new_engine(model, enable_prefix_caching=False)
    rids = [engine.add_request(p, sp) for p, sp in zip(PROMPTS, params)]
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            done[out.rid] = out
            if out.rid == rids[1]:
                assert out.output_ids == base[1][:at + 1] and out.finish_reason == "stop"
                running = engine.scheduler.running
                assert all(r.rid != rids[1] for r in running)
                # its pages back in the pool: only the others' are held
                assert engine.kv.pool.num_used == sum(len(r.pages) for r in running)
    assert [done[r].output_ids for i, r in enumerate(rids) if i != 1] == \
        [b for i, b in enumerate(base) if i != 1]
    assert engine.kv.pool.num_used == 0


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(top_k=-2), ValueError, r"^top_k: expected an int >= -1, got -2$"),
    (dict(top_k=1.0), TypeError, r"^top_k: expected an int, got 1.0"),
    (dict(top_k=True), TypeError, r"^top_k: expected an int, got True"),
    (dict(top_p=0), ValueError, r"^top_p: expected a number in \(0, 1\], got 0$"),
    (dict(top_p=1.5), ValueError, r"^top_p: expected a number in \(0, 1\], got 1.5$"),
    (dict(top_p=-0.1), ValueError, r"^top_p: expected a number in \(0, 1\]"),
    (dict(top_p=math.nan), ValueError, r"^top_p: expected a number in \(0, 1\], got nan$"),
    (dict(top_p=math.inf), ValueError, r"^top_p: expected a number in \(0, 1\], got inf$"),
    (dict(top_p="0.5"), TypeError, r"^top_p: expected a number in \(0, 1\], got '0.5' \(str\)"),
    (dict(top_p=True), TypeError, r"^top_p: expected a number"),
    (dict(stop_token_ids=[3, 1.0]), TypeError, r"^stop_token_ids\[1\]: expected an integer "
                                               r"token id, got 1.0"),
    (dict(stop_token_ids=[-1]), ValueError, r"^stop_token_ids\[0\]: expected a token id >= 0"),
    (dict(stop_token_ids=[True]), TypeError, r"^stop_token_ids\[0\]: expected an integer"),
    (dict(stop_token_ids=7), TypeError, r"^stop_token_ids: expected a list of token ids, got 7 "
                                        r"\(int\); for one token id write \[7\]"),
    (dict(stop_token_ids="7"), TypeError, r"^stop_token_ids: expected a list of token ids"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_sampling_params_refuse_bad_filters_by_name(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_store_filters_as_python_values():
    sp = SamplingParams(top_k=np.int64(3), top_p=np.float32(0.5),
                        stop_token_ids=np.array([4, 9]))
    assert (sp.top_k, sp.top_p, sp.stop_token_ids) == (3, 0.5, (4, 9))
    assert type(sp.top_k) is int and type(sp.top_p) is float
    assert all(type(t) is int for t in sp.stop_token_ids)
    assert SamplingParams(stop_token_ids=None).stop_token_ids == ()
    # hashable (a tuple): params key dicts (test_serving_hunt127's outputs served alone)
    assert hash(SamplingParams(stop_token_ids=[1, 2])) == \
        hash(SamplingParams(stop_token_ids=(1, 2)))


def _state(engine):
    return (engine.has_unfinished(), engine._next_rid, engine.stats.prompt_tokens,
            engine.kv.pool.num_free)


def test_a_stop_id_outside_the_vocabulary_is_refused_before_anything_is_queued(model):
    engine = new_engine(model)
    before = _state(engine)
    with pytest.raises(ValueError, match=rf"^params.stop_token_ids\[1\]: token id {VOCAB} is "
                                         rf"outside the vocabulary 0..{VOCAB - 1}$"):
        engine.add_request([1, 2], SamplingParams(stop_token_ids=[3, VOCAB]))
    with pytest.raises(ValueError, match=r"^params\[1\].stop_token_ids\[0\]: token id 10000 "):
        engine.generate([[1], [2]], [SamplingParams(), SamplingParams(stop_token_ids=[10000])])
    assert _state(engine) == before
    assert engine.generate([[1, 2]], SamplingParams(max_tokens=1, stop_token_ids=[VOCAB - 1]))
