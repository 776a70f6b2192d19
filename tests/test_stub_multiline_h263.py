"""A stub raised over several lines, or on a line longer than the 200 characters of where an
error was raised, is "not attempted" under the grader as in the notebook: the sandbox reads
the whole raising statement and sends its reading with the error (remote_errors.describe);
a NotImplementedError of a library's or of this package's still fails on both sides."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from pagedattn_lab import check
from pagedattn_lab.cpu.kernel import RawKernel
from pagedattn_lab.grading import remote_errors
from pagedattn_lab.grading.escaped_errors import raised_by_stub
from pagedattn_lab.grading.report import FAILED, NOT_ATTEMPTED
from tests.test_grade_protocol import remotely

_LONG_TEST = " or ".join(f"page_size != {n}" for n in range(40))
STUBS = {
    "backslash": "    raise \\\n        NotImplementedError('not yet')\n",
    "parenthesized": "    raise (\n        NotImplementedError())\n",
    "first line over 200 characters": f"    if {_LONG_TEST}: raise NotImplementedError\n",
}


def _answer(tmp_path, body: str):
    """pages_needed(seq_len, page_size) with `body`, from a file (its lines are read back)."""
    source = "def pages_needed(seq_len, page_size):\n" + body
    path = tmp_path / "answer.py"
    path.write_text(source)
    names: dict = {"np": np, "RawKernel": RawKernel}
    exec(compile(source, str(path), "exec"), names)
    return names["pages_needed"]


def _in_notebook(answer):
    with contextlib.redirect_stdout(io.StringIO()):
        return check.pages_needed(answer)


def _under_the_grader(answer) -> dict:
    return remotely("pages_needed", answer, salt=7)["tasks"]["pages_needed"]


def test_the_long_first_line_is_cut_before_it_names_the_error(tmp_path):
    # (else the long-line stub below tests nothing the first line could not tell)
    with pytest.raises(NotImplementedError) as caught:
        _answer(tmp_path, STUBS["first line over 200 characters"])(1, 1)
    assert "NotImplementedError" not in remote_errors.learner_frame(caught.value)


@pytest.mark.parametrize("form", STUBS)
def test_a_stub_over_several_lines_is_not_attempted_in_the_notebook(tmp_path, form):
    assert _in_notebook(_answer(tmp_path, STUBS[form])).status == NOT_ATTEMPTED


@pytest.mark.parametrize("form", STUBS)
def test_a_stub_over_several_lines_is_not_attempted_under_the_grader(tmp_path, form):
    record = _under_the_grader(_answer(tmp_path, STUBS[form]))
    assert record["status"] == NOT_ATTEMPTED, record


LIBRARY = "    return len(memoryview(np.zeros(seq_len, np.float16)).tolist()) // page_size\n"
PACKAGE = ("    RawKernel('extern \"C\" __global__ void k() {}', 'k',\n"
           "              enable_cooperative_groups=True)\n")


@pytest.mark.parametrize("body", [LIBRARY, PACKAGE], ids=["library", "package"])
def test_a_library_or_package_not_implemented_fails_on_both_sides(tmp_path, body):
    answer = _answer(tmp_path, body)
    assert _in_notebook(answer).status == FAILED
    record = _under_the_grader(answer)
    assert record["status"] == FAILED, record
    assert "NotImplementedError" in record["summary"], record


def _described(tmp_path, body: str) -> dict:
    translation = remote_errors.ErrorTranslation()
    translation.strict = False
    translation.init_errors()
    with pytest.raises(NotImplementedError) as caught:
        _answer(tmp_path, body)(1, 1)
    return translation.describe(caught.value)


def test_the_sandbox_sends_its_reading_of_the_statement(tmp_path):
    assert _described(tmp_path, STUBS["backslash"])["stub"] is True
    assert _described(tmp_path, LIBRARY)["stub"] is False


def _rebuilt(info: dict) -> BaseException:
    judge = remote_errors.ErrorTranslation()
    judge.strict = True
    judge.init_errors()
    return judge.exception(info)


def test_a_message_without_the_reading_falls_back_to_the_first_line():
    first_line = " (in your code, line 2: raise \\)"
    older = _rebuilt({"type": "NotImplementedError", "message": "not yet", "where": first_line})
    assert raised_by_stub(older) is False
    read = _rebuilt({"type": "NotImplementedError", "message": "not yet", "where": first_line,
                     "stub": True})
    assert raised_by_stub(read) is True


def test_a_learner_attribute_does_not_replace_the_sandboxs_reading():
    info = {"type": "NotImplementedError", "message": "format e", "stub": False,
            "where": " (in your code, line 5: memoryview(k).tolist())",
            "attrs": {"remote_stub": True}}
    assert raised_by_stub(_rebuilt(info)) is False


def test_a_learner_attribute_does_not_replace_where_the_sandbox_saw_it_raised():
    where = " (in your code, line 5: memoryview(k).tolist())"
    info = {"type": "ValueError", "message": "bad", "where": where,
            "attrs": {"remote_frame": " (in your code, line 1: pass)"}}
    assert _rebuilt(info).remote_frame == where
