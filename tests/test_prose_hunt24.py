"""What the course's prose says, held to the package and to the committed results (hunt 24).

A reader follows the markdown of the lessons and workbooks and the README: a call written there
must be one the package takes, a size quoted must be the package's, and a fact about vLLM,
FlashInfer or the GPU must not contradict the package's own code or another lesson. Each entry
of WRONG is a sentence that was there and was wrong, with what is right and where that comes
from; the tests keep it from coming back.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

import pagedattn_lab as pl

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _cells(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [("".join(c["source"]), i) for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "markdown"]


def _markdown():
    """(where, text) of every markdown cell of the lessons and workbooks, and the README."""
    for path in sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("solutions/*.ipynb")):
        for text, i in _cells(path):
            yield f"{path.relative_to(ROOT)}[{i}]", text
    yield "README.md", (ROOT / "README.md").read_text(encoding="utf-8")


def _flat(text: str) -> str:
    """Prose with its line breaks and runs of spaces as one space: a phrase may wrap anywhere."""
    return re.sub(r"\s+", " ", text)


def test_calls_written_in_prose_pass_only_keywords_the_package_takes():
    # `BatchDecodeWrapper(kernel="tensor_core")` (lessons 06 and 09) raised TypeError: the
    # kernel is chosen in plan(), the constructor takes nothing.
    bad = []
    for where, text in _markdown():
        for code in re.findall(r"`([^`\n]+)`", text):
            for name, args in re.findall(r"\b([A-Za-z_]\w*)\(([^()]*)\)", code):
                obj = getattr(pl, name, None)
                if obj is None or not callable(obj):
                    continue
                params = inspect.signature(obj).parameters
                if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    continue
                for kw in re.findall(r"(\w+)\s*=(?!=)", args):
                    if kw not in params:
                        bad.append(f"{where}: `{code}` passes {kw}=, which pl.{name} does not take")
    assert not bad, "\n".join(bad)


def test_lesson_12_states_the_engine_size_it_has():
    text = _cells(ROOT / "notebooks" / "12_serving_engine.ipynb")[0][0]
    stated = int(re.search(r"about ([\d,]+) lines", text).group(1).replace(",", ""))
    actual = sum(len(p.read_text(encoding="utf-8").splitlines())
                 for p in (ROOT / "pagedattn_lab" / "engine").glob("*.py"))
    assert abs(stated - actual) <= 0.03 * actual, (
        f"lesson 12 says the engine is about {stated:,} lines; pagedattn_lab/engine/*.py has "
        f"{actual:,}")


# (file, a phrase that was there, why it is wrong and what says so)
WRONG = [
    ("notebooks/12_serving_engine.ipynb", "Llama 3 instruct has three",
     "Meta-Llama-3-Instruct's generation config lists two end tokens (128001, 128009); "
     "Llama 3.1 added <|eom_id|> 128008 (engine/config.py's list is 3.1's)"),
    ("solutions/13_multi_gpu.ipynb", "output by its rows of W_O",
     "distributed/layer.py multiplies a rank's heads' output by wo[:, rows], its columns of "
     "W_O [hidden, H*D], as lesson 13 says"),
    ("README.md", "one scale per KV head (vLLM's)",
     "vLLM's k_scale / v_scale are one per layer by default, per KV head only on some "
     "backends (lesson 11, section 0)"),
    ("solutions/06_decode_kernel.ipynb", "a thread group of 8-16 threads per token",
     "decode.cu's thread group is head_dim / VEC threads: 4 to 32 (fp32 head_dim 128: 32)"),
    ("solutions/02_page_access.ipynb", "vLLM's \"NHD\"",
     "NHD is FlashInfer's name for the layout (lesson 01); vLLM's classic paged kernels used "
     "another, its FlashAttention backend this order"),
    ("notebooks/09_tensor_core_decode.ipynb", "The unit of work is a **16 × 16 × 16 tile**",
     "WMMA's fp16/bf16 shapes are 16x16x16, 32x8x16 and 8x32x16; the course uses the first"),
    ("notebooks/08_pitfalls_and_performance.ipynb", "reads the benchmark's GQA rows at 88-98%",
     "the 1 x 32k GQA row reads 64% and MQA 16/1 49% of the copy rate: 88-98% holds for the "
     "D64 GQA rows (test below)"),
    ("notebooks/11_kv_compression.ipynb", "Hopper's `mma.sync` has no fp8 form",
     "PTX has mma.sync.m16n8k32 for e4m3 (sm_89+); sm_90 runs it as conversions plus fp16 "
     "HMMA (NOTES.md, session 5): no fp8 tensor-core instruction behind it"),
    ("notebooks/10_tensor_core_prefill.ipynb", "16×16 accumulator, 2·16³ = 8192 FLOPs in one "
     "warp-wide instruction",
     "section 7 of the same lesson: each 16x16x16 WMMA product is two HMMA instructions"),
]


@pytest.mark.parametrize("path, phrase, why", WRONG, ids=[w[1][:40] for w in WRONG])
def test_a_corrected_sentence_does_not_come_back(path, phrase, why):
    p = ROOT / path
    text = (" ".join(t for t, _ in _cells(p)) if p.suffix == ".ipynb"
            else p.read_text(encoding="utf-8"))
    assert _flat(phrase) not in _flat(text), f"{path} says {phrase!r}: {why}"


def test_the_d64_gqa_rows_read_88_to_98_percent_of_copy_in_every_check_of_2026_12_04():
    """Lesson 08's "Where to go next" quotes 88-98% for the D64 GQA rows (head_dim 128 and
    256) across the lent H200s; the rows outside D64 (1 x 32k, MQA) read far less."""
    rows = ("D64-gqa4", "D64-gqa8", "D64-gqa8-p64", "D64-gqa4-d256")
    files = sorted(RESULTS.glob("2026-12-04_H200_session*_bench.json"))
    assert files
    seen = []
    for f in files:
        for r in json.loads(f.read_text())["results"]:
            if r.get("kernel") == "paged-decode" and r.get("workload") in rows:
                seen.append((f.name, r["workload"], r["pct_copy"]))
    assert seen
    out = [s for s in seen if not 88.0 <= s[2] < 98.5]
    assert not out, f"D64 GQA rows outside 88-98% of copy: {out}"
    text = _flat(" ".join(t for t, _ in _cells(ROOT / "notebooks" /
                                               "08_pitfalls_and_performance.ipynb")))
    assert "D64 GQA rows at 88-98%" in text


def test_the_workbook_06_thread_group_is_the_kernels():
    from pagedattn_lab.viz import decode_map
    import numpy as np

    shapes = [(32, np.float16), (128, np.float16), (128, np.float32), (256, np.float16)]
    sizes = {(d, np.dtype(t).name): decode_map.decode_layout(d, t, part_len=64).tg
             for d, t in shapes}
    assert sizes[(128, "float16")] == 16 and sizes[(128, "float32")] == 32
    assert sizes[(32, "float16")] == 4
    text = _flat(" ".join(t for t, _ in _cells(ROOT / "solutions" / "06_decode_kernel.ipynb")))
    assert "`head_dim / VEC` threads per token" in text
