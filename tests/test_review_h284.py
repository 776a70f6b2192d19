"""Helper 284: a review of session 42's grader and distributed changes.

1. allocate's IndexError (KeyError) with enough pages free was told "page ids are
   0..num_pages-1; 1..num_pages runs one past the end" whenever the message did not start
   with "pop from": a free list kept as a heap (heapq.heappop of an empty list: "index out
   of range") or read by index, emptied by taking n + 1 pages, got that hint with no page id
   past the pool's last. The hint is now confirmed on a fresh pool of the checked class (not
   type(alloc), a stand-in under the grader): page 0 never handed out, and the error before
   the pool runs dry.
"""
import heapq

import pytest

from tests.check_helpers import run_check, solution_allocator
from tests.test_grade_protocol import remotely

FROM_ONE = "1..num_pages runs one past the end"
AS_LIST = ("self._free = deque(range(num_pages))", "self._free = list(range(num_pages))")


@pytest.mark.parametrize("edits", [
    [AS_LIST, ("self._free.popleft() for _ in range(n)]",
               "heapq.heappop(self._free) for _ in range(n + 1)]"),
     ("self._free.append(page)", "heapq.heappush(self._free, page)")],
    [AS_LIST, ("pages = [self._free.popleft() for _ in range(n)]",
               "pages = [self._free[i] for i in range(n + 1)]; del self._free[:n + 1]")],
], ids=["heap", "indexed_list"])
def test_a_free_list_run_dry_by_n_plus_1_pages_is_not_told_ids_from_1(edits):
    result, printed = run_check("allocator", solution_allocator(edits, heapq=heapq))
    assert not result.passed and "IndexError" in printed, printed
    assert FROM_ONE not in printed, printed


@pytest.mark.parametrize("edits", [
    [("deque(range(num_pages))", "deque(range(1, num_pages + 1))")],
    [AS_LIST, ("self._free = list(range(num_pages))",
               "self._free = list(range(1, num_pages + 1))"),
     ("self._free.popleft() for _ in range(n)]", "heapq.heappop(self._free) for _ in range(n)]"),
     ("self._free.append(page)", "heapq.heappush(self._free, page)")],
], ids=["queue", "heap"])
def test_page_ids_from_1_are_still_named(edits):
    result, printed = run_check("allocator", solution_allocator(edits, heapq=heapq))
    failed = [c for c in result.cases if not c.passed]
    assert failed and FROM_ONE in failed[0].hint, printed


def test_page_ids_from_1_are_named_under_the_grader_too():
    """The fresh pool that confirms the hint is made from the checked class, not from
    type(alloc): under the judge alloc is a stand-in for the learner's instance."""
    impl = solution_allocator([("deque(range(num_pages))", "deque(range(1, num_pages + 1))")])
    summary = remotely("allocator", impl)["tasks"]["allocator"]["summary"]
    assert FROM_ONE in summary, summary
