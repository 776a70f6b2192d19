"""PagedAttentionManager: prefill on add_sequence, decode steps, all-or-nothing page use,
memory statistics, bad input. Runs on the CPU executor (NumPy)."""
import contextlib

import numpy as np
import pytest

from pagedattn_lab import OutOfPagesError, attention_prefill, decode_choice
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
    assert s.utilization == pytest.approx(21 / 80)   # tokens over the whole pool, free pages too
    assert s.bytes_per_token == 2 * KVH * D * 4
    mgr.finish(a)
    s = mgr.stats()
    assert (s.pages_used, s.tokens_stored, s.internal_waste) == (1, 8, 0)
    assert s.utilization == pytest.approx(8 / 80)
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


# -- all or nothing when a kernel refuses or fails ------------------------------------------

def snapshot(mgr):
    """Everything a failed call must leave as it was."""
    cache, alloc = mgr.cache, mgr.cache.allocator
    return dict(seq_ids=cache.seq_ids, lens=[cache.seq_len(s) for s in cache.seq_ids],
                tables=[cache.block_table(s) for s in cache.seq_ids],
                free_list=alloc.free_list(),
                refs=[alloc.ref_count(p) for p in range(alloc.num_pages)],
                k=cache.k_cache.copy(), v=cache.v_cache.copy())


def assert_same(before, after):
    for key in before:
        if key in ("k", "v"):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        else:
            assert after[key] == before[key], key


def timeout_on_launch(monkeypatch):
    """Every CPU-executor launch fails as a kernel that ran past its time limit would."""
    from pagedattn_lab.cpu import KernelTimeout, RawKernel

    def launch(self, *args, **kwargs):
        raise KernelTimeout(f"kernel {self.name!r} did not finish within 0.001 s",
                            kernel=self.name, timeout=0.001)
    monkeypatch.setattr(RawKernel, "__call__", launch)


def busy_manager(rng, **kw):
    """A manager with a shared prefix (fork) and partly filled last pages: every path of
    append (growth, a fresh page, copy on write of a shared tail) is in play."""
    mgr = manager(num_pages=12, page_size=4, **kw)
    a, _ = mgr.add_sequence(tokens(rng, 6), tokens(rng, 6))
    mgr.cache.fork_sequence(a)                                   # shares a's half-full tail
    mgr.add_sequence(tokens(rng, 4), tokens(rng, 4))             # full: the next token grows
    return mgr


def run_twice(make_manager, fail, call):
    """`call` on a manager while `fail` is in force (it must raise and change nothing), then
    again without; and once on a twin that never failed. Returns the error, the retry's and
    the twin's outputs, and the two managers."""
    failing, clean = make_manager(np.random.default_rng(7)), make_manager(np.random.default_rng(7))
    before = snapshot(failing)
    with fail():
        with pytest.raises(Exception) as info:
            call(failing, np.random.default_rng(1))
    assert_same(before, snapshot(failing))
    out_retry = call(failing, np.random.default_rng(1))
    out_clean = call(clean, np.random.default_rng(1))
    return info.value, out_retry, out_clean, failing, clean


def decode_all(mgr, rng):
    seqs = mgr.seq_ids
    n = len(seqs)
    return mgr.decode_step(seqs, tokens(rng, n, H), tokens(rng, n), tokens(rng, n))


def add_with_query(mgr, rng):
    return mgr.add_sequence(tokens(rng, 9), tokens(rng, 9), tokens(rng, 9, H)).out


CALLS = pytest.mark.parametrize("call", [decode_all, add_with_query],
                                ids=["decode_step", "add_sequence"])


@CALLS
def test_kernel_timeout_changes_nothing_and_a_retry_appends_once(monkeypatch, call):
    @contextlib.contextmanager
    def fail():
        with monkeypatch.context() as m:
            timeout_on_launch(m)
            yield

    err, out_retry, out_clean, failing, clean = run_twice(busy_manager, fail, call)
    assert type(err).__name__ == "KernelTimeout"
    # The retry did exactly what one clean call does: same ids, lengths, tables, pages, output.
    assert_same(snapshot(clean), snapshot(failing))
    np.testing.assert_array_equal(out_retry, out_clean)
    failing.cache.allocator.check_invariants()


@CALLS
@pytest.mark.parametrize("refusal", ["scale", "head_dim"])
def test_kernel_refusing_its_input_changes_nothing(monkeypatch, call, refusal):
    """A refusal the constructor could not foresee (forced here: a scale set afterwards, a
    kernel that no longer takes the head_dim) comes after the K/V were written: undone."""
    managers = []

    def make_manager(rng):
        managers.append(busy_manager(rng))
        return managers[-1]

    @contextlib.contextmanager
    def fail():
        with monkeypatch.context() as m:
            if refusal == "scale":
                for mgr in managers:
                    m.setattr(mgr, "scale", 1e39)
            else:
                m.setattr(decode_choice, "supported_head_dim",
                          lambda kernel, dtype, head_dim: "refused for this test")
                m.setattr(attention_prefill, "TILED_HEAD_DIMS", ())
            yield

    err, _, _, failing, clean = run_twice(make_manager, fail, call)
    assert isinstance(err, ValueError), err
    assert str(err).startswith(("scale", "head_dim", "q: head_dim")), err
    assert_same(snapshot(clean), snapshot(failing))


def test_failed_add_sequence_gives_its_id_to_the_retry(monkeypatch, rng):
    mgr = manager()
    first, _ = mgr.add_sequence(tokens(rng, 3), tokens(rng, 3))
    with monkeypatch.context() as m:
        timeout_on_launch(m)
        with pytest.raises(RuntimeError):
            mgr.add_sequence(tokens(rng, 5), tokens(rng, 5), tokens(rng, 5, H))
    assert mgr.seq_ids == [first]
    second, out = mgr.add_sequence(tokens(rng, 5), tokens(rng, 5), tokens(rng, 5, H))
    assert second == first + 1 and out.shape == (5, H, D)


@pytest.mark.parametrize("kwargs, match", [
    (dict(head_dim=50), "head_dim: 50 is not supported by the decode kernel"),
    (dict(head_dim=32, prefill_kernel="tiled"),
     "head_dim: 32 is not supported by the tiled prefill kernel"),
    (dict(prefill_kernel="flash"), "prefill_kernel: expected 'naive', 'tiled' or None"),
    (dict(head_dim=256, prefill_kernel="naive", dtype=np.float16),
     "head_dim: 256 is too large for the naive prefill kernel"),
    (dict(head_dim=2, dtype=np.float16), "head_dim: 2 is not supported by the decode kernel"),
    (dict(scale=1e39), "scale: expected at most"),
    (dict(scale=float("inf")), "scale: expected a finite number"),
    (dict(scale=0.0), "scale: expected a positive number"),
    (dict(scale="0.1"), "scale: expected a float"),
])
def test_constructor_refuses_what_the_kernels_refuse(kwargs, match):
    args = dict(num_pages=8, page_size=4, num_heads=4, num_kv_heads=2, head_dim=64,
                device="cpu")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        PagedAttentionManager(**args)


def test_constructor_takes_what_the_kernels_take(rng):
    for head_dim, kernel, chosen in ((64, "tiled", "tiled"), (128, None, "tiled"),
                                     (32, "naive", "naive"), (4, None, "naive")):
        mgr = PagedAttentionManager(8, 4, 2, 1, head_dim, device="cpu", prefill_kernel=kernel)
        assert mgr.prefill_kernel == chosen
        k = rng.standard_normal((5, 1, head_dim)).astype(np.float32)
        q = rng.standard_normal((5, 2, head_dim)).astype(np.float32)
        seq, out = mgr.add_sequence(k, k, q)
        assert np.isfinite(out).all()
        out = mgr.decode_step([seq], q[:1], k[:1], k[:1])
        assert np.isfinite(out).all() and mgr.seq_len(seq) == 6


def test_seq_ids_must_be_ints(rng):
    mgr = manager()
    seq, _ = mgr.add_sequence(tokens(rng, 3), tokens(rng, 3))
    before = snapshot(mgr)
    with pytest.raises(TypeError, match=r"seq_ids\[0\]: expected an integer sequence id"):
        mgr.decode_step([float(seq)], tokens(rng, 1, H), tokens(rng, 1), tokens(rng, 1))
    with pytest.raises(TypeError, match="seq_ids: expected a list of sequence ids, got 0"):
        mgr.decode_step(seq, tokens(rng, 1, H), tokens(rng, 1), tokens(rng, 1))
    with pytest.raises(TypeError, match="seq_id: expected an int, got 0.0"):
        mgr.finish(float(seq))
    assert_same(before, snapshot(mgr))
