"""Review of hunts 160-163 (hunt 167): a MemoryError (or any error) raised inside a library's
Python code (NumPy's np.ones) is placed by the frame that called it, the learner's or none."""
import functools

import numpy as np

from pagedattn_lab.grading.report import JUDGE_HEAP, Case, run_cases


def _case(run, monkeypatch, bound_mb: int = 1024):
    monkeypatch.setitem(JUDGE_HEAP, "mb", bound_mb)
    result = run_cases("t", "t", [Case("big", {}, run)], quiet=True)
    return result.cases[0].message, result.cases[0].hint


# np.ones is NumPy's Python code (numeric.py) around np.empty: called through a partial (C),
# the traceback holds the harness's frame and NumPy's, as when a check's own code calls it
_CHECKS_ONES = functools.partial(np.ones, 1 << 55, np.uint8)


def test_a_checks_memory_error_inside_numpys_python_code_is_the_checks(monkeypatch):
    """Before: "(in numeric.py, line 232: a = empty(...))" and "your code built, or returned,
    something much larger...": NumPy's frame was taken for the learner's."""
    message, hint = _case(_CHECKS_ONES, monkeypatch)
    assert "numeric.py" not in message, message
    assert message.endswith("in the check's own code, not in yours: the grader's judge may use "
                            "1024 MiB"), message
    assert "your code built" not in hint, hint


def _learners_ones():
    return np.ones(1 << 55, np.uint8)   # the learner's line, sized by the wrong number


def test_a_learners_call_of_numpy_that_runs_out_is_put_on_the_learners_line(monkeypatch):
    message, hint = _case(_learners_ones, monkeypatch)
    assert "(in test_grader_review_hunt167.py, line" in message and \
        "np.ones(1 << 55" in message and "numeric.py" not in message, message
    assert "your code built" in hint, hint


def test_another_error_inside_numpy_names_the_learners_line_not_numpys(monkeypatch):
    def learners():
        return np.ones((2, -1))   # ValueError inside np.ones' Python code
    message, _ = _case(learners, monkeypatch)
    assert "(in test_grader_review_hunt167.py, line" in message and \
        "np.ones((2, -1))" in message, message


# -- the engine's bound, as dry_run states it (hunt 162 changed add_request's only) ----------
def test_dry_run_serves_what_add_request_accepts_without_prefix_caching():
    """Before: dry_run refused 3 + 2 tokens in one page of 4 ("may need 2 pages"), which
    LLMEngine.add_request accepts and serves (the last token's K/V are never written)."""
    from pagedattn_lab.engine import EngineConfig   # noqa: PLC0415
    from pagedattn_lab.engine.adaptive import dry_run   # noqa: PLC0415
    run = dry_run(EngineConfig(page_size=4, num_pages=1, enable_prefix_caching=False),
                  [3, 2], [2, 3])
    assert run.output_tokens == 5, run.summary()


def test_dry_run_still_keeps_the_copy_on_writes_page_with_prefix_caching():
    import pytest   # noqa: PLC0415
    from pagedattn_lab.engine import EngineConfig   # noqa: PLC0415
    from pagedattn_lab.engine.adaptive import dry_run   # noqa: PLC0415
    with pytest.raises(ValueError, match=r"^prompt_lens\[0\], output_lens\[0\]: 3 \+ 2 tokens "
                                         r"may need 2 pages, more than the pool of 1$"):
        dry_run(EngineConfig(page_size=4, num_pages=1, enable_prefix_caching=True), [3], [2])


# -- a MemoryError of the grader's kernel host, where no code of the learner's runs ----------
def _map_source() -> str:
    from tests.check_helpers import solution_source   # noqa: PLC0415
    return solution_source("03_cuda_onramp.ipynb", "SOURCE_MAP")


def test_a_memory_error_of_the_kernel_host_is_the_checks_under_the_judge_as_in_the_notebook(
        monkeypatch):
    """Before: under the judge it crossed from the kernel host with a `remote_frame` (as if
    from the learner's sandbox) and read "your code built, or returned, something much
    larger..."; the notebook, running the same launch in its own process, said the check's."""
    from pagedattn_lab import check   # noqa: PLC0415
    from pagedattn_lab.cpu import launch   # noqa: PLC0415
    from tests.test_grade_protocol import remotely   # noqa: PLC0415

    source = _map_source()
    assert check.puzzle_map(source, device="cpu").passed   # (compiled once, before the patch)

    # guards of 4 EiB around each argument: no mapping holds them, and the executor's own
    # code raises MemoryError ("cannot map a guarded buffer"), as at the kernel host's limit
    monkeypatch.setattr(launch, "MIN_GUARD", 1 << 62)
    notebook = check.puzzle_map(source, device="cpu").summary
    judged = remotely("puzzle_map", source, device="cpu")["tasks"]["puzzle_map"]["summary"]
    for summary in (notebook, judged):
        assert "in the check's own code, not in yours" in summary, summary
        assert "your code built" not in summary, summary


# -- tc_tile_scores: every score 0 (hunt 163's zero tiles) -----------------------------------
def test_tc_tile_scores_without_mma_names_it_and_nests_no_list_in_a_list():
    """A kernel that never runs mma_sync stores fill_fragment's zeros. Before: the hint named
    only a Q or a K tile of zeros, and at head_dim 16 it read "check each: (1) these mistakes
    give the same scores here, check each: (1) ..." (a several_fit inside a several_fit)."""
    from tests.check_helpers import assert_caught, mutate, solution_source   # noqa: PLC0415
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("wmma::mma_sync(s, a, b, s);", "/* no mma */")])
    _, printed = assert_caught("tc_tile_scores", source, "no product reached the scores stored",
                               device="cpu", not_phrases=("check each: (1) these mistakes",))
    flat = " ".join(printed.split())
    assert "the K tile was all zeros" in flat and "a loop that stops 16 short" in flat, flat
