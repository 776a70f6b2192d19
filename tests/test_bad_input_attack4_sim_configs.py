"""Bad input, fourth round (continued from test_bad_input_attack4.py): the simulator, the
engine's adaptive page sizes and its configs. Each case here failed before its fix (an error
naming no argument, a silently wrong result, or a run that spun without progress)."""
import dataclasses
import json

import numpy as np
import pytest

from pagedattn_lab import sim
from pagedattn_lab.engine import EngineConfig, ModelConfig, load_checkpoint, random_weights, \
    save_checkpoint
from pagedattn_lab.engine.adaptive import choose_page_size, dry_run, tail_waste


# -- sim.simulate and sim.Workload -----------------------------------------------------------

SMALL = sim.Workload(num_requests=20)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(page_size=0), ValueError, r"^page_size: expected an int >= 1, got 0"),
    (dict(page_size=True), TypeError, r"^page_size: expected an int, got True"),
    (dict(page_size=40000), ValueError, r"^page_size: 32768 slots hold 0 whole pages of 40000 "
                                        r"tokens"),
    (dict(page_size=1000, capacity_tokens=2048), ValueError, r"^page_size: 2048 slots hold 2 "
                                                             r"whole pages"),
    (dict(watermark=float("nan")), ValueError, r"^watermark: expected a share of the pages in "
                                               r"\[0, 1\), got nan"),
    (dict(watermark=2.0), ValueError, r"^watermark: expected a share"),
    (dict(watermark=0.99), ValueError, r"^watermark: 0\.99 of 2048 pages kept free leaves too "
                                       r"few for a prompt of prompt_max=1024"),
    (dict(max_steps=0), ValueError, r"^max_steps: expected an int >= 1, got 0"),
    (dict(capacity_tokens=4096.0), TypeError, r"^capacity_tokens: expected an int, got 4096\.0"),
    (dict(capacity_tokens=10**13), ValueError, r"^capacity_tokens: 10000000000000 slots make "
                                               r"625000000000 pages"),
    (dict(memory_bytes=-5, bytes_per_token=2), ValueError, r"^memory_bytes: expected an int "
                                                           r">= 0, got -5"),
    (dict(memory_bytes="1000000", bytes_per_token=2), TypeError, r"^memory_bytes: expected an "
                                                                 r"int"),
    (dict(memory_bytes=2**20, bytes_per_token=True), TypeError, r"^bytes_per_token: expected an "
                                                                r"int, got True"),
    (dict(memory_bytes=2**12, bytes_per_token=4), ValueError, r"^memory_bytes // "
                                                              r"bytes_per_token: expected at "
                                                              r"least max_len=2048, got 1024"),
    (dict(workload={"num_requests": 3}), TypeError, r"^workload: expected a Workload or None, "
                                                    r"got dict"),
    (dict(policy=np.array(["paged"])), ValueError, r"^policy: expected one of"),
])
def test_simulate_refuses(kwargs, exc, match):
    """page_size 0 raised ZeroDivisionError; True, capacity 4096.0 and page sizes past the
    pool were refused as `num_pages`, an argument simulate has none of; NaN failed in int();
    watermark 2 or 0.99 and max_steps 0 ran to the end admitting nothing (NaN breakdowns);
    memory_bytes as a string or a negative int, and bytes_per_token True, were taken or
    blamed on capacity_tokens; a dict workload failed with AttributeError; a policy array
    was accepted."""
    kwargs = {"policy": "paged", "workload": SMALL, **kwargs}
    with pytest.raises(exc, match=match):
        sim.simulate(kwargs.pop("policy"), kwargs.pop("workload"), **kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(num_requests=0), ValueError, r"^num_requests: expected an int >= 1, got 0"),
    (dict(num_requests=2.5), TypeError, r"^num_requests: expected an int, got 2\.5"),
    (dict(prompt_median=0), ValueError, r"^prompt_median: expected a finite number > 0, got 0"),
    (dict(output_median=float("nan")), ValueError, r"^output_median: expected a finite number "
                                                   r"> 0, got nan"),
    (dict(prompt_sigma=-1), ValueError, r"^prompt_sigma: expected a finite number >= 0"),
    (dict(output_median=10**400), ValueError, r"^output_median: expected a finite number > 0"),
    (dict(output_sigma=True), ValueError, r"^output_sigma: expected a finite number >= 0"),
    (dict(min_len=0), ValueError, r"^min_len: expected an int >= 1, got 0"),
    (dict(min_len=3000), ValueError, r"^prompt_max: expected an int >= 3000, got 1024"),
    (dict(prompt_max=2048), ValueError, r"^max_len: expected an int >= 2052, got 2048"),
    (dict(seed=-1), ValueError, r"^seed: expected an int >= 0, got -1"),
])
def test_workload_refuses(kwargs, exc, match):
    """A median of 0 failed with "math domain error", NaN made every length -2**63, a
    negative count with "negative dimensions", min_len past prompt_max or prompt_max near
    max_len gave requests longer than max_len or outputs shorter than min_len (np.clip with
    its bounds crossed)."""
    with pytest.raises(exc, match=match):
        sim.Workload(**kwargs)


def test_compare_policies_refuses_one_policy_name():
    """"paged" was walked as the policies "p", "a", ...: the error named the letter."""
    with pytest.raises(TypeError, match=r"^policies: expected a list of policy names, got "
                                        r"'paged'; for one policy write \['paged'\]"):
        sim.compare_policies(SMALL, policies="paged")


def test_a_valid_simulation_still_runs():
    result = sim.simulate("paged", SMALL, capacity_tokens=4096, page_size=np.int64(16))
    assert result.finished == SMALL.num_requests


# -- engine.adaptive --------------------------------------------------------------------------

CONFIG = EngineConfig(num_pages=16, page_size=4)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: tail_waste([10, 20], [5, 6], 0), ValueError, r"^page_size: expected an int >= 1"),
    (lambda: tail_waste([10, 20], [5, 6], 2.5), TypeError, r"^page_size: expected an int"),
    (lambda: tail_waste([10, 20, 30], [5, 6], 4), ValueError,
     r"^prompt_lens, output_lens: expected one of each per request \(at least one\), got 3 "
     r"and 2"),
    (lambda: tail_waste([], [], 4), ValueError, r"^prompt_lens, output_lens: expected one of "
                                                r"each"),
    (lambda: tail_waste([-5], [2], 4), ValueError, r"^prompt_lens\[0\]: expected a length >= 1"),
    (lambda: tail_waste([1.7], [2], 4), TypeError, r"^prompt_lens\[0\]: expected an integer "
                                                   r"length"),
    (lambda: choose_page_size([10], [5], candidates=[0, 4]), ValueError,
     r"^candidates\[0\]: expected a page size >= 1, got 0$"),
    (lambda: choose_page_size([10], [5], candidates=[4, 8, -2]), ValueError,
     r"^candidates\[2\]: expected a page size >= 1, got -2$"),
    (lambda: choose_page_size([10], [5], candidates=[]), ValueError,
     r"^candidates: expected at least one page size, got \[\]$"),
    (lambda: choose_page_size([10], [5], candidates=4), TypeError,
     r"^candidates: expected a list of page sizes"),
    (lambda: choose_page_size([10], [5], max_waste=float("nan")), ValueError,
     r"^max_waste: expected a share of the slots in \[0, 1\], got nan"),
    (lambda: dry_run(CONFIG, [10, 20, 30], [5, 6]), ValueError,
     r"^prompt_lens, output_lens: expected one of each per request"),
    (lambda: dry_run(CONFIG, [0], [3]), ValueError, r"^prompt_lens\[0\]: expected a length >= 1"),
    (lambda: dry_run(CONFIG, [3], [0]), ValueError, r"^output_lens\[0\]: expected a length >= 1"),
    (lambda: dry_run(CONFIG, [3, 100], [3, 3]), ValueError,
     r"^prompt_lens\[1\], output_lens\[1\]: 100 \+ 3 tokens may need 26 pages, more than the "
     r"pool of 16"),
    (lambda: dry_run(CONFIG, [3], [3], max_steps=0), ValueError, r"^max_steps: expected an "
                                                                 r"int >= 1"),
    (lambda: dry_run({"num_pages": 3}, [3], [3]), TypeError, r"^config: expected an "
                                                             r"EngineConfig, got dict"),
])
def test_adaptive_refuses(call, exc, match):
    """Page size 0 and empty lengths raised ZeroDivisionError, 2.5 and negative lengths gave a
    waste (negative ones below 0), lengths of unequal counts were cut to the shorter by zip
    (or failed with IndexError in dry_run); no candidates failed in min(), NaN max_waste
    picked page size 1; a prompt of 0 failed with IndexError; an output of 0 ran as 1; a
    request the pool can never hold ran max_steps steps of nothing (100,000 by default)."""
    with pytest.raises(exc, match=match):
        call()


def test_adaptive_takes_numpy_lengths():
    prompts, outputs = np.array([10, 20], np.int64), np.array([5, 6], np.int32)
    chosen, waste = choose_page_size(prompts, outputs, candidates=np.array([1, 4]), max_waste=1)
    assert chosen == 4 and set(waste) == {1, 4}
    assert dry_run(CONFIG, prompts, outputs).output_tokens == 11


# -- ModelConfig and EngineConfig --------------------------------------------------------------

@pytest.mark.parametrize("make, exc, match", [
    (lambda: EngineConfig(preemption_mode=np.array(["swap"]), num_host_pages=4), ValueError,
     r"^preemption_mode: expected one of \('recompute', 'swap'\), got array"),
    (lambda: EngineConfig(preemption_mode=np.array(["swap", "recompute"])), ValueError,
     r"^preemption_mode: expected one of"),
    (lambda: EngineConfig(allocation=np.array(["predictive"])), ValueError,
     r"^allocation: expected one of \('on_demand', 'predictive'\), got array"),
    (lambda: EngineConfig(kv_scale_scheme="bogus"), ValueError,
     r"^kv_scale_scheme: expected one of \('static', 'per_token'\), got 'bogus'"),
    (lambda: ModelConfig(rope_theta=10**400), ValueError, r"^rope_theta: expected a finite "
                                                          r"number > 0"),
    (lambda: ModelConfig(rms_norm_eps=10**400), ValueError, r"^rms_norm_eps: expected a finite "
                                                            r"number > 0"),
    (lambda: ModelConfig(rope_scaling={"rope_type": "linear", "factor": 0}), ValueError,
     r"^rope_scaling\['factor'\]: expected a finite number > 0, got 0"),
    (lambda: ModelConfig(rope_scaling={"type": "linear", "factor": float("nan")}), ValueError,
     r"^rope_scaling\['factor'\]: expected a finite number > 0, got nan"),
    (lambda: ModelConfig(rope_scaling={"rope_type": "linear", "factor": "2"}), ValueError,
     r"^rope_scaling\['factor'\]: expected a finite number > 0, got '2'"),
    (lambda: ModelConfig(rope_scaling={"rope_type": "linear", "factor": 10**400}), ValueError,
     r"^rope_scaling\['factor'\]: expected a finite number > 0"),
    (lambda: ModelConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                       "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
     ValueError, r"^rope_scaling: expected low_freq_factor < high_freq_factor, got 4\.0 and 1\.0"),
    (lambda: ModelConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                       "original_max_position_embeddings": 0}),
     ValueError, r"^rope_scaling\['original_max_position_embeddings'\]: expected an int >= 1"),
], ids=["mode-array", "mode-array-2", "allocation-array", "scheme-name", "theta-huge",
        "eps-huge", "factor-zero", "factor-nan", "factor-str", "factor-huge", "llama3-low-high",
        "llama3-context-zero"])
def test_configs_refuse(make, exc, match):
    """A one-name array was taken as the name (and stored as an array); two names failed
    with NumPy's "truth value of an array ... is ambiguous"; a bad kv_scale_scheme was named
    `scale_scheme`, an argument EngineConfig has none of; 10**400 failed in math.isfinite
    with OverflowError, naming nothing. A RoPE factor of 0 or NaN was taken and made every
    logit NaN (the engine then generated token 0 forever); "2" was parsed by np.float32; a
    llama3 scaling with low >= high frequency factors, or a context of 0, changed the
    frequencies silently."""
    with pytest.raises(exc, match=match):
        make()


def test_configs_take_numpy_scalars_and_store_python_ones(tmp_path):
    """np.float32 watermark / rms_norm_eps / rope_theta were refused (SamplingParams takes
    NumPy scalars); NumPy ints and bools were taken but kept, so save_checkpoint failed with
    json's "Object of type int64 is not JSON serializable" after creating the directory."""
    config = ModelConfig(vocab_size=np.int64(128), num_hidden_layers=np.int32(1),
                         tie_word_embeddings=np.True_, eos_token_id=np.int16(3),
                         rms_norm_eps=np.float32(1e-5), rope_theta=np.float32(1e4))
    for name in ("vocab_size", "num_hidden_layers", "eos_token_id", "tie_word_embeddings",
                 "rms_norm_eps", "rope_theta", "head_dim"):
        assert not isinstance(getattr(config, name), np.generic), name
    save_checkpoint(tmp_path, config, random_weights(config, seed=0))
    assert load_checkpoint(tmp_path)[0] == config
    engine_config = EngineConfig(page_size=np.int64(8), watermark=np.float32(0.25),
                                 max_prefill_chunk=np.int32(4), enable_prefix_caching=np.True_)
    assert json.loads(json.dumps(dataclasses.asdict(engine_config)))["page_size"] == 8
    assert engine_config.watermark == 0.25 and engine_config.watermark_pages == 64
