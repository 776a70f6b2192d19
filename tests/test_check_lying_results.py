"""Results that lie about their value: an int or bytes subclass, or any object, whose == says
True to everything. Under the instructor's grader they cross the wire as plain data (or as a
handle, which equals nothing); in the notebook the check itself must turn them into plain
values before comparing, or a wrong answer passes."""
import contextlib
import io

from pagedattn_lab import check


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


class LyingInt(int):
    __eq__, __ne__ = AlwaysEqual.__eq__, AlwaysEqual.__ne__
    __hash__ = int.__hash__


class LyingBytes(bytes):
    __eq__, __ne__ = AlwaysEqual.__eq__, AlwaysEqual.__ne__
    __hash__ = bytes.__hash__


def _run(task, answer):
    with contextlib.redirect_stdout(io.StringIO()):
        return getattr(check, task)(answer)


def test_block_hashes_that_only_say_they_are_equal_fail():
    assert not _run("block_hashes", lambda tokens, page_size:
                    [LyingBytes(b"x")] * (len(tokens) // page_size)).passed
    assert not _run("block_hashes", lambda tokens, page_size:
                    [AlwaysEqual()] * (len(tokens) // page_size)).passed


def test_a_lying_page_size_fails():
    assert not _run("choose_page_size", lambda lens, candidates, max_waste:
                    LyingInt(candidates[0])).passed


def test_a_lying_num_computed_fails():
    def lookup(hashes, cached, num_tokens, page_size):
        pages = []
        for h in hashes:
            if h not in cached:
                break
            pages.append(cached[h])
        return pages, LyingInt(0)   # num_computed never computed
    assert not _run("cached_prefix", lookup).passed


def _counting_allocator(lying: bool):
    """A right allocator whose ref_count is always 1 (fork and shared frees never count);
    `lying`: it returns the 1 as a LyingInt."""
    class Allocator:
        def __init__(self, num_pages):
            from pagedattn_lab.paging import BlockAllocator
            self._real = BlockAllocator(num_pages)

        def __getattr__(self, name):
            return getattr(self._real, name)

        def ref_count(self, page):
            count = 1 if self._real.ref_count(page) else 0
            return LyingInt(count) if lying else count
    return Allocator


def test_lying_ref_counts_fail():
    assert not _run("refcounts", _counting_allocator(lying=False)).passed
    assert not _run("refcounts", _counting_allocator(lying=True)).passed
