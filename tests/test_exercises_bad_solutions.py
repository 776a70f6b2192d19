"""`make exercises` on a solutions folder it cannot use: a one-line error naming the file,
and nothing written (not a traceback after half the exercises were replaced)."""
import shutil
from pathlib import Path

import pytest

from pagedattn_lab import exercises

REPO = Path(__file__).resolve().parents[1]


def test_a_solution_that_is_not_json_writes_nothing_and_is_named(tmp_path, capsys):
    solutions, out = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    shutil.copy(next((REPO / "solutions").glob("00_*.ipynb")), solutions)
    (solutions / "99_bad.ipynb").write_text("nope")
    with pytest.raises(SystemExit):
        exercises.main(["--solutions", str(solutions), "--out", str(out)])
    assert "99_bad.ipynb" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_without_solutions_is_an_error_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        exercises.main(["--solutions", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert "no solution notebooks in" in capsys.readouterr().err
