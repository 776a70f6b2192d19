"""The check's poison, a signalling NaN (kernel_runner.POISON_BITS), left where a kernel
rightly writes nothing: comparing that output is silent. Its cast to float64 raised NumPy's
"invalid value encountered in cast" on the console, naming nothing, in every decode
partition case (the partitions past a sequence's end are never written)."""
import warnings

import numpy as np
import pytest

from pagedattn_lab.grading.compare import describe_difference, diagnose, matches
from pagedattn_lab.grading.kernel_runner import poisoned, unwritten


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def output_and_reference():
    """A [2, 3] output whose last column was never written, and its reference (NaN there,
    as the reference partials of an unused partition are)."""
    out = poisoned((2, 3))
    out[:, :2] = [[1.0, 2.0], [3.0, 4.0]]
    ref = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan]])
    return out, ref


def test_poison_outside_the_mask_compares_equal_silently():
    out, ref = output_and_reference()
    used = np.array([True, True, False])
    assert describe_difference(out, ref, ("row", "col"), mask=used) is None
    assert matches(out, ref, mask=used)
    assert diagnose(out, ref, [("a hint", ref + 1)], mask=used) is None


def test_poison_where_compared_is_reported_as_never_written_silently():
    out, ref = output_and_reference()
    ref[:, 2] = 5.0
    diff = describe_difference(out, ref, ("row", "col"), unwritten=unwritten(out))
    assert "2 of them were never written" in diff.message()


def test_the_decode_partition_case_passes_the_solution_silently():
    from pagedattn_lab.grading.checks_kernels import _Compiled
    from tests.check_helpers import solution_source
    from tests.test_grade_attack_hunt136 import _partition_case
    honest = solution_source("06_decode_kernel.ipynb", "SOURCE_PARTITION")
    _partition_case(_Compiled(honest, "decode_partition", "cpu"))
