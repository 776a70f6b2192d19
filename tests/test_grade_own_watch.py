"""own_watch.Watch switches the code of the task's answer functions and of the grader's
expected values while a check runs: a call reached through an object built before the check
is seen, and the functions are what they were after the check, whatever happened in it."""
import inspect
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import PagedKVCache, check, reference
from pagedattn_lab.grading import own_watch


def _codes(keys=None):
    """The code of every function at the top of the package's modules (of `keys` only: the
    check imports more)."""
    codes = {(name, fn.__name__): fn.__code__ for name, module in list(sys.modules.items())
            if name.startswith("pagedattn_lab") and module is not None
            for fn in list(vars(module).values()) if callable(fn) and hasattr(fn, "__code__")}
    return codes if keys is None else {k: v for k, v in codes.items() if k in keys}


HIDDEN = {"attend": reference.reference_prefill}   # built before the check


def attend_through_a_dict(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
    q = np.zeros((1, t + 1, k_cache.shape[2], k_cache.shape[3]))
    q[0, t, kv_head] = q_vec
    out = HIDDEN["attend"](q, k_cache, v_cache, np.asarray(row, np.int32)[None],
                          np.array([t + 1], np.int32), scale)
    return out[0, t, kv_head]


def test_the_reference_through_a_dict_fails_and_every_function_is_put_back(monkeypatch):
    with monkeypatch.context() as unwatched:   # a working answer: only the Watch fails it
        unwatched.setattr(own_watch, "answers", lambda task: {})
        unwatched.setattr(own_watch, "_expected_values", lambda: [])
        assert check.attend_one(attend_through_a_dict).status == "passed"
    before = _codes()
    result = check.attend_one(attend_through_a_dict)
    assert result.status == "failed"
    lines, first = inspect.getsourcelines(attend_through_a_dict)
    line = first + next(i for i, text in enumerate(lines) if 'HIDDEN["attend"]' in text)
    assert f"line {line} of attend_through_a_dict called pagedattn_lab.reference." \
        "reference_prefill" in result.messages[-1], result.messages
    assert _codes(before) == before and own_watch._SWITCHED == {}


def test_an_answer_that_raises_leaves_every_function_as_it_was():
    before = _codes()

    def broken(*args):
        raise RuntimeError("mine")
    assert check.attend_one(broken).status == "failed"
    assert _codes(before) == before and own_watch._SWITCHED == {}


def test_a_watch_inside_a_watch_reports_to_the_outer_and_does_not_loop():
    with own_watch.Watch("attend_one") as outer:
        with own_watch.Watch("attend_one") as inner:
            HIDDEN["attend"](np.zeros((1, 1, 1, 2)), np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2)),
                             np.zeros((1, 1), np.int32), np.array([1], np.int32), 1.0)
    assert inner.found == [] and len(outer.found) == 1
    assert own_watch._SWITCHED == {}


def test_a_call_in_another_thread_as_the_watch_ends_still_runs():
    results, stop = [], threading.Event()

    def caller():
        while not stop.is_set():
            results.append(reference.reference_decode(
                np.ones((1, 1, 2)), np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2)),
                np.zeros((1, 1), np.int32), np.array([1], np.int32), 1.0)[0, 0, 0])
    thread = threading.Thread(target=caller)
    thread.start()
    for _ in range(200):
        with own_watch.Watch("attend_one"):
            pass
    stop.set()
    thread.join()
    assert results and all(r == 1.0 for r in results)


PAGES = {"needed": PagedKVCache.pages_needed}   # the package's method, held before the check


def next_page_through_a_dict(cache, seq_id):
    return PAGES["needed"](cache, seq_id, 1)


def test_an_answer_method_held_in_a_dict_is_refused(monkeypatch):
    with monkeypatch.context() as unwatched:   # a working answer: only the Watch fails it
        unwatched.setattr(own_watch, "answers", lambda task: {})
        assert check.pages_for_next_token(next_page_through_a_dict).status == "passed"
    result = check.pages_for_next_token(next_page_through_a_dict)
    assert result.status == "failed"
    assert "called pagedattn_lab.cache.PagedKVCache.pages_needed" in result.messages[-1]


def test_a_watch_interrupted_as_it_starts_puts_back_what_it_switched(monkeypatch):
    real, calls = own_watch._TRAMPOLINE, []

    class Interrupted:   # the third function's switch meets a KeyboardInterrupt
        co_consts = real.co_consts

        def replace(self, **fields):
            calls.append(fields)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real.replace(**fields)
    before = _codes()
    with monkeypatch.context() as patched:
        patched.setattr(own_watch, "_TRAMPOLINE", Interrupted())
        with pytest.raises(KeyboardInterrupt):
            with own_watch.Watch("attend_one"):
                pass
    assert _codes(before) == before and own_watch._SWITCHED == {}
    with own_watch.Watch("attend_one") as watch:   # and the next check still watches them
        HIDDEN["attend"](np.zeros((1, 1, 1, 2)), np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2)),
                         np.zeros((1, 1), np.int32), np.array([1], np.int32), 1.0)
    assert len(watch.found) == 1


def test_a_cell_run_from_inside_the_package_folder_is_the_learners_code(monkeypatch):
    monkeypatch.chdir(Path(reference.__file__).parent)   # IPython started in the package
    own_watch.in_package.cache_clear()
    cell = {"HIDDEN": HIDDEN, "np": np}
    exec(compile("def attend(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):\n"
                 "    q = np.zeros((1, t + 1, k_cache.shape[2], k_cache.shape[3]))\n"
                 "    q[0, t, kv_head] = q_vec\n"
                 "    return HIDDEN['attend'](q, k_cache, v_cache, np.asarray(row, np.int32)"
                 "[None], np.array([t + 1], np.int32), scale)[0, t, kv_head]\n",
                 "<ipython-input-3-0123456789ab>", "exec"), cell)
    try:
        result = check.attend_one(cell["attend"])
    finally:
        own_watch.in_package.cache_clear()
    assert result.status == "failed"
    assert "line 4 of attend called pagedattn_lab.reference.reference_prefill" \
        in result.messages[-1], result.messages


def test_a_learner_file_in_a_folder_beside_the_package_is_named_in_messages():
    """The learner's line was looked for by a prefix of the package's path: a file of
    `pagedattn_lab_notes/` counted as the package's, and the message lost its location."""
    from pagedattn_lab.grading import escaped_errors, remote_errors
    beside = own_watch._ROOT.parent / (own_watch._ROOT.name + "_notes") / "answer.py"
    code = compile("def answer():\n    raise ValueError('mine')\n", str(beside), "exec")
    scope = {}
    exec(code, scope)
    try:
        scope["answer"]()
    except ValueError as exc:
        assert escaped_errors.where_raised(exc).startswith(" (in answer.py, line 2")
        assert remote_errors.learner_frame(exc).startswith(" (in answer.py, line 2")


@pytest.mark.parametrize("namespace", [{"__name__": "__main__"}, {}])
def test_a_learner_function_compiled_under_a_package_files_name_is_the_learners(namespace):
    """A cell compiled as if it were reference.py was package code to the Watch and to the
    source scan: the reference called through a name built at run time passed."""
    cell = {**namespace, "HIDDEN": HIDDEN, "np": np}
    exec(compile("def attend(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):\n"
                 "    q = np.zeros((1, t + 1, k_cache.shape[2], k_cache.shape[3]))\n"
                 "    q[0, t, kv_head] = q_vec\n"
                 "    return HIDDEN['attend'](q, k_cache, v_cache, np.asarray(row, np.int32)"
                 "[None], np.array([t + 1], np.int32), scale)[0, t, kv_head]\n",
                 reference.__file__, "exec"), cell)
    result = check.attend_one(cell["attend"])
    assert result.status == "failed"
    assert "line 4 of attend called pagedattn_lab.reference.reference_prefill" \
        in result.messages[-1], result.messages


def test_a_cell_compiled_under_a_package_files_name_in_an_ipython_like_main_is_the_learners(
        monkeypatch):
    """The grader's sandbox runs cells in IPython, whose namespace is sys.modules['__main__']
    's own: such a cell ran "in its module's own namespace" and passed as package code."""
    main = type(sys)("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)   # as InteractiveShell does
    main.__dict__.update(HIDDEN=HIDDEN, np=np)
    exec(compile("def attend(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):\n"
                 "    q = np.zeros((1, t + 1, k_cache.shape[2], k_cache.shape[3]))\n"
                 "    q[0, t, kv_head] = q_vec\n"
                 "    return HIDDEN['attend'](q, k_cache, v_cache, np.asarray(row, np.int32)"
                 "[None], np.array([t + 1], np.int32), scale)[0, t, kv_head]\n",
                 reference.__file__, "exec"), main.__dict__)
    assert not own_watch.package_code(main.attend.__code__, main.__dict__)
    result = check.attend_one(main.attend)
    assert result.status == "failed"
    assert "line 4 of attend called pagedattn_lab.reference.reference_prefill" \
        in result.messages[-1], result.messages


def test_an_error_in_a_cell_compiled_under_a_package_files_name_is_located_there():
    """The message's location skipped such a frame by its file name and named an outer one."""
    from pagedattn_lab.grading import escaped_errors, remote_errors
    cell = {"__name__": "__main__"}
    exec(compile("def answer():\n    raise ValueError('mine')\n", reference.__file__, "exec"),
         cell)
    try:
        cell["answer"]()
    except ValueError as exc:
        where = Path(reference.__file__).name
        assert escaped_errors.where_raised(exc).startswith(f" (in {where}, line 2")
        assert remote_errors.learner_frame(exc).startswith(f" (in {where}, line 2")
