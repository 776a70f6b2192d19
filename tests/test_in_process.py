"""`rawkernel.in_process()`: the serving engine runs the package's own kernels in this process
on the CPU (no worker fork per launch); every other launch keeps its checked run."""
import threading

import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel, launch
from pagedattn_lab.engine import EngineConfig, LLMEngine, LlamaModel, SamplingParams
from pagedattn_lab.engine.config import tiny_config
from pagedattn_lab.engine.weights import random_weights
from pagedattn_lab.rawkernel import in_process, in_process_on_cpu

FILL = 'extern "C" __global__ void fill(float *x) { x[threadIdx.x] = 1.0f; }\n'


@pytest.fixture
def launches(monkeypatch):
    """(kernel, checked) of every CPU-executor launch made during the test; no race check
    asked for by the environment (PAGEDATTN_LAB_CPU_RACECHECK=1 keeps every launch checked)."""
    monkeypatch.delenv("PAGEDATTN_LAB_CPU_RACECHECK", raising=False)
    seen, real = [], launch.run

    def spy(*args, **kwargs):
        seen.append((kwargs["kernel"], kwargs["checked"]))
        return real(*args, **kwargs)
    monkeypatch.setattr(launch, "run", spy)
    return seen


def test_only_the_packages_kernels_run_in_process_and_only_within_it(launches):
    x = np.zeros(4, np.float32)
    trusted, learners = RawKernel(FILL, "fill", trusted=True), RawKernel(FILL, "fill")
    trusted((1,), (4,), (x,))
    with in_process():
        trusted((1,), (4,), (x,))
        learners((1,), (4,), (x,))                   # not the package's: checked
        trusted((1,), (4,), (x,), checked=True)      # asked for
        trusted._launch((1,), (4,), (x,), count=True)   # counted: the workers count
    assert [checked for _, checked in launches] == [True, False, True, True, True]
    assert x.tolist() == [1.0] * 4


def test_the_setting_ends_with_the_block_and_stays_in_its_thread():
    seen = []
    with in_process():
        worker = threading.Thread(target=lambda: seen.append(in_process_on_cpu()))
        worker.start()
        worker.join()
        assert in_process_on_cpu()
    assert seen == [False] and not in_process_on_cpu()
    with pytest.raises(RuntimeError), in_process():
        raise RuntimeError
    assert not in_process_on_cpu()


def test_the_engine_steps_its_kernels_in_process(launches):
    config = tiny_config()
    engine = LLMEngine(LlamaModel(config, random_weights(config, seed=3), device="cpu"),
                       EngineConfig(num_pages=8, page_size=4))
    (out,) = engine.generate([[3, 1, 4, 1, 5]], SamplingParams(max_tokens=3))
    assert len(out.output_ids) == 3
    assert launches and not any(checked for _, checked in launches), launches
