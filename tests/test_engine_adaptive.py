"""Adaptive page management: waste by page size, and the dry run against the engine itself."""
import numpy as np
import pytest

from pagedattn_lab.engine import EngineConfig, LLMEngine, LlamaModel, SamplingParams, \
    random_weights, tiny_config
from pagedattn_lab.engine.adaptive import choose_page_size, dry_run, tail_waste
from pagedattn_lab.sim import Workload


def test_tail_waste_by_hand():
    # One request: prompt 3, output 2 -> lengths 3, 4, 5 in pages of 4 -> 4, 4, 8 slots held.
    assert tail_waste([3], [2], 4) == pytest.approx(1 - 12 / 16)
    assert tail_waste([3], [2], 1) == 0


def test_page_size_follows_the_lengths():
    long = Workload(num_requests=200).sample()
    short = Workload(num_requests=200, prompt_median=12, output_median=20, prompt_max=64,
                     max_len=128).sample()
    size_long, waste = choose_page_size(*long, max_waste=0.05)
    size_short, _ = choose_page_size(*short, max_waste=0.05)
    assert waste[size_long] <= 0.05 and size_long >= 2 * size_short
    assert all(waste[p] > 0.05 for p in waste if p > size_long)


@pytest.mark.parametrize("allocation, min_preemptions", [("on_demand", 1), ("predictive", 0)])
def test_dry_run_is_the_engines_schedule(rng, allocation, min_preemptions):
    """The model-free replay takes exactly the engine's steps and preemptions."""
    prompts = rng.integers(1, 30, 8)
    outputs = rng.integers(1, 16, 8)
    config = EngineConfig(page_size=4, num_pages=10, max_num_batched_tokens=24,
                          enable_prefix_caching=False, allocation=allocation,
                          initial_output_guess=6)
    run = dry_run(config, prompts, outputs)
    model_config = tiny_config()
    engine = LLMEngine(LlamaModel(model_config, random_weights(model_config), device="cpu"),
                       config)
    engine.generate([rng.integers(0, 128, p).tolist() for p in prompts],
                    [SamplingParams(max_tokens=int(o), ignore_eos=True) for o in outputs])
    s = engine.summary()
    assert run.preemptions >= min_preemptions and run.output_tokens == outputs.sum()
    assert (run.steps, run.preemptions) == (s["steps"], s["preempted_recompute"])
    np.testing.assert_array_equal(run.series["running"], engine.stats.arrays()["running"])


def test_predictive_allocation_trades_memory_for_fewer_preemptions():
    prompts, outputs = Workload(num_requests=150, seed=1).sample()
    runs = {alloc: dry_run(EngineConfig(page_size=16, num_pages=1024, max_num_seqs=256,
                                        max_num_batched_tokens=2048, allocation=alloc,
                                        enable_prefix_caching=False), prompts, outputs)
            for alloc in ("on_demand", "predictive")}
    on_demand, predictive = runs["on_demand"], runs["predictive"]
    assert predictive.preemptions < on_demand.preemptions
    assert predictive.waste_fraction > on_demand.waste_fraction
    assert predictive.mean_running < on_demand.mean_running
