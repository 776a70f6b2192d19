"""A NotImplementedError is "not attempted" only where the learner's line raised it (the
workbook's stub): one raised by a library the learner called, or by this package, is the
answer's error, reported as raised, with where (grading.escaped_errors.raised_by_stub)."""
import contextlib
import fractions
import io
import numbers

import numpy as np

from pagedattn_lab.cpu.kernel import RawKernel
from pagedattn_lab.grading.report import FAILED, NOT_ATTEMPTED, Case, run_cases


def _run(*answers, stop_after_failures=3):
    cases = [Case(f"c{i}", {}, answer) for i, answer in enumerate(answers)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = run_cases("demo", "a demo check", cases,
                           stop_after_failures=stop_after_failures)
    return result, out.getvalue()


def _stub():
    raise NotImplementedError("write this part, then run the check below")


def _float16_memoryview():
    memoryview(np.zeros(4, np.float16)).tolist()   # C: "format e not supported"


class _Fraction(fractions.Fraction):   # numbers.Complex's abstract members raise it
    pass


def _library_python_raise():
    numbers.Complex.real.fget(_Fraction(1))


def test_the_stub_is_not_attempted():
    result, printed = _run(_stub)
    assert result.status == NOT_ATTEMPTED
    assert "Not attempted: write your code in place of the `raise NotImplementedError`" \
        in printed


def test_the_stub_after_a_passing_case_is_a_part_not_written():
    result, printed = _run(lambda: None, _stub)
    assert result.status == FAILED
    assert "part of the task is not written yet" in printed


def test_a_library_not_implemented_from_c_is_the_answers_error():
    result, printed = _run(_float16_memoryview)
    assert result.status == FAILED, printed
    case = result.cases[0]
    assert case.message.startswith("raised NotImplementedError: memoryview: format e")
    assert "memoryview(np.zeros(4, np.float16)).tolist()" in case.message
    assert "not written" not in printed and "Not attempted" not in printed


def test_a_library_not_implemented_from_python_is_the_answers_error():
    result, printed = _run(_library_python_raise)
    assert result.status == FAILED, printed
    assert "numbers.Complex.real.fget" in result.cases[0].message
    assert "not written" not in printed


def test_every_case_runs_after_a_library_not_implemented():
    # (a failure, not a stop: the next cases still run, as after any other error)
    result, _ = _run(_float16_memoryview, lambda: None)
    assert [c.status for c in result.cases] == [FAILED, "passed"]


def test_the_package_own_not_implemented_is_no_stub():
    def cooperative_kernel():   # a learner's launch asking for what the executor lacks
        RawKernel("extern \"C\" __global__ void k() {}", "k", enable_cooperative_groups=True)
    result, printed = _run(cooperative_kernel)
    assert result.status == FAILED, printed
    assert "raised NotImplementedError: the CPU executor does not support cooperative " \
        "groups" in result.cases[0].message
    assert "Not attempted" not in printed


def test_under_the_grader_the_sandbox_line_decides():
    """The judge's rebuilt exception carries the sandbox's line (remote_frame)."""
    from pagedattn_lab.grading.escaped_errors import raised_by_stub
    stub, library = NotImplementedError("write this part"), NotImplementedError("format e")
    stub.remote_frame = " (in your code, line 3: raise NotImplementedError(\"write this\"))"
    library.remote_frame = " (in your code, line 5: memoryview(k).tolist())"
    assert raised_by_stub(stub) and not raised_by_stub(library)


def _tokens_of_float16(seq_len, page_size):
    """A pages_needed answer that calls into a library's missing case."""
    return len(memoryview(np.zeros(seq_len, np.float16)).tolist()) // page_size


def _pages_stub(seq_len, page_size):
    raise NotImplementedError("write this part, then run the check below")


def test_under_the_grader_a_library_not_implemented_fails_and_the_stub_is_not_attempted():
    from tests.test_grade_protocol import remotely
    library = remotely("pages_needed", _tokens_of_float16, salt=7)["tasks"]["pages_needed"]
    assert library["status"] == FAILED, library
    assert "memoryview" in library["summary"], library
    stub = remotely("pages_needed", _pages_stub, salt=7)["tasks"]["pages_needed"]
    assert stub["status"] == NOT_ATTEMPTED, stub
