"""The grading command line on awkward inputs: clear errors before any grading, and a
table that names every notebook it was given."""
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading.table import NOTEBOOK_ROW, rows


def test_a_folder_without_notebooks_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path), "--isolation", "none"])
    assert f"{tmp_path}: no *.ipynb notebook" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing/grades.csv", "."])
def test_an_unwritable_out_is_refused_before_grading(tmp_path, capsys, monkeypatch, where):
    (tmp_path / "a.ipynb").write_text("{}")
    monkeypatch.setattr(grade, "grade", lambda *a, **k: pytest.fail("graded anyway"))
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path), "--isolation", "none", "--out", str(tmp_path / where)])
    assert "--out" in capsys.readouterr().err


def test_a_notebook_that_is_not_json_says_so_not_cell_0():
    judge = {"tasks": {}, "cell_errors": [{"cell": -1, "ename": "JSONDecodeError",
                                           "evalue": "could not read the notebook: Expecting"}]}
    (row,) = rows("x.ipynb", [], {}, judge, 60)
    assert row.task == NOTEBOOK_ROW and "cell 0" not in row.message
    assert "could not read the notebook" in row.message and "JSON" in row.message


def test_a_notebook_with_no_tasks_still_has_a_row():
    (row,) = rows("n.ipynb", [], {}, {"tasks": {}, "cell_errors": [], "finished": True}, 60)
    assert row.notebook == "n.ipynb" and "no task was checked" in row.message
