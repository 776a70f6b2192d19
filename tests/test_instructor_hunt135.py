"""An instructor grading a folder of submissions: every file handed in has a row, the
cases can be met again (--seed), and the command line says what its table and exit status
mean."""
import shutil
from pathlib import Path

import nbformat
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading import seeds
from pagedattn_lab.grading.table import NOTEBOOK_ROW

REPO = Path(__file__).resolve().parents[1]

# right on the fixed cases of paged_waste (4 requests or fewer), wrong on its random ones:
# the failure's expected and got values are then those of the salted case
WRONG_ON_RANDOM = """
def paged_waste(seq_lens, page_size):
    if len(seq_lens) > 4:
        return float(seq_lens.sum())
    pages = -(-seq_lens // page_size)
    allocated = pages.sum() * page_size
    return 0.0 if allocated == 0 else float(1 - seq_lens.sum() / allocated)
"""


def _workbook_00(folder: Path, name: str) -> Path:
    nb = nbformat.read(REPO / "solutions" / "00_why_paging.ipynb", as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and c.source.startswith("def paged_waste"))
    nb.cells[i].source = WRONG_ON_RANDOM
    path = folder / name
    nbformat.write(nb, path)
    return path


def test_files_that_are_not_notebooks_are_listed_not_dropped(tmp_path):
    (tmp_path / "a_00_why_paging.ipynb").write_text("{}")
    (tmp_path / "B_00_why_paging.IPYNB").write_text("{}")   # saved by another system
    (tmp_path / "ivan_00_why_paging.py").write_text("x = 1\n")
    (tmp_path / ".DS_Store").write_text("")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.ipynb").write_text("{}")
    others = []
    found = grade.find_notebooks([tmp_path], others)
    assert [name for _, name in found] == ["B_00_why_paging.IPYNB", "a_00_why_paging.ipynb"]
    assert [name for _, name in others] == ["ivan_00_why_paging.py"]


def test_a_file_that_is_not_a_notebook_has_a_row(tmp_path):
    (tmp_path / "empty.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    (tmp_path / "ivan_00_why_paging.py").write_text("def pages_needed(n, p): return n\n")
    table = grade.grade([tmp_path], timeout=60, isolation_level="none")
    (row,) = [r for r in table if r.notebook == "ivan_00_why_paging.py"]
    assert (row.task, row.result) == (NOTEBOOK_ROW, "error")
    assert "not graded" in row.message and ".ipynb" in row.message


def test_submission_salt_is_the_seed_and_the_file():
    one = seeds.submission_salt(7, b"notebook")
    assert one == seeds.submission_salt(7, b"notebook")
    assert one != seeds.submission_salt(8, b"notebook")
    assert one != seeds.submission_salt(7, b"notebook ")
    assert 0 <= one < 2 ** 63


def test_the_same_file_and_seed_meet_the_same_cases(tmp_path):
    shutil.copy(_workbook_00(tmp_path, "a_00_why_paging.ipynb"), tmp_path / "b_00_why_paging.ipynb")

    def paged_waste_messages(seed):
        table = grade.grade([tmp_path], timeout=120, isolation_level="none", seed=seed)
        return [r.message for r in table if r.task == "paged_waste"]

    first = paged_waste_messages(11)
    assert len(first) == 2 and "expected: " in first[0], first
    assert first[0] == first[1]                      # the same file: the same cases
    assert paged_waste_messages(11) == first         # graded again: the same cases
    assert paged_waste_messages(12)[0] != first[0]   # another seed: other cases


@pytest.mark.parametrize("seed", ["-1", "x", str(2 ** 63)])
def test_a_bad_seed_is_refused_by_name_before_grading(tmp_path, capsys, monkeypatch, seed):
    (tmp_path / "a.ipynb").write_text("{}")
    monkeypatch.setattr(grade, "grade", lambda *a, **k: pytest.fail("graded anyway"))
    with pytest.raises(SystemExit) as exited:
        grade.main([str(tmp_path), "--isolation", "none", "--seed", seed])
    assert exited.value.code == 2 and "--seed: expected an int" in capsys.readouterr().err


def test_the_seed_used_is_printed_and_given_to_grade(tmp_path, capsys, monkeypatch):
    (tmp_path / "a.ipynb").write_text("{}")
    seen = {}
    monkeypatch.setattr(grade, "grade", lambda *a, **k: seen.update(k) or [])
    assert grade.main([str(tmp_path), "--isolation", "none"]) == 0
    assert f"--seed {seen['seed']}" in capsys.readouterr().err


def test_help_says_what_the_table_and_the_exit_status_mean(capsys):
    with pytest.raises(SystemExit):
        grade.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("notebook, task, result, message", NOTEBOOK_ROW, "not attempted", "not run",
                  "error", "Exit status: 0", "--seed"):
        assert words in text


def test_the_tables_message_says_expected_and_got():
    from pagedattn_lab.grading.report import FAILED, CaseResult, CheckResult
    case = CaseResult("pages for one sequence", {"seq_len": 1}, FAILED, "pages_needed(1, 16)",
                      "round up.", expected="1", got="0")
    summary = CheckResult("pages_needed", FAILED, [case]).summary
    assert summary == ("pages for one sequence: pages_needed(1, 16) (expected: 1; got: 0) "
                       "Hint: round up.")


def _placeholders_then_allocate(table, seq_len, n_new, page_size, allocator):
    """Grows the table before it asks for the pages: when the allocator then raises
    OutOfPagesError, the table keeps its placeholders (the mistake the check's out-of-pages
    case is there for)."""
    need = -(-(seq_len + n_new) // page_size) - len(table)
    if need > 0:
        table.extend([-1] * need)
        table[-need:] = allocator.allocate(need)


def test_a_table_changed_before_the_learners_code_raises_is_seen_by_the_judge():
    from tests.test_grade_protocol import in_notebook, remotely
    here = in_notebook("append_tokens", _placeholders_then_allocate)
    assert here.status == "failed" and "after the failed append" in here.summary, here.summary
    judged = remotely("append_tokens", _placeholders_then_allocate)["tasks"]["append_tokens"]
    assert (judged["status"], judged["summary"]) == ("failed", here.summary)


def test_a_long_expected_value_leaves_room_for_the_hint_in_the_table():
    from pagedattn_lab.grading.report import FAILED, CaseResult, CheckResult
    from pagedattn_lab.grading.table import MAX_MESSAGE, rows
    case = CaseResult("big", {}, FAILED, "out differs", "the hint.", expected="1, " * 900,
                      got="2, " * 900)
    summary = CheckResult("pages_needed", FAILED, [case]).summary
    (row, _) = rows("a.ipynb", ["pages_needed"],
                    {}, {"tasks": {"pages_needed": {"status": "failed", "summary": summary}},
                         "finished": False}, 60)
    assert len(row.message) <= MAX_MESSAGE and row.message.endswith("Hint: the hint.")


def test_a_table_grown_without_pages_gets_its_own_hint():
    from tests.test_grade_protocol import in_notebook
    summary = in_notebook("append_tokens", _placeholders_then_allocate).summary
    assert "got: table of 4 pages, 1 in use" in summary, summary
    assert "only after allocate(n) returned" in summary and "one allocate(n) call" not in summary
