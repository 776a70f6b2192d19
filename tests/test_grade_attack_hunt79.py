"""The grader attacked from the learner's side (hunt 79).

wire.decode let errors other than ProtocolError out on values no honest sender makes: a dtype
NumPy does not know or of no size, a complex of text, an array of the package's class whose
"attributes" are its shape or strides, a shared list named by a list (NumPy's or Python's
TypeError, ValueError, AttributeError); and it built text arrays of no Unicode character,
whose every str() then raised SystemError. Inside a check that only failed a case; but the
sandbox's events are decoded and read by the judge's main loop, which expects ProtocolError
only: the judge died, its report with it, and every task read "not run: the grader's judge
failed", erasing the verdicts of the checks the notebook had already failed.

The sandbox could not describe an exception whose __str__ raises (an honest learner's class
reading a field it never set) or holding an attribute that raises when the wire asks what it
is: the judge never got its answer, the check was cut short ("not run") and under the grader
every later check met "a check cannot run inside another check"; in the notebook the check
itself crashed. An ExceptionGroup reached the judge as "raised TypeError:
BaseExceptionGroup.__new__() takes exactly 2 arguments", naming nothing the learner wrote.
"""
import contextlib
import io

import pytest

from pagedattn_lab import check
from pagedattn_lab.grading import checks_addressing, remote_errors, runner, wire
from tests.test_grade_protocol import remotely

COUNTED = {"$nd": 0, "dtype": "<f4", "shape": [2],
           "cls": f"{checks_addressing.__name__}:_Counted"}
BLOBS = [b"\x00" * 8, b"", b"\xff\xff\x11\x00", b"\x00\x11\xff\xff"]
MALFORMED = {"unknown dtype": {"$dtype": "garbage"},
             "array of an unknown dtype": {"$nd": 0, "dtype": "garbage", "shape": [1]},
             "scalar of an unknown dtype": {"$np": 0, "dtype": "(", "shape": []},
             "numpy type of an unknown dtype": {"$nptype": "xx"},
             "array of an empty dtype": {"$nd": 1, "dtype": "<U0", "shape": [3]},
             "scalar of an empty dtype": {"$np": 1, "dtype": "|S0"},
             "text past the last code point": {"$nd": 2, "dtype": "<U1", "shape": [1]},
             "text past the last code point, big-endian": {"$np": 3, "dtype": ">U1"},
             "complex of text": {"$complex": ["a", 1]},
             "complex of a dict": {"$complex": [{}, 1]},
             "complex past any float": {"$complex": [10 ** 400, 1]},
             # a package's array class with attributes that are no counters of its own
             "array whose shape is set": dict(COUNTED, attrs=[["shape", [3]]]),
             "array whose strides are set": dict(COUNTED, attrs=[["strides", [400]]]),
             "array whose T is set": dict(COUNTED, attrs=[["T", 1]]),
             "array attributes that are no list": dict(COUNTED, attrs=5),
             "array sharing a list by a list": dict(COUNTED, attrs=[["counter",
                                                                    {"$shared": [1]}]])}


@pytest.mark.parametrize("tree", MALFORMED.values(), ids=MALFORMED)
def test_a_malformed_value_is_a_protocol_error(tree):
    with pytest.raises(wire.ProtocolError):
        wire.decode(tree, BLOBS, remote_errors.no_deref)


def test_a_malformed_event_after_a_failed_check_leaves_the_verdict_standing():
    def learner(peer):
        def wrong(num_tokens, page_size):
            return 0
        runner.forwarder(peer, "pages_needed")(wrong)
        for tree in MALFORMED.values():   # a cell error's data, or what the error says
            peer.channel.send({"t": "ev", "ev": "cell_error", "data": tree}, BLOBS)
            peer.channel.send({"t": "ev", "ev": "cell_error",
                               "data": {"$dict": [["evalue", tree]]}}, BLOBS)
        peer.event("finished")

    report = remotely("pages_needed", learner=learner)
    assert report["tasks"]["pages_needed"]["status"] == "failed", report
    assert report["finished"] and report["broken"] is None, report


class UnprintableError(Exception):   # an honest learner's bug: __str__ reads a missing field
    def __str__(self):
        return self.detail


class Unsendable:   # an attribute that raises when the wire asks it what it is
    def __getattr__(self, name):
        raise RuntimeError("no attributes here")


class UnsendableError(Exception):
    def __init__(self):
        super().__init__("the pages ran out")
        self.payload = Unsendable()


@pytest.mark.parametrize("error, said", [(UnprintableError, "UnprintableError"),
                                         (UnsendableError, "the pages ran out")])
def test_an_exception_the_sandbox_cannot_describe_still_fails_the_task(error, said):
    def pages_needed(num_tokens, page_size):
        raise error()

    report = remotely("pages_needed", pages_needed)
    assert not report["learner_errors"], report
    entry = report["tasks"]["pages_needed"]
    assert entry["status"] == "failed" and said in entry["summary"], entry


def test_an_unprintable_exception_fails_the_task_in_the_notebook():
    def pages_needed(num_tokens, page_size):
        raise UnprintableError()

    with contextlib.redirect_stdout(io.StringIO()):
        result = check.pages_needed(pages_needed)
    assert result.status == "failed", result
    assert "UnprintableError whose str() raised AttributeError" in result.summary


def test_an_exception_group_is_named_as_the_learner_raised_it():
    def pages_needed(num_tokens, page_size):
        raise ExceptionGroup("both pools ran out", [ValueError("k"), KeyError("v")])

    entry = remotely("pages_needed", pages_needed)["tasks"]["pages_needed"]
    assert entry["status"] == "failed", entry
    assert "raised ExceptionGroup: both pools ran out (2 sub-exceptions)" in entry["summary"]
