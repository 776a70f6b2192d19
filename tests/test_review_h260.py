"""Helper 260's review of session 40: the padding watch's name swap undone after an interrupt
that arrives while it swaps the names in; the names of a learner's module reached through a
partial, a decorator or a class; a stub raised over several lines is not attempted."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from pagedattn_lab.grading import padding_reads
from pagedattn_lab.grading.escaped_errors import raised_by_stub
from pagedattn_lab.grading.padding_reads import CONVERSIONS, NUMPYS_OWN, conversions_watched


def test_an_interrupt_while_swapping_in_puts_numpys_own_names_back(monkeypatch):
    swap_in = padding_reads._swap_in
    swapped = []

    def interrupted_after_the_first(namespace, name, value):
        if swapped:
            raise KeyboardInterrupt
        key = swap_in(namespace, name, value)
        if key is not None:
            swapped.append(key)
        return key

    monkeypatch.setattr(padding_reads, "_swap_in", interrupted_after_the_first)
    with pytest.raises(KeyboardInterrupt), conversions_watched():
        pass
    assert swapped, "no name was swapped in before the interrupt"
    assert {name: getattr(np, name) for name in CONVERSIONS} == NUMPYS_OWN
    assert not padding_reads._swapped


def _raised_by(tmp_path, source: str) -> NotImplementedError:
    path = tmp_path / "answer.py"
    path.write_text(source)
    names: dict = {}
    exec(compile(source, str(path), "exec"), names)
    with pytest.raises(NotImplementedError) as caught:
        names["gather"]()
    return caught.value


@pytest.mark.parametrize("stub", [
    "    raise \\\n        NotImplementedError\n",
    "    raise (\n        NotImplementedError('write the gather'))\n",
])
def test_a_stub_raised_over_several_lines_is_not_attempted(tmp_path, stub):
    assert raised_by_stub(_raised_by(tmp_path, "def gather():\n" + stub))


def test_a_library_call_over_several_lines_still_fails_as_raised(tmp_path):
    # (the statement read is the call's, not the function's: its next line names the error)
    source = ("import logging\n\ndef gather():\n    return logging.Handler().emit(\n"
              "        None)\n    raise NotImplementedError\n")
    assert raised_by_stub(_raised_by(tmp_path, source)) is False


ANSWER = '''
from numpy import asarray

def gather(k_cache, row, seq_len):
    return asarray(k_cache)

class Gatherer:
    def __call__(self, k_cache, row, seq_len):
        return asarray(k_cache)
'''


def _timed(fn):   # (a decorator of another module than the learner's)
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)
    return wrapper


@pytest.mark.parametrize("wrap", ["partial", "decorated", "instance"])
def test_the_learners_own_names_are_watched_through_a_wrapper(wrap):
    names: dict = {}
    exec(compile(ANSWER, "<answer>", "exec"), names)
    learner = {"partial": lambda: functools.partial(names["gather"], None),
               "decorated": lambda: _timed(names["gather"]),
               "instance": lambda: names["Gatherer"]()}[wrap]()
    with conversions_watched(learner):
        assert names["asarray"] is not NUMPYS_OWN["asarray"], "the module's asarray unwatched"
    assert names["asarray"] is NUMPYS_OWN["asarray"]
