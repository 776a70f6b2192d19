"""padding_reads.conversions_watched: contexts that overlap (two grader threads, or contexts
closed out of order) leave NumPy's conversions watching while any is open, and NumPy's own
once the last closes. Before, each context put back what it found on entering: the first to
close took the watch from the other's gather, the last left NumPy's conversions replaced."""
import numpy as np

from pagedattn_lab.grading.padding_reads import CONVERSIONS, conversions_watched

NUMPYS_OWN = {name: getattr(np, name) for name in CONVERSIONS}


def _numpys_own() -> bool:
    return {name: getattr(np, name) for name in CONVERSIONS} == NUMPYS_OWN


def test_overlapping_contexts_closed_out_of_order_give_numpy_its_own_conversions_back():
    first, second = conversions_watched(), conversions_watched()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not _numpys_own()   # the second context's gather still sees through np.asarray
    second.__exit__(None, None, None)
    assert _numpys_own()


def test_nested_contexts_give_numpy_its_own_conversions_back_after_an_error():
    try:
        with conversions_watched():
            with conversions_watched():
                raise RuntimeError("the learner's own error")
    except RuntimeError:
        pass
    assert _numpys_own()
