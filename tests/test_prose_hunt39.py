"""What lessons 07-13 say, held to the package and to the committed results (hunt 39).

Each test ties a sentence (or a code comment) that was wrong to what the package computes or
the committed benchmark records, so that it does not come back.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pagedattn_lab.engine.attention as step_attention
from pagedattn_lab.attention_prefill import TILED_HEAD_DIMS
from pagedattn_lab.viz import costs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _cell(lesson: str, index: int) -> str:
    nb = json.loads((ROOT / "notebooks" / lesson).read_text(encoding="utf-8"))
    return "".join(nb["cells"][index]["source"])


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_lesson_08_gives_decode_the_intensity_of_the_benchmarks_grouped_rows():
    """Lesson 08, section 4 said "Decode sits at 1 to 4: memory bound on either". The run the
    lesson reads (2026-12-01) also times GQA 64/8 and MQA 16/1, at 8 and ~16 FLOP per byte:
    16 is the CUDA cores' ridge the same cell computes (67 / 4.12), as lesson 09, section 1,
    counts."""
    run = json.loads((RESULTS / "2026-12-01_H200_bench.json").read_text())
    grouped = {(r["workload"], r["shape"]) for r in run["results"]
               if r.get("kind") == "decode" and r["workload"] in ("D64-gqa8", "D64-mqa16")}
    assert len(grouped) == 2
    intensities = []
    for _, shape in grouped:
        heads, kv = map(int, re.search(r"(\d+)/(\d+) heads", shape).groups())
        cost = costs.decode_cost(batch=64, tokens=149_713, num_heads=heads, num_kv_heads=kv,
                                 head_dim=128, dtype="float16")
        intensities.append(cost.intensity)
    ridge = 67e12 / run["copy_bandwidth_GBps"] / 1e9
    assert max(intensities) > 4 and max(intensities) > 0.95 * ridge
    text = _flat(_cell("08_pitfalls_and_performance.ipynb", 19))
    assert "Decode sits at 1 to 4" not in text
    assert "4 to 16 for the benchmark's grouped rows" in text


def test_lesson_12_names_the_prefill_kernel_its_tiny_model_runs():
    """Lesson 12, section 2 said prompt chunks run on "the prefill kernel (lesson 05)": the
    lesson's float32 model has head_dim 16, and the engine sends chunks of a head size the
    tiled kernel does not take to lesson 04's naive kernel."""
    from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                      random_weights, tiny_config)

    config = tiny_config()
    assert config.head_dim not in TILED_HEAD_DIMS
    engine = LLMEngine(LlamaModel(config, random_weights(config, seed=0), device="cpu"),
                       EngineConfig(page_size=4, num_pages=16, max_num_batched_tokens=32))
    kernels = []
    real = step_attention.paged_attention_prefill

    def spy(*args, **kwargs):
        kernels.append(kwargs.get("kernel"))
        return real(*args, **kwargs)

    step_attention.paged_attention_prefill = spy
    try:
        engine.add_request(list(range(10)), SamplingParams(max_tokens=1, ignore_eos=True))
        engine.step()
    finally:
        step_attention.paged_attention_prefill = real
    assert kernels and set(kernels) == {"naive"}
    text = _flat(_cell("12_serving_engine.ipynb", 4))
    assert "prompt chunks with the prefill kernel (lesson 05)" not in text
    assert "lesson 04's naive kernel" in text


def test_lesson_07_comment_says_what_the_admission_test_checks():
    """Lesson 07's loop admitted a request only when its whole length (prompt and tokens to
    generate) fits beside what the running sequences will still take; its comment said "while
    their prompt fits"."""
    code = _cell("07_complete_system.ipynb", 6)
    assert "-(-(prompt + gen) // page_size) + pages_still_needed()" in code
    assert "while their prompt fits" not in code


def test_lesson_08_names_the_key_the_bench_records_its_flush_under():
    """Lesson 08, section 5 said the bench records its flush "in every JSON file it writes
    (`meta["l2_flush"]`)": `python -m pagedattn_lab.bench` writes no "meta"; its flush is the
    top-level "l2_flush" beside "timing". Only `bench.quant` nests it under "meta"."""
    import inspect

    from pagedattn_lab.bench import run

    bench = json.loads((RESULTS / "2026-12-04_H200_session13_bench.json").read_text())
    quant = json.loads((RESULTS / "2026-12-04_H200_session13_quant.json").read_text())
    assert "meta" not in bench and bench["l2_flush"] == "write" and "timing" in bench
    assert quant["meta"]["l2_flush"] == "write"
    assert '"l2_flush": l2_flush' in inspect.getsource(run.metadata)
    text = _flat(_cell("08_pitfalls_and_performance.ipynb", 30))
    assert 'records it in every JSON file it writes (`meta["l2_flush"]`)' not in text
    assert '(`"l2_flush"`, beside `"timing"`' in text
