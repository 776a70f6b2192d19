"""Every workbook: the untouched exercise fails every task, the solution passes every task.

Each notebook runs in its own Jupyter kernel (nbclient), the way a learner runs it; the checks
report to a results file through $PAGEDATTN_LAB_RESULTS, as under the grader.
"""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pagedattn_lab.grading.report import RESULTS_ENV
from pagedattn_lab.lessons import expected_tasks

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(p.name for p in (REPO / "solutions").glob("*.ipynb"))


def run_and_collect(path: Path, tmp_path: Path, monkeypatch) -> tuple[list[dict], list]:
    results = tmp_path / f"{path.parent.name}-{path.stem}.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    lines = results.read_text().splitlines() if results.exists() else []
    return [json.loads(line) for line in lines], errors


@pytest.mark.parametrize("name", NAMES)
def test_untouched_exercise_fails_every_task(name, tmp_path, monkeypatch):
    results, errors = run_and_collect(REPO / "exercises" / name, tmp_path, monkeypatch)
    assert not errors, f"the untouched exercise raised: {errors}"  # not a traceback
    assert [r["task"] for r in results] == expected_tasks(name)
    for r in results:
        assert r["status"] == "not attempted", r
        assert not r["passed"]


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes_every_task(name, tmp_path, monkeypatch):
    results, errors = run_and_collect(REPO / "solutions" / name, tmp_path, monkeypatch)
    assert not errors
    assert [r["task"] for r in results] == expected_tasks(name)
    for r in results:
        assert r["passed"] and r["status"] == "passed", r
        assert r["cases"] and all(c["status"] == "passed" for c in r["cases"])
