"""The package's answer passed inside a C-level wrapper (a partial, a staticmethod, an
lru_cache, an instance whose __call__ it is, a class's partialmethod): the check calls the
wrapper from its own frame, so own_watch.Watch sees a package caller; own_work.python_findings
unwraps it."""
import contextlib
import functools
import io
import types

import pytest

import pagedattn_lab as pl
from pagedattn_lab import check
from pagedattn_lab.engine.kv_manager import _pages_for
from pagedattn_lab.grading import own_copies, own_watch, own_work


class Calls:
    __call__ = staticmethod(_pages_for)


WRAPPED = {"partial": functools.partial(_pages_for),
           "partial of a partial": functools.partial(functools.partial(_pages_for)),
           "staticmethod": staticmethod(_pages_for),
           "lru_cache": functools.lru_cache(_pages_for),
           "an instance whose __call__ it is": Calls()}


@contextlib.contextmanager
def _unwatched(monkeypatch):
    """No task has a finished answer inside (own_work and its Watch see none), output muted."""
    with monkeypatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        for module in (own_work, own_watch):
            patch.setattr(module, "answers", lambda task: {})
        yield


@pytest.mark.parametrize("how", sorted(WRAPPED))
def test_the_packages_answer_in_a_wrapper_is_refused(how, monkeypatch):
    answer = WRAPPED[how]
    with _unwatched(monkeypatch):   # a working answer: only own_work fails it
        assert check.pages_needed(answer).status == "passed"
    with contextlib.redirect_stdout(io.StringIO()):
        result = check.pages_needed(answer)
    assert result.status == "failed", how
    assert "you passed pagedattn_lab.engine.kv_manager._pages_for wrapped in a " \
        f"{type(answer).__name__}" in result.messages[-1]


def test_a_partial_of_the_learners_own_function_passes():
    def mine(seq_len, page_size, extra=0):
        return -(-seq_len // page_size) + extra
    with contextlib.redirect_stdout(io.StringIO()):
        assert check.pages_needed(functools.partial(mine, extra=0)).status == "passed"


class KeepsItInAPartialmethod(pl.PagedAttentionManager):
    decode_step = functools.partialmethod(pl.PagedAttentionManager.decode_step)


def test_a_class_keeping_the_packages_method_in_a_partialmethod_is_refused(monkeypatch):
    with _unwatched(monkeypatch):   # a working answer: only own_work fails it
        assert check.decode_step(KeepsItInAPartialmethod).status == "passed"
    with contextlib.redirect_stdout(io.StringIO()):
        result = check.decode_step(KeepsItInAPartialmethod)
    assert result.status == "failed"
    assert "KeepsItInAPartialmethod.decode_step is pagedattn_lab.manager." \
        "PagedAttentionManager.decode_step: your class does not write it" in result.messages[-1]


def _copy(fn, **changes):
    """`fn`'s code in a new function, as a learner can make it before the check runs."""
    return types.FunctionType(fn.__code__.replace(**changes), {**fn.__globals__,
                                                               "__name__": "__main__"})


COPIED = _copy(_pages_for)


def _uses_a_copy(seq_len, page_size):
    return COPIED(seq_len, page_size)


class KeepsACopy(pl.PagedAttentionManager):
    decode_step = _copy(pl.PagedAttentionManager.decode_step)


@pytest.mark.parametrize("task, answer, said", [
    ("pages_needed", COPIED,
     "you passed a copy of pagedattn_lab.engine.kv_manager._pages_for's code"),
    ("pages_needed", _copy(_pages_for, co_filename="<cell>", co_firstlineno=3),
     "you passed a copy of pagedattn_lab.engine.kv_manager._pages_for's code"),
    ("pages_needed", functools.partial(COPIED),
     "you passed a copy of pagedattn_lab.engine.kv_manager._pages_for's code"),
    ("pages_needed", _uses_a_copy, "of _uses_a_copy uses a copy of "
     "pagedattn_lab.engine.kv_manager._pages_for's code"),
    ("decode_step", KeepsACopy, "KeepsACopy.decode_step is pagedattn_lab.manager."
     "PagedAttentionManager.decode_step: your class does not write it"),
])
def test_a_copy_of_the_packages_code_is_refused(task, answer, said, monkeypatch):
    with _unwatched(monkeypatch):   # a working answer: only own_work fails it
        assert getattr(check, task)(answer).status == "passed"
    with contextlib.redirect_stdout(io.StringIO()):
        result = getattr(check, task)(answer)
    assert result.status == "failed"
    assert said in result.messages[-1]


def test_the_learners_own_function_of_the_same_arithmetic_passes():
    def pages(seq_len, page_size):
        return -(-seq_len // page_size)
    with contextlib.redirect_stdout(io.StringIO()):
        assert check.pages_needed(pages).status == "passed"


def test_the_learners_own_function_of_the_answers_very_code_passes():
    """A learner who types the answer's one line under its parameter names writes the same
    bytecode, constants and names: it was refused as "a copy of _pages_for's code"."""
    def pages_needed(tokens, page_size):
        return -(-tokens // page_size)

    def calls_it(seq_len, page_size):
        return pages_needed(seq_len, page_size)
    assert own_copies.code_key(pages_needed) == own_copies.code_key(_pages_for)
    for answer in (pages_needed, functools.partial(pages_needed), calls_it):
        with contextlib.redirect_stdout(io.StringIO()):
            result = check.pages_needed(answer)
        assert result.status == "passed", result.messages
