"""serve_bench.py's transformers comparison end to end (tiny model, CPU; needs torch, so CI
skips it): generate serves the subset with its outputs capped, the engine then serves
exactly the requests generate served, and the ratio compares the two."""
import json

import pytest

from tests.test_engine_bench import _bench

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_generate_and_engine_serve_the_same_capped_subset(tmp_path):
    args = ["--model", "tiny", "--device", "cpu", "--requests", "10", "--length-scale", "0.05",
            "--kv-gib", "0.0002", "--budget", "64", "--hf-requests", "6", "--hf-max-output",
            "9", "--hf-batch", "4", "--out", str(tmp_path)]
    assert _bench().main(args) == 0
    result = json.loads((tmp_path / "serve_bench.json").read_text())
    hf, sub = result["hf"], result["engine_subset"]
    assert hf["done"] == list(range(6)) and hf["batch"] == 4 and hf["batches"] == 2
    assert sub["requests_finished"] == 6 and sub["output_tokens"] == hf["output_tokens"]
    assert sub["prompt_tokens"] == hf["prompt_tokens"]
    assert hf["output_tokens"] <= 6 * 9 <= hf["generated_tokens"] + 6 * 9
    assert result["speedup"] == pytest.approx(sub["tokens_per_s"] / hf["tokens_per_s"], abs=0.01)
    assert result["engine"]["requests_finished"] == 10
