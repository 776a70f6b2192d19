"""BlockAllocator and PagedKVCache: invariants under random operations, and bad input."""
import copy
from collections import deque

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagedattn_lab import BlockAllocator, OutOfPagesError, PagedKVCache
from pagedattn_lab.backend import to_numpy

# -- BlockAllocator --------------------------------------------------------------------


def test_allocate_free_reuse():
    alloc = BlockAllocator(4)
    first = alloc.allocate(3)
    assert sorted(first) == [0, 1, 2] and alloc.num_free == 1 and alloc.num_used == 3
    alloc.free(first[:2])
    assert alloc.num_free == 3
    again = alloc.allocate(3)
    assert set(again) == {3, first[0], first[1]}
    alloc.check_invariants()


def test_out_of_pages_changes_nothing():
    alloc = BlockAllocator(5)
    held = alloc.allocate(3)
    before = copy.deepcopy(alloc.__dict__)
    with pytest.raises(OutOfPagesError, match="requested 3, only 2 of 5 free") as err:
        alloc.allocate(3)
    assert (err.value.requested, err.value.free, err.value.total) == (3, 2, 5)
    assert alloc.__dict__ == before
    assert alloc.allocate(2) and alloc.num_free == 0 and held


def test_double_free_and_foreign_ids_raise_and_change_nothing():
    alloc = BlockAllocator(4)
    pages = alloc.allocate(2)
    alloc.free([pages[0]])
    before = copy.deepcopy(alloc.__dict__)
    with pytest.raises(ValueError, match="already free"):
        alloc.free([pages[0]])
    with pytest.raises(ValueError, match=r"pages\[1\]: page id 7 is not in this allocator"):
        alloc.free([pages[1], 7])
    with pytest.raises(ValueError, match=r"page id -1"):
        alloc.free([-1])
    with pytest.raises(ValueError, match="listed 2 times but has only 1"):
        alloc.free([pages[1], pages[1]])
    with pytest.raises(TypeError, match=r"pages\[0\]: expected an integer page id"):
        alloc.free([1.0])
    assert alloc.__dict__ == before


def test_reference_counts_share_pages():
    alloc = BlockAllocator(3)
    pages = alloc.allocate(2)
    shared = alloc.fork(pages)
    assert shared == pages and alloc.ref_count(pages[0]) == 2
    alloc.free(pages)
    assert alloc.num_free == 1, "a shared page must stay in use while another owner holds it"
    alloc.free(shared)
    assert alloc.num_free == 3
    with pytest.raises(ValueError, match="is free; only a page in use can be shared"):
        alloc.incref([0])
    alloc.check_invariants()


@pytest.mark.parametrize("bad, exc, match", [
    (0, ValueError, "num_pages: expected a positive"),
    (-3, ValueError, "num_pages"),
    (2.5, TypeError, "num_pages: expected an int"),
    (True, TypeError, "num_pages"),
])
def test_allocator_constructor_refuses(bad, exc, match):
    with pytest.raises(exc, match=match):
        BlockAllocator(bad)


def test_allocate_refuses_bad_counts():
    alloc = BlockAllocator(2)
    with pytest.raises(ValueError, match="n: expected a number of pages >= 0"):
        alloc.allocate(-1)
    with pytest.raises(TypeError, match="n: expected an int"):
        alloc.allocate(1.5)
    assert alloc.num_free == 2


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=40))
def test_free_list_order_is_one_fifo_queue(ops):
    """The allocator hands pages out in the order of one FIFO queue that starts 0..n-1 and
    takes freed pages at the back (the learner's deque), however it stores that queue."""
    alloc, model, held = BlockAllocator(6), deque(range(6)), []
    for take, n in ops:
        if take:
            n = min(n, len(model))
            pages = alloc.allocate(n)
            assert pages == [model.popleft() for _ in range(n)]
            held += pages
        else:   # give back the n most recent pages, newest first
            give = held[::-1][:n]
            del held[len(held) - len(give):]
            alloc.free(give)
            model.extend(give)
        assert alloc.free_list() == list(model)
        alloc.check_invariants()


def test_state_and_restore_put_back_the_free_list_and_counts():
    alloc = BlockAllocator(5)
    pages = alloc.allocate(3)
    alloc.fork(pages[:1])
    alloc.free(pages[1:2])
    saved, free_list = alloc.state(), alloc.free_list()
    counts = [alloc.ref_count(p) for p in range(5)]
    alloc.allocate(3)
    alloc.free(pages[:1] * 2)
    alloc.restore(saved)
    assert alloc.free_list() == free_list and [alloc.ref_count(p) for p in range(5)] == counts
    alloc.check_invariants()


# -- PagedKVCache ----------------------------------------------------------------------


def _tokens(rng, n, heads=2, dim=4):
    return (rng.standard_normal((n, heads, dim)).astype(np.float32),
            rng.standard_normal((n, heads, dim)).astype(np.float32))


def test_append_takes_a_page_only_when_the_tail_is_full(rng):
    cache = PagedKVCache(8, 4, 2, 4, device="cpu")
    seq = cache.add_sequence()
    for n_tokens, pages in [(3, 1), (1, 1), (1, 2), (4, 3), (0, 3)]:
        cache.append(seq, *_tokens(rng, n_tokens))
        assert len(cache.block_table(seq)) == pages
    assert cache.seq_len(seq) == 9


def test_sequences_have_their_own_tables_and_read_back(rng):
    cache = PagedKVCache(16, 4, 2, 4, device="cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    ka, va = _tokens(rng, 6)
    kb, vb = _tokens(rng, 9)
    # Interleave appends so the two sequences' pages alternate in the pool.
    cache.append(a, ka[:3], va[:3])
    cache.append(b, kb[:5], vb[:5])
    cache.append(a, ka[3:], va[3:])
    cache.append(b, kb[5:], vb[5:])
    assert not set(cache.block_table(a)) & set(cache.block_table(b))
    for seq, k, v in [(a, ka, va), (b, kb, vb)]:
        got_k, got_v = cache.gather(seq)
        np.testing.assert_array_equal(got_k, k)
        np.testing.assert_array_equal(got_v, v)
    tables, lens = cache.block_tables([b, a])
    assert tables.dtype == np.int32 and lens.dtype == np.int32
    assert tables.shape == (2, 3) and list(lens) == [9, 6]
    assert list(tables[1]) == cache.block_table(a) + [-1]


def test_append_out_of_pages_changes_nothing(rng):
    cache = PagedKVCache(3, 4, 2, 4, device="cpu")
    seq = cache.add_sequence()
    cache.append(seq, *_tokens(rng, 7))
    k_before, v_before = cache.k_cache.copy(), cache.v_cache.copy()
    table_before, free_before = cache.block_table(seq), cache.allocator.num_free
    with pytest.raises(OutOfPagesError):
        cache.append(seq, *_tokens(rng, 6))  # needs 2 more pages, 1 is free
    assert cache.seq_len(seq) == 7 and cache.block_table(seq) == table_before
    assert cache.allocator.num_free == free_before
    np.testing.assert_array_equal(cache.k_cache, k_before)
    np.testing.assert_array_equal(cache.v_cache, v_before)


@pytest.mark.parametrize("k_shape, dtype, match", [
    ((3, 2, 5), np.float32, r"k: expected shape \[n_tokens, 2, 4\]"),
    ((3, 3, 4), np.float32, r"k: expected shape"),
    ((3, 8), np.float32, "k: expected 3 dimensions"),
    ((3, 2, 4), np.int32,
     "k: expected dtype float16 or float32 or float64 or bfloat16, got int32"),
])
def test_append_refuses_bad_tokens_and_changes_nothing(rng, k_shape, dtype, match):
    cache = PagedKVCache(4, 4, 2, 4, device="cpu")
    seq = cache.add_sequence()
    cache.append(seq, *_tokens(rng, 2))
    snapshot = (cache.k_cache.copy(), cache.block_table(seq), cache.seq_len(seq))
    k = np.zeros(k_shape, dtype=dtype)
    with pytest.raises((ValueError, TypeError), match=match):
        cache.append(seq, k, np.zeros((3, 2, 4), np.float32))
    np.testing.assert_array_equal(cache.k_cache, snapshot[0])
    assert (cache.block_table(seq), cache.seq_len(seq)) == snapshot[1:]


def test_mismatched_k_and_v_and_unknown_sequence(rng):
    cache = PagedKVCache(4, 4, 2, 4, device="cpu")
    seq = cache.add_sequence()
    k, v = _tokens(rng, 3)
    with pytest.raises(ValueError, match="v: expected the shape of k"):
        cache.append(seq, k, v[:2])
    with pytest.raises(KeyError, match="seq_id: no live sequence 42"):
        cache.append(42, k, v)
    cache.free_sequence(seq)
    with pytest.raises(KeyError, match="no live sequence"):
        cache.free_sequence(seq)
    assert cache.allocator.num_free == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(page_size=0), "page_size: expected an int >= 1"),
    (dict(num_kv_heads=0), "num_kv_heads"),
    (dict(dtype=np.float64), "dtype: expected float32, float16 or bfloat16, got float64"),
    (dict(device="tpu"), "device: expected 'auto', 'cpu' or 'gpu'"),
])
def test_cache_constructor_refuses(kwargs, match):
    args = dict(num_pages=4, page_size=4, num_kv_heads=2, head_dim=4) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        PagedKVCache(**args)


def test_fork_shares_pages_and_copies_the_tail_on_write(rng):
    cache = PagedKVCache(8, 4, 2, 4, device="cpu")
    parent = cache.add_sequence()
    k, v = _tokens(rng, 6)
    cache.append(parent, k, v)
    child = cache.fork_sequence(parent)
    assert cache.block_table(child) == cache.block_table(parent)
    used_before = cache.allocator.num_used
    k2, v2 = _tokens(rng, 1)
    cache.append(child, k2, v2)
    # The shared full page stays shared; the partly filled tail page was copied.
    assert cache.block_table(child)[0] == cache.block_table(parent)[0]
    assert cache.block_table(child)[1] != cache.block_table(parent)[1]
    assert cache.allocator.num_used == used_before + 1
    np.testing.assert_array_equal(cache.gather(parent)[0], k)
    np.testing.assert_array_equal(cache.gather(child)[0], np.concatenate([k, k2]))
    cache.free_sequence(parent)
    cache.free_sequence(child)
    assert cache.allocator.num_free == 8
    cache.allocator.check_invariants()


class Abort(Exception):
    """Raised inside a transaction to make it fail."""


def cache_state(cache):
    """Everything a failed transaction must put back, the next sequence id included; the
    pages as their bytes (any dtype, either device: -0 and NaN payloads count)."""
    alloc = cache.allocator
    def page_bytes(x):
        return np.ascontiguousarray(to_numpy(x)).view(np.uint8).copy()
    return dict(seq_ids=cache.seq_ids, tables=[cache.block_table(s) for s in cache.seq_ids],
                lens=[cache.seq_len(s) for s in cache.seq_ids], free_list=alloc.free_list(),
                refs=[alloc.ref_count(p) for p in range(alloc.num_pages)],
                next_id=cache._next_seq_id, k=page_bytes(cache.k_cache),
                v=page_bytes(cache.v_cache))


def assert_same_state(before, after):
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key


def test_transaction_commits_on_success_and_rolls_back_on_error(rng):
    cache = PagedKVCache(8, 2, 2, 4, device="cpu")
    a = cache.add_sequence()
    cache.append(a, *_tokens(rng, 3))                 # 2 pages, the second half full
    b = cache.fork_sequence(a)                        # shares that half-full tail
    before = cache_state(cache)
    with pytest.raises(Abort):
        with cache.transaction():
            cache.append(b, *_tokens(rng, 4))         # copy on write of the tail, then growth
            c = cache.add_sequence()
            cache.append(c, *_tokens(rng, 1))
            with cache.transaction():                 # nested: part of the outer one
                cache.append(a, *_tokens(rng, 1))
            raise Abort
    assert_same_state(before, cache_state(cache))
    with cache.transaction():
        cache.append(b, *_tokens(rng, 1))
    assert cache.seq_len(b) == 4 and cache.block_table(b)[0] == cache.block_table(a)[0]
    assert cache.block_table(b)[1] != cache.block_table(a)[1]
    cache.allocator.check_invariants()


class CacheMachine(RuleBasedStateMachine):
    """Random add / append / fork / free sequences keep every invariant of the cache."""

    sharing = True  # fork_sequence is one of the random operations

    def __init__(self):
        super().__init__()
        self.cache = PagedKVCache(12, 3, 1, 2, device="cpu")
        self.expected: dict[int, np.ndarray] = {}  # seq_id -> the keys it should read back
        self.counter = 0

    def _fresh(self, n):
        values = np.arange(self.counter, self.counter + n * 2, dtype=np.float32).reshape(n, 1, 2)
        self.counter += n * 2
        return values

    @rule()
    def add(self):
        self.expected[self.cache.add_sequence()] = np.zeros((0, 1, 2), np.float32)

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), n_tokens=st.integers(0, 8))
    def append(self, data, n_tokens):
        seq = data.draw(st.sampled_from(sorted(self.expected)))
        k = self._fresh(n_tokens)
        try:
            self.cache.append(seq, k, -k)
        except OutOfPagesError:
            return  # state must be unchanged: the invariants below check it
        self.expected[seq] = np.concatenate([self.expected[seq], k])

    @precondition(lambda self: self.expected and self.sharing)
    @rule(data=st.data())
    def fork(self, data):
        seq = data.draw(st.sampled_from(sorted(self.expected)))
        self.expected[self.cache.fork_sequence(seq)] = self.expected[seq].copy()

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.expected)))
        self.cache.free_sequence(seq)
        del self.expected[seq]

    @rule(data=st.data(), n_ops=st.integers(1, 4))
    def failed_transaction(self, data, n_ops):
        """Adds, appends (growing, copying a shared tail) and forks inside a transaction that
        then fails: every sequence, table, length, id, page count, free-list position and
        K/V element is as before."""
        before = cache_state(self.cache)
        ops = ["add", "append", "fork"] if self.sharing else ["add", "append"]
        with pytest.raises(Abort):
            with self.cache.transaction():
                for _ in range(n_ops):
                    op, live = data.draw(st.sampled_from(ops)), self.cache.seq_ids
                    if op == "add" or not live:
                        self.cache.add_sequence()
                        continue
                    seq = data.draw(st.sampled_from(live))
                    if op == "fork":
                        self.cache.fork_sequence(seq)
                        continue
                    k = self._fresh(data.draw(st.integers(0, 5)))
                    try:
                        self.cache.append(seq, k, -k)
                    except OutOfPagesError:
                        pass
                raise Abort
        assert_same_state(before, cache_state(self.cache))

    @invariant()
    def pages_are_accounted_for(self):
        alloc = self.cache.allocator
        alloc.check_invariants()
        assert alloc.num_used + alloc.num_free == alloc.num_pages
        owners = {}
        for seq in self.cache.seq_ids:
            for page in self.cache.block_table(seq):
                owners[page] = owners.get(page, 0) + 1
        # A page is in use exactly when some live sequence holds it, as often as it is held.
        assert {p: alloc.ref_count(p) for p in range(alloc.num_pages) if alloc.ref_count(p)} == owners

    @invariant()
    def every_token_reads_back_exactly(self):
        for seq, keys in self.expected.items():
            assert self.cache.seq_len(seq) == len(keys)
            got_k, got_v = self.cache.gather(seq)
            np.testing.assert_array_equal(got_k, keys)
            np.testing.assert_array_equal(got_v, -keys)

    def teardown(self):
        for seq in list(self.expected):
            self.cache.free_sequence(seq)
        assert self.cache.allocator.num_free == self.cache.allocator.num_pages


TestCacheMachine = CacheMachine.TestCase


class CacheWithoutSharingMachine(CacheMachine):
    """Without fork, no page is ever owned by two live sequences."""

    sharing = False

    @invariant()
    def no_page_has_two_owners(self):
        tables = [self.cache.block_table(seq) for seq in self.cache.seq_ids]
        pages = [page for table in tables for page in table]
        assert len(pages) == len(set(pages)), f"a page is in two block tables: {tables}"


TestCacheWithoutSharingMachine = CacheWithoutSharingMachine.TestCase
