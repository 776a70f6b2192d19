"""Hunt 48 (fault injection): a call that fails halfway, at the k-th call of one of its
collaborators, leaves every table, free list, reference count, length and page as it was."""
import numpy as np
import pytest

from pagedattn_lab.cache import PagedKVCache


def _state(cache):
    return (cache.allocator.state(), cache._next_seq_id,
            {s: (list(q.pages), q.length) for s, q in cache._sequences.items()},
            cache.k_cache.copy(), cache.v_cache.copy())


def _same(a, b):
    assert a[:3] == b[:3]
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_array_equal(a[4], b[4])


def _fail_at(monkeypatch, obj, name, k, exc):
    real = getattr(obj, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise exc
        return real(*args, **kwargs)
    monkeypatch.setattr(obj, name, wrapper)


def _cache_with_shared_tail():
    cache = PagedKVCache(8, 4, 2, 3, device="cpu")
    rng = np.random.default_rng(0)
    a = cache.add_sequence()
    cache.append(a, *rng.standard_normal((2, 6, 2, 3), dtype=np.float32))
    b = cache.fork_sequence(a)
    return cache, a, b, rng


@pytest.mark.parametrize("exc", [MemoryError(), KeyboardInterrupt(), RuntimeError("boom")])
@pytest.mark.parametrize("where", ["_write", "_copy_on_write_tail", "_save_rows"])
def test_append_failing_after_the_allocation_changes_nothing(monkeypatch, where, exc):
    cache, a, b, rng = _cache_with_shared_tail()
    before = _state(cache)
    with monkeypatch.context() as m:
        _fail_at(m, cache, where, 1, exc)
        with pytest.raises(type(exc)):
            cache.append(b, *rng.standard_normal((2, 5, 2, 3), dtype=np.float32))
    _same(_state(cache), before)
    cache.append(b, *rng.standard_normal((2, 5, 2, 3), dtype=np.float32))   # still usable
    assert cache.seq_len(b) == 11


@pytest.mark.parametrize("exc", [MemoryError(), KeyboardInterrupt()])
def test_fork_failing_in_the_allocator_takes_no_id(monkeypatch, exc):
    cache, a, b, _ = _cache_with_shared_tail()
    before = _state(cache)
    with monkeypatch.context() as m:
        _fail_at(m, cache.allocator, "fork", 1, exc)
        with pytest.raises(type(exc)):
            cache.fork_sequence(a)
    _same(_state(cache), before)
