"""PagedAttentionManager: prefill on add_sequence, decode steps, all-or-nothing page use,
memory statistics, bad input. Runs on the CPU executor (NumPy)."""
import numpy as np
import pytest

from pagedattn_lab import OutOfPagesError
from pagedattn_lab.manager import PagedAttentionManager

H, KVH, D = 4, 2, 64


def dense_attention(q, k, v, scale, causal):
    """Plain float64 attention over contiguous K/V [n, KVH, D] (independent of the cache)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    n_keys = k.shape[0]
    for t in range(q.shape[0]):
        upto = (n_keys - q.shape[0] + t + 1) if causal else n_keys
        for h in range(q.shape[1]):
            s = k[:upto, h // group] @ q[t, h] * scale
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ v[:upto, h // group]
    return out


def rel_err(out, ref):
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


def tokens(rng, n, heads=KVH):
    return rng.standard_normal((n, heads, D)).astype(np.float32)


def manager(num_pages=32, page_size=8, **kw):
    return PagedAttentionManager(num_pages, page_size, H, KVH, D, device="cpu", **kw)


@pytest.mark.parametrize("prefill_kernel", ["tiled", "naive"])
def test_prefill_then_decode_matches_dense_attention(rng, prefill_kernel):
    mgr = manager(prefill_kernel=prefill_kernel)
    scale = 1 / np.sqrt(D)
    history = {}
    for n in (13, 8):
        k, v, q = tokens(rng, n), tokens(rng, n), tokens(rng, n, H)
        seq, out = mgr.add_sequence(k, v, q)
        assert out.shape == (n, H, D)
        assert rel_err(out, dense_attention(q, k, v, scale, causal=True)) < 1e-5
        history[seq] = (k, v)
    seqs = list(history)
    for _ in range(3):   # a small generation loop: one token per sequence per step
        q, k, v = tokens(rng, 2, H), tokens(rng, 2), tokens(rng, 2)
        out = mgr.decode_step(seqs, q, k, v)
        for i, s in enumerate(seqs):
            hk, hv = history[s]
            history[s] = (np.concatenate([hk, k[i:i + 1]]), np.concatenate([hv, v[i:i + 1]]))
            ref = dense_attention(q[i:i + 1], *history[s], scale, causal=False)[0]
            assert rel_err(out[i], ref) < 1e-5
    assert [mgr.seq_len(s) for s in seqs] == [16, 11]


def test_add_sequence_without_query_returns_no_output(rng):
    mgr = manager()
    seq, out = mgr.add_sequence(tokens(rng, 5), tokens(rng, 5))
    assert out is None and mgr.seq_len(seq) == 5


def test_stats_and_finish(rng):
    mgr = manager(num_pages=10, page_size=8)
    a, _ = mgr.add_sequence(tokens(rng, 13), tokens(rng, 13))    # 2 pages, 3 slots unused
    b, _ = mgr.add_sequence(tokens(rng, 8), tokens(rng, 8))      # 1 page, full
    s = mgr.stats()
    assert (s.pages_used, s.pages_free, s.sequences, s.tokens_stored) == (3, 7, 2, 21)
    assert s.slots_allocated == 24 and s.internal_waste == 3
    assert s.waste_fraction == pytest.approx(3 / 24)
    assert s.bytes_per_token == 2 * KVH * D * 4
    mgr.finish(a)
    s = mgr.stats()
    assert (s.pages_used, s.tokens_stored, s.internal_waste) == (1, 8, 0)
    assert mgr.seq_ids == [b]
    assert "sequences=1" in repr(mgr)


def test_decode_step_is_all_or_nothing(rng):
    mgr = manager(num_pages=3, page_size=4)
    a, _ = mgr.add_sequence(tokens(rng, 4), tokens(rng, 4))   # full page: next token needs one
    b, _ = mgr.add_sequence(tokens(rng, 4), tokens(rng, 4))
    c, _ = mgr.add_sequence(tokens(rng, 3), tokens(rng, 3))   # room for one more token
    before = mgr.stats()
    k_before = mgr.cache.k_cache.copy()
    with pytest.raises(OutOfPagesError):
        mgr.decode_step([c, a, b], tokens(rng, 3, H), tokens(rng, 3), tokens(rng, 3))
    assert mgr.stats() == before
    np.testing.assert_array_equal(mgr.cache.k_cache, k_before)
    assert [mgr.seq_len(s) for s in (a, b, c)] == [4, 4, 3]
    out = mgr.decode_step([c], tokens(rng, 1, H), tokens(rng, 1), tokens(rng, 1))
    assert out.shape == (1, H, D) and mgr.seq_len(c) == 4


def test_add_sequence_out_of_pages_changes_nothing(rng):
    mgr = manager(num_pages=2, page_size=4)
    with pytest.raises(OutOfPagesError):
        mgr.add_sequence(tokens(rng, 9), tokens(rng, 9))
    assert mgr.seq_ids == [] and mgr.stats().pages_used == 0


def test_fp16_manager(rng):
    mgr = PagedAttentionManager(16, 16, H, KVH, D, dtype=np.float16, device="cpu")
    k, v, q = tokens(rng, 20), tokens(rng, 20), tokens(rng, 20, H)
    _, out = mgr.add_sequence(k, v, q)
    assert out.dtype == np.float16
    ref = dense_attention(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16),
                          1 / np.sqrt(D), causal=True)
    assert rel_err(out, ref) < 2e-3


def test_bad_input(rng):
    mgr = manager()
    seq, _ = mgr.add_sequence(tokens(rng, 3), tokens(rng, 3))
    cases = [
        ("k", lambda: mgr.add_sequence(tokens(rng, 3, H), tokens(rng, 3))),
        ("v", lambda: mgr.add_sequence(tokens(rng, 3), tokens(rng, 4))),
        ("q", lambda: mgr.add_sequence(tokens(rng, 3), tokens(rng, 3), tokens(rng, 2, H))),
        ("k", lambda: mgr.add_sequence(tokens(rng, 0), tokens(rng, 0))),
        ("q", lambda: mgr.decode_step([seq], tokens(rng, 1), tokens(rng, 1), tokens(rng, 1))),
        ("k", lambda: mgr.decode_step([seq], tokens(rng, 1, H), tokens(rng, 2), tokens(rng, 2))),
        ("seq_ids", lambda: mgr.decode_step([], tokens(rng, 0, H), tokens(rng, 0), tokens(rng, 0))),
        ("seq_ids", lambda: mgr.decode_step([seq, seq], tokens(rng, 2, H), tokens(rng, 2),
                                            tokens(rng, 2))),
        ("k", lambda: mgr.add_sequence(tokens(rng, 3).astype(np.int32), tokens(rng, 3))),
    ]
    for name, call in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        assert str(info.value).startswith(name), (name, str(info.value))
    with pytest.raises(KeyError, match="seq_ids"):
        mgr.decode_step([99], tokens(rng, 1, H), tokens(rng, 1), tokens(rng, 1))
    with pytest.raises(ValueError, match="num_heads"):
        PagedAttentionManager(8, 8, 3, 2, D, device="cpu")
    assert mgr.seq_len(seq) == 3
