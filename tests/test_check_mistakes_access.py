"""Wrong answers to the Python tasks of workbooks 02, 04 and 05 (translation, softmax, tiling)."""

import numpy as np
import pytest

from tests.check_helpers import as_params, assert_caught, run_check

# -- lesson 02: translation -------------------------------------------------------------------

def gather_whole_pages(k, row, n):
    num_pages, p, h, d = k.shape
    pages = np.asarray(row)[: -(-n // p)]
    return k[pages].reshape(-1, h, d)


MISTAKES = [
    ("slot_of", lambda row, t, p: int(row[t // p]) * p + t % p + 1, "off-by-one"),
    ("slot_of", lambda row, t, p: t, "look the page up in the block table"),
    ("slot_of", lambda row, t, p: int(row[t // p]) + t % p, "multiply the physical page"),
    ("kv_offset", lambda s, h, d, H, D: s * D + h * D + d, "missing num_kv_heads"),
    ("kv_offset", lambda s, h, d, H, D: (s * D + d) * H + h, "HND"),
    ("kv_offset", lambda s, h, d, H, D: (s * H + h) * D, "add the dim"),
    ("gather_numpy", gather_whole_pages, "whole pages"),
    ("gather_numpy", lambda k, row, n: k.reshape(-1, *k.shape[2:])[:n], "not contiguous"),
    ("gather_numpy", lambda k, row, n: k.reshape(-1, *k.shape[2:])[
        np.minimum(np.asarray(row)[np.arange(n) // k.shape[1]] * k.shape[1]
                   + np.arange(n) % k.shape[1] + 1, k.shape[0] * k.shape[1] - 1)], "off-by-one"),
]


# -- lesson 04: online softmax, one query ----------------------------------------------------

def online_class(bug):
    class Online:
        def __init__(self, head_dim):
            self.m = 0.0 if bug == "max0" else -np.inf
            self.l, self.acc = 0.0, np.zeros(head_dim)

        def update(self, s, v):
            if bug == "nomax":
                self.l += np.exp(s)
                self.acc = self.acc + np.exp(s) * v
                return
            m_new = max(self.m, s)
            w = np.exp(s - (self.m if bug == "old_max" else m_new))
            if bug == "no_rescale":
                self.m = m_new                        # overwritten before the rescale
            alpha = np.exp(m_new - self.m) if bug == "inverted" else np.exp(self.m - m_new)
            self.l = self.l + 1 if bug == "count" else self.l * alpha + w
            self.acc = (self.acc if bug == "acc" else self.acc * alpha) + w * v
            self.m = m_new

        def result(self):
            return self.acc if bug == "no_norm" else self.acc / self.l
    return Online


def attend_factory(*, scale_on=True, stop="causal", shift=0, scale_twice=False):
    def attend(q, kc, vc, row, n, t, kvh, scale):
        p = kc.shape[1]
        keys = {"causal": range(t + 1), "all": range(n), "strict": range(t)}[stop]
        slots = [int(row[j // p]) * p + j % p + shift for j in keys]
        flat_k = kc.reshape(-1, *kc.shape[2:])[:, kvh].astype(np.float64)
        flat_v = vc.reshape(-1, *vc.shape[2:])[:, kvh].astype(np.float64)
        slots = np.minimum(np.asarray(slots, dtype=int), len(flat_k) - 1)
        s = flat_k[slots] @ q * (scale if scale_on else 1.0) * (scale if scale_twice else 1.0)
        w = np.exp(s - s.max()) if len(s) else s
        with np.errstate(invalid="ignore"):
            return (w / w.sum()) @ flat_v[slots]
    return attend


MISTAKES += [
    ("online_softmax", online_class("acc"), "accumulator is not rescaled"),
    ("online_softmax", online_class("nomax"), "overflowed"),
    ("online_softmax", online_class("max0"), "-inf"),
    ("online_softmax", online_class("no_norm"), "divide by the running sum"),
    ("attend_one", attend_factory(scale_on=False), "scale the scores"),
    ("attend_one", attend_factory(stop="all"), "no causal mask"),
    ("attend_one", attend_factory(shift=1), "off by one"),
]


# -- lesson 05: tiling in Python -------------------------------------------------------------

def _ceil(a, b):
    return -(-a // b)


MISTAKES += [
    ("tile_pages", lambda n, q0, tq, p: list(range(_ceil(n, p))) if q0 < n else [],
     "never needed"),
    ("tile_pages", lambda n, q0, tq, p: list(range(q0 // p, _ceil(min(n, q0 + tq), p)))
     if q0 < n else [], "every key from 0"),
    ("tile_pages", lambda n, q0, tq, p: list(range(min(n, q0 + tq) // p)) if q0 < n else [],
     "round up"),
    ("tile_pages", lambda n, q0, tq, p: list(range(_ceil(min(n, q0 + tq), p))), "no work"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((n // tq, h, b), (tq,), 8 * p * d),
     "round the number of query tiles up"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq,), 2 * p * d),
     "in bytes"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq,), 4 * p * d),
     "stage V"),
    # hunt 66: K and V staged, 2 bytes a value: the hint named only a missing V tile
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq,), 2 * p * d * 2),
     "4 bytes a value, not 2"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((b, h, _ceil(n, tq)), (tq,), 8 * p * d),
     "query tiles in x"),
    # a truth value where the batch is 1 (True == 1) is not a launch dimension
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b if b > 1 else b > 0),
                                                (tq,), 8 * p * d), "whole numbers"),
]


# -- more wrong answers, first and last positions, boundaries (issue 9) ------------------------

def gather_heads_first(k, row, n):
    p = k.shape[1]
    t = np.arange(n)
    slots = np.asarray(row)[t // p] * p + t % p
    return np.transpose(k.reshape(-1, *k.shape[2:])[slots], (1, 0, 2))


def gather_table_scaled_in_place(k, row, n):   # row *= page_size: the caller's table changes
    p = k.shape[1]
    row *= p
    t = np.arange(n)
    return k.reshape(-1, *k.shape[2:])[np.asarray(row)[t // p] + t % p]


def slot_table_scaled_in_place(row, t, p):
    row[t // p] *= p
    return int(row[t // p]) + t % p


def gather_whole_row(k, row, n):
    return k[np.asarray(row)].reshape(-1, *k.shape[2:])


def gather_concat(k, row, n):
    """Page by page, then np.concatenate: raises on a sequence with no pages."""
    p = k.shape[1]
    parts = [k[row[i]] for i in range(-(-n // p))]
    return np.concatenate(parts)[:n]


def gather_token_loop(k, row, n):
    p = k.shape[1]
    rows = [k[row[t // p], t % p] for t in range(n)]
    return np.stack(rows) if rows else np.zeros((0, *k.shape[2:]), k.dtype)


def gather_page_loop(k, row, n):
    """A loop over pages, not tokens: allowed."""
    p = k.shape[1]
    pages = [k[row[i]] for i in range(-(-n // p))]
    return np.concatenate(pages)[:n] if pages else np.zeros((0, *k.shape[2:]), k.dtype)


def test_a_loop_over_pages_is_not_a_loop_over_tokens():
    result, printed = run_check("gather_numpy", gather_page_loop)
    assert result.passed, printed


def attend_kv_head_zero(q, kc, vc, row, n, t, kvh, scale):
    return attend_factory()(q, kc, vc, row, n, t, 0, scale)


def attend_values_from_keys(q, kc, vc, row, n, t, kvh, scale):
    return attend_factory()(q, kc, kc, row, n, t, kvh, scale)


def tile_pages_ignoring_seq_len(n, q0, tq, p):
    return list(range(_ceil(q0 + tq, p))) if q0 < n else []


def tile_pages_one_too_many(n, q0, tq, p):
    return list(range(min(n, q0 + tq) // p + 1)) if q0 < n else []


def tile_pages_strict_past_end(n, q0, tq, p):
    return list(range(_ceil(min(n, q0 + tq), p))) if q0 <= n else []


def launch_ndarray_grid(b, h, n, tq, p, d):
    return (np.ceil(n / tq), h, b), (tq,), 8 * p * d


MISTAKES += [
    ("slot_of", lambda row, t, p: int(row[t % p]) * p + t // p, "not the other way round"),
    ("slot_of", lambda row, t, p: int(row[t // p]) * p + t, "not the token's position"),
    ("slot_of", lambda row, t, p: int(row[t // p - 1]) * p + t % p, "entry 0 of the row"),
    ("kv_offset", lambda s, h, d, H, D: s * H + h * D + d, "slot stride needs both"),
    ("kv_offset", lambda s, h, d, H, D: s * H * D + h * H + d, "head_dim values apart"),
    ("kv_offset", lambda s, h, d, H, D: (s * H + h) * D + d + 1, "offsets count from 0"),
    ("gather_numpy", gather_heads_first, "tokens first"),
    ("gather_numpy", gather_whole_row, "whole pages"),
    ("gather_numpy", gather_concat, "raised ValueError"),
    ("gather_numpy", gather_table_scaled_in_place, "changed its input block_table_row"),
    ("slot_of", slot_table_scaled_in_place, "changed its input block_table_row"),
    ("gather_numpy", gather_token_loop, "a Python loop over the tokens"),
    ("online_softmax", online_class("no_rescale"), "before m is overwritten"),
    ("online_softmax", online_class("old_max"), "from the first key on", ["overflowed"]),
    ("online_softmax", online_class("inverted"), "from the first key on", ["overflowed"]),
    ("online_softmax", online_class("count"), "not count the keys"),
    ("attend_one", attend_factory(stop="strict"), "its own token"),
    ("attend_one", attend_kv_head_zero, "not kv head 0"),
    ("attend_one", attend_values_from_keys, "not k"),
    ("attend_one", attend_factory(scale_twice=True), "scaled twice"),
    ("tile_pages", tile_pages_ignoring_seq_len, "past the sequence's end"),
    ("tile_pages", tile_pages_one_too_many, "one page too many"),
    ("tile_pages", tile_pages_strict_past_end, "no work"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((h, _ceil(n, tq), b), (tq,), 8 * p * d),
     "x is the query tile"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), b, h), (tq,), 8 * p * d),
     "y is the head"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq,), 8 * tq * d),
     "page_size rows each"),
    ("tiled_launch", launch_ndarray_grid, "np.ceil gives floats"),
]


# -- results of the wrong kind: NaN, a narrower dtype, a shape that would broadcast ----------

def gather_right(k, row, n):
    p = k.shape[1]
    t = np.arange(n)
    return k.reshape(-1, *k.shape[2:])[np.asarray(row)[t // p] * p + t % p]


MISTAKES += [
    ("gather_numpy", lambda k, row, n: gather_right(k, row, n).astype(np.float16),
     "keep the cache's dtype"),
    ("gather_numpy", lambda k, row, n: np.full((n, *k.shape[2:]), np.nan),
     "a nan your code computed"),
    ("gather_numpy", lambda k, row, n: gather_right(k, row, n)[:, :1], "exactly seq_len tokens"),
    ("attend_one", lambda *a: np.full(a[0].shape, np.nan), "(zeros or 0/0)"),
    ("attend_one", lambda *a: attend_factory()(*a)[None], "[head_dim]"),
]


# -- attack 0205: answers of the wrong type, float32 state, NaN past seq_len ------------------

class OnlineFloat32:
    """Right, with float32 state as in the kernel."""

    def __init__(self, head_dim):
        self.m, self.l = np.float32(-np.inf), np.float32(0)
        self.acc = np.zeros(head_dim, np.float32)

    def update(self, s, v):
        s = np.float32(s)
        m = max(self.m, s)
        a, w = np.exp(self.m - m), np.exp(s - m)
        self.l = self.l * a + w
        self.acc = (self.acc * a + w * v.astype(np.float32)).astype(np.float32)
        self.m = m

    def result(self):
        return self.acc / self.l


def attend_whole_pages_masked(q, kc, vc, row, n, t, kvh, scale):
    p = kc.shape[1]
    pages = np.asarray(row)[:-(-(t + 1) // p)]
    keys = kc[pages][:, :, kvh].reshape(-1, kc.shape[-1])
    values = vc[pages][:, :, kvh].reshape(-1, kc.shape[-1])
    s = keys @ q * scale
    s[t + 1:] = -np.inf
    w = np.exp(s - s.max())
    return w @ values / w.sum()


MISTAKES += [
    ("slot_of", lambda row, t, p: int(row[t // p]) * p + t % p + 0.5, "expected an int"),
    ("kv_offset", lambda s, h, d, H, D: str((s * H + h) * D + d), "expected an int"),
    ("gather_numpy", lambda k, row, n: gather_right(k, row, n).astype(np.float64),
     "keep the cache's dtype"),
    ("tile_pages", lambda n, q0, tq, p: [] if q0 >= n else
     list(range(min(_ceil(n, p), (q0 + tq) // p))), "round up"),
    ("attend_one", attend_whole_pages_masked, "0 * NaN is NaN"),
]


# -- a result() that changes the state, inputs written in place, float page ids -----------

class OnlineDividesInPlace(online_class(None)):
    """Right when result() is asked once, at the end: it divides the state itself."""

    def result(self):
        self.acc /= self.l
        return self.acc


class OnlineScalesValue(online_class(None)):
    """Right numbers, but update() scales the value it was given in place (after using it)."""

    def update(self, s, v):
        super().update(s, v)
        v *= np.exp(s - self.m)


def attend_in_place(scale_what):
    """Right numbers for the query asked, but `x *= scale` on the query or on a cache view."""
    def attend(q, kc, vc, row, n, t, kvh, scale):
        p = kc.shape[1]
        state = OnlineFloat32(kc.shape[-1])
        if scale_what == "q":
            q *= scale
        for j in range(t + 1):
            key = kc[row[j // p], j % p, kvh]      # a view into the cache
            if scale_what == "k":
                key *= scale
            state.update(float(q @ key), vc[row[j // p], j % p, kvh])
        return state.result()
    return attend


class OnlineKeepsFirstValue(online_class(None)):
    """Right numbers, but its acc IS the first value it was given (a view of v_cache in
    attend_one), then updated in place: the cache's first value row changes (hunt 66)."""

    def update(self, s, v):
        if self.l == 0.0:
            self.m, self.l, self.acc = s, 1.0, v
            return
        m_new = max(self.m, s)
        alpha, w = np.exp(self.m - m_new), np.exp(s - m_new)
        self.l = self.l * alpha + w
        self.acc *= alpha
        self.acc += w * v
        self.m = m_new


def attend_with(state_cls):
    """attend_one over the keys 0..t with an online softmax state of `state_cls`."""
    def attend(q, kc, vc, row, n, t, kvh, scale):
        p = kc.shape[1]
        state = state_cls(kc.shape[-1])
        for j in range(t + 1):
            state.update(float(q @ kc[row[j // p], j % p, kvh]) * scale,
                         vc[row[j // p], j % p, kvh])
        return state.result()
    return attend


attend_keeping_first_value = attend_with(OnlineKeepsFirstValue)


MISTAKES += [
    # hunt 66: the hint said `value *= scale` wrote into the cache
    ("attend_one", attend_keeping_first_value, "only the first key's changed",
     ["value *= scale"]),
]

MISTAKES += [
    ("online_softmax", OnlineDividesInPlace, "result() changed the state"),
    ("online_softmax", OnlineScalesValue, "changed its input value"),
    ("attend_one", attend_in_place("k"), "changed its input k_cache",
     ["scale the scores", "q_vec"]),
    ("attend_one", attend_in_place("q"), "changed its input q_vec", ["k_cache[page"]),
    ("tile_pages", lambda n, q0, tq, p: [] if q0 >= n else
     list(np.arange(np.ceil(min(n, q0 + tq) / p))), "np.ceil and / give floats"),
]


def test_an_online_softmax_in_float32_passes():
    result, printed = run_check("online_softmax", OnlineFloat32)
    assert result.passed, printed


@pytest.mark.parametrize("launch", [   # (a list or an int is no launch: cupy takes tuples)
    lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq, 1, 1), 8 * p * d),
    lambda b, h, n, tq, p, d: ((np.int64(_ceil(n, tq)), h, b), (tq, 1), np.int64(8 * p * d)),
])
def test_launch_in_another_dim3_spelling_passes(launch):
    result, printed = run_check("tiled_launch", launch)
    assert result.passed, printed


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


class OnlineFloat32Normalized(OnlineFloat32):
    """Right: result() keeps the float32 state normalized (acc / l, the max moved by log l,
    l = 1): the same answer whenever asked, float32's rounding apart."""

    def result(self):
        self.acc = (self.acc / self.l).astype(np.float32)
        self.m, self.l = np.float32(self.m + np.log(self.l)), np.float32(1)
        return self.acc.copy()


class OnlineFloat32DividesInPlace(OnlineFloat32):
    """Right when result() is asked once: it divides the float32 state itself."""

    def result(self):
        self.acc /= self.l
        return self.acc


def test_an_online_softmax_normalizing_its_float32_state_in_result_passes():
    result, printed = run_check("online_softmax", OnlineFloat32Normalized)
    assert result.passed, printed


def test_an_online_softmax_dividing_its_float32_state_in_place_is_caught():
    assert_caught("online_softmax", OnlineFloat32DividesInPlace, "result() changed the state")


class OnlineFolding:
    """Right: update() queues the keys, result() folds the queue into (m, l, acc) in one
    vector step (asked after every key, it folds in other steps than once at the end)."""

    def __init__(self, head_dim):
        self.m, self.l, self.acc, self.s, self.v = -np.inf, 0.0, np.zeros(head_dim), [], []

    def update(self, s, v):
        self.s.append(s)
        self.v.append(np.array(v))

    def result(self):
        if self.s:
            s, values = np.array(self.s), np.array(self.v)
            m = max(self.m, s.max())
            a, w = np.exp(self.m - m), np.exp(s - m)
            self.l, self.acc, self.m = self.l * a + w.sum(), self.acc * a + w @ values, m
            self.s, self.v = [], []
        return self.acc / self.l


def test_an_online_softmax_folding_its_keys_in_result_passes():
    result, printed = run_check("online_softmax", OnlineFolding)
    assert result.passed, printed
