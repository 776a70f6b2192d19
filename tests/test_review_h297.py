"""Last read (helper 297): the puzzles' write-count hint claims that several threads wrote one
element only where the counts show it. A kernel that stores a NaN itself (one element, each
written once) was told "only 44 of its 45 elements hold a value: several threads wrote the
same element": the output's fill was a plain NaN, so a NaN stored read as an element never
written. The runner now fills the outputs with the poison (kernel_runner.poisoned) and counts
the elements written by its bit pattern."""
from tests.check_helpers import assert_caught, kernel_mutant

_STORE = "scores[t] = dot;"


def test_a_nan_stored_once_is_not_an_overwrite():
    source = kernel_mutant("puzzle_shared",
                           [(_STORE, "scores[t] = t == 0 ? dot * 0.0f / 0.0f : dot;")])
    assert_caught("puzzle_shared", source, "or your code made a NaN",
                  not_phrases=("several threads wrote the same element",))


def test_an_overwrite_with_an_element_left_unwritten_is_still_named():
    # every thread's store lands one element back, thread 0's at t = 0 as well: n writes for
    # n elements, element n - 1 never written, element 0 twice (a fix that named overwrites
    # only past n writes would lose this one)
    source = kernel_mutant("puzzle_shared", [(_STORE, "scores[t > 0 ? t - 1 : 0] = dot;")])
    assert_caught("puzzle_shared", source, "several threads wrote the same element")
