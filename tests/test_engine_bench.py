"""benchmarks/serve_bench.py runs end to end (tiny model, CPU): the GPU run must not be the
first time its code paths execute."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("serve_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_bench_smoke(tmp_path, capsys):
    tiny = ["--model", "tiny", "--device", "cpu", "--requests", "4", "--length-scale", "0.03",
            "--kv-gib", "0.0001", "--budget", "32", "--out", str(tmp_path)]
    assert _bench().main(tiny + ["--sweep", "--no-hf"]) == 0
    result = json.loads((tmp_path / "serve_bench.json").read_text())
    assert result["engine"]["requests_finished"] == 4
    assert len(result["sweep"]) == 9 and result["sweep"][-1]["preemption_mode"] == "swap"
    assert _bench().main(tiny + ["--dry-run"]) == 0
    rows = json.loads((tmp_path / "adaptive_dry_run.json").read_text())["rows"]
    assert {r["allocation"] for r in rows} == {"on_demand", "predictive"}
    assert "engine:" in capsys.readouterr().out
