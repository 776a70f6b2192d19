"""Hunt 146: wrong answers a learner really writes for the Python tasks of workbooks 04-08, and
right answers written another way (workbooks 00-02: test_wrong_answers_hunt146.py).

Each wrong answer must fail with a hint naming its mistake (and, where a likelier-looking one
gives the same numbers in a case, not naming that one); each right answer must pass.
"""
import math

import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import as_params, assert_caught, run_check
from tests.test_wrong_answers_hunt146 import _ceil, _paged


# -- lesson 04 ----------------------------------------------------------------------------------

def _online(update, start=-np.inf, result=lambda s: s.acc / s.l):
    class OnlineSoftmax:
        def __init__(self, head_dim):
            self.m, self.l, self.acc = start, 0.0, np.zeros(head_dim)

        def update(self, score, value):
            update(self, score, value)

        def result(self):
            return result(self)
    return OnlineSoftmax


def _step(rescale_l=True, rescale_acc=True, store_max=True, weigh_with_old=False):
    def update(s, score, value):
        m_new = max(s.m, score)
        rescale = np.exp(s.m - m_new)
        weight = 1.0 if weigh_with_old and s.m == -np.inf else \
            np.exp(score - (s.m if weigh_with_old else m_new))
        s.l = (s.l * rescale if rescale_l else s.l) + weight
        s.acc = (s.acc * rescale if rescale_acc else s.acc) + weight * value
        if store_max:
            s.m = m_new
    return update


def _no_max(s, score, value):
    s.l += np.exp(score)
    s.acc = s.acc + np.exp(score) * value


def _branchy(s, score, value):
    if score > s.m:
        rescale = np.exp(s.m - score)
        s.l, s.acc, s.m = s.l * rescale + 1.0, s.acc * rescale + value, score
    else:
        weight = np.exp(score - s.m)
        s.l, s.acc = s.l + weight, s.acc + weight * value


class _KeepsEveryScore:
    def __init__(self, head_dim):
        self.scores, self.values = [], []

    def update(self, score, value):
        self.scores.append(score)
        self.values.append(np.array(value, dtype=np.float64))

    def result(self):
        w = np.exp(np.array(self.scores) - max(self.scores))
        return w @ np.array(self.values) / w.sum()


def _attend(keys=lambda t, n: t + 1, slot=lambda row, j, p: (row[j // p], j % p),
            scale_of=lambda scale: scale, kv_head_of=lambda kv: kv):
    def attend_one(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
        p = k_cache.shape[1]
        at = [slot(row, j, p) for j in range(keys(t, seq_len))]
        k = np.array([k_cache[pg, o, kv_head_of(kv_head)] for pg, o in at], dtype=np.float64)
        v = np.array([v_cache[pg, o, kv_head_of(kv_head)] for pg, o in at], dtype=np.float64)
        s = k @ q_vec * scale_of(scale)
        w = np.exp(s - s.max())
        return w @ v / w.sum()
    return attend_one


def _attend_vectorized(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
    p, j = k_cache.shape[1], np.arange(t + 1)
    pages = np.asarray(row)[j // p]
    s = k_cache[pages, j % p, kv_head].astype(np.float64) @ q_vec * scale
    w = np.exp(s - s.max())
    return (w / w.sum()) @ v_cache[pages, j % p, kv_head]


def _attend_logsumexp(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
    p = k_cache.shape[1]
    keys = np.concatenate([k_cache[pg, :, kv_head] for pg in row[:t // p + 1]])[:t + 1]
    values = np.concatenate([v_cache[pg, :, kv_head] for pg in row[:t // p + 1]])[:t + 1]
    s = keys.astype(np.float64) @ q_vec * scale
    return np.exp(s - np.logaddexp.reduce(s)) @ values


LESSON_04 = [
    ("online_softmax", _online(_step(store_max=False)), "the running max is never stored"),
    ("online_softmax", _online(_step(weigh_with_old=True)), "weighed against the max before it"),
    ("online_softmax", _online(_step(rescale_acc=False)), "the accumulator is not rescaled"),
    ("online_softmax", _online(_step(rescale_l=False)), "the running sum is not rescaled"),
    ("online_softmax", _online(_no_max), "exp(score) overflowed"),
    ("online_softmax", _online(_step(), start=0.0), "start the running max at -inf"),
    ("online_softmax", _online(_step(), result=lambda s: s.acc), "divide by the running sum"),
    ("attend_one", _attend(slot=lambda row, j, p: divmod(int(row[j // p]), p)),
     "is a page id, not a slot"),
    ("attend_one", _attend(slot=lambda row, j, p: divmod(int(row[j // p]) + j % p, p)),
     "multiply it by page_size"),
    ("attend_one", _attend(scale_of=lambda s: s * s), "scaled twice or divided by head_dim"),
    ("attend_one", _attend(keys=lambda t, n: n), "no causal mask"),
    ("attend_one", _attend(keys=lambda t, n: min(t + 2, n)), "one key too many"),
    ("attend_one", _attend(slot=lambda row, j, p: (j // p, j % p)), "not contiguous"),
    ("attend_one", _attend(kv_head_of=lambda kv: 0), "not kv head 0"),
    ("attend_one", _attend(scale_of=lambda s: 1.0), "scale the scores"),
]

RIGHT_04 = [
    ("online_softmax", _online(_branchy)), ("online_softmax", _KeepsEveryScore),
    ("online_softmax", _online(_step())),
    ("attend_one", _attend()), ("attend_one", _attend_vectorized),
    ("attend_one", _attend_logsumexp),
]


# -- lessons 05 and 06 --------------------------------------------------------------------------

def _tile_pages(last_key=lambda n, q, tq: min(n, q + tq), page_size_of=lambda p: p):
    def tile_pages(seq_len, q_start, tile_q, page_size):
        if q_start >= seq_len:
            return []
        return list(range(_ceil(last_key(seq_len, q_start, tile_q), page_size_of(page_size))))
    return tile_pages


def _launch(grid=lambda b, h, n, tq: (_ceil(n, tq), h, b), block=lambda tq: (tq,),
            shared=lambda p, d: 2 * p * d * 4):
    def tiled_launch(batch, num_heads, max_len, tile_q, page_size, head_dim):
        return grid(batch, num_heads, max_len, tile_q), block(tile_q), shared(page_size, head_dim)
    return tiled_launch


def _merge(weights, divisor=None):
    def merge_partitions(m, l, o):
        w = weights(m, l)
        return w @ o / (divisor(m, l) if divisor else w).sum()
    return merge_partitions


def _merge_running(m, l, o):
    """A running merge, partition by partition, kept normalized."""
    m_all, l_all, out = -np.inf, 0.0, np.zeros(o.shape[1])
    for m_p, l_p, o_p in zip(m, l, o):
        m_new = max(m_all, m_p)
        a, b = l_all * np.exp(m_all - m_new), l_p * np.exp(m_p - m_new)
        out, l_all, m_all = (out * a + o_p * b) / (a + b), a + b, m_new
    return out


LESSONS_05_06 = [
    ("tile_pages", _tile_pages(page_size_of=lambda p: 16), "pages of 16 tokens"),
    ("tile_pages", _tile_pages(last_key=lambda n, q, tq: min(n, tq)), "the first tile's keys"),
    ("tile_pages", _tile_pages(last_key=lambda n, q, tq: n), "never needed (causal)"),
    ("tile_pages", _tile_pages(last_key=lambda n, q, tq: q + tq), "runs past the sequence's end"),
    ("tile_pages", lambda n, q, tq, p: [] if q >= n else
     list(range(q // p, _ceil(min(n, q + tq), p))),
     "start at page 0"),
    ("tile_pages", lambda n, q, tq, p: list(range(_ceil(min(n, q + tq), p))), "no work"),
    ("tiled_launch", _launch(grid=lambda b, h, n, tq: (n // tq, h, b)), "round the number"),
    ("tiled_launch", _launch(grid=lambda b, h, n, tq: (b, h, _ceil(n, tq))), "the sequence in z"),
    ("tiled_launch", _launch(shared=lambda p, d: 2 * p * d), "in bytes"),
    ("tiled_launch", _launch(block=lambda tq: tq), "needs its comma"),
    ("tiled_launch", _launch(grid=lambda b, h, n, tq: (n // tq + 1, h, b)), "one tile too many"),
    ("merge_partitions", _merge(lambda m, l: l * np.exp(m.max() - m)), "the exponent is reversed"),
    ("merge_partitions", _merge(lambda m, l: np.exp(m - m.max())), "not exp(m_p - m) alone"),
    ("merge_partitions", _merge(lambda m, l: np.exp(m - m.max()),
                                lambda m, l: l * np.exp(m - m.max())), "o_p is already divided"),
    ("merge_partitions", _merge(lambda m, l: l * np.exp(m)), "exp overflowed"),
    ("merge_partitions", lambda m, l, o: o.mean(axis=0), "a plain average"),
    ("merge_partitions", _merge(lambda m, l: l), "its own partition's max"),
]

RIGHT_05_06 = [
    ("tile_pages", lambda n, q, tq, p: [i for i in range(n) if i * p < min(n, q + tq)]
     if q < n else []),
    ("tile_pages", lambda n, q, tq, p: list(range((min(n, q + tq) - 1) // p + 1)) if q < n else []),
    ("tile_pages", lambda n, q, tq, p: list(range(math.ceil(min(n, q + tq) / p))) if q < n else []),
    ("tiled_launch", _launch(grid=lambda b, h, n, tq: (math.ceil(n / tq), h, b))),
    ("tiled_launch", _launch(block=lambda tq: (tq, 1, 1))),
    ("tiled_launch", _launch(shared=lambda p, d: int(np.float32(0).nbytes * 2 * p * d))),
    ("merge_partitions", lambda m, l, o: np.exp(m + np.log(l) - np.logaddexp.reduce(m + np.log(l)))
     @ o),
    ("merge_partitions", _merge_running),
    ("merge_partitions", lambda m, l, o: np.einsum("p,pd->d", l * np.exp(m - m.max()), o)
     / np.sum(l * np.exp(m - m.max()))),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(LESSON_04 + LESSONS_05_06))
def test_lessons_04_06_mistakes_are_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("task, impl", RIGHT_04 + RIGHT_05_06,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(RIGHT_04 + RIGHT_05_06)])
def test_lessons_04_06_right_answers_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


# -- lesson 07 ----------------------------------------------------------------------------------

def _next_pages(full=lambda n, p: n % p == 0, last_page_counts=True):
    def pages_for_next_token(cache, seq_id):
        n = cache.seq_len(seq_id)
        if full(n, cache.page_size):
            return 1
        shared = cache.allocator.ref_count(cache.block_table(seq_id)[-1]) > 1
        return int(shared and last_page_counts)
    return pages_for_next_token


def _next_pages_any_shared(cache, seq_id):
    if cache.seq_len(seq_id) % cache.page_size == 0:
        return 1
    return int(any(cache.allocator.ref_count(p) > 1 for p in cache.block_table(seq_id)))


def _next_pages_by_table(cache, seq_id):
    table = cache.block_table(seq_id)
    if len(table) * cache.page_size == cache.seq_len(seq_id):
        return 1
    return int(cache.allocator.ref_count(table[-1]) != 1)


def _next_pages_by_ceil(cache, seq_id):
    n, p = cache.seq_len(seq_id), cache.page_size
    if _ceil(n + 1, p) > _ceil(n, p):
        return 1
    return int(cache.allocator.ref_count(cache.block_table(seq_id)[-1]) >= 2)


def _manager(count=None, compare=lambda need, free: need > free, attend_first=False,
             own_scale=False, order=list):

    class MyManager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids = list(seq_ids)
            alloc = self.cache.allocator
            need = count(self.cache, seq_ids) if count else sum(
                _next_pages()(self.cache, s) for s in seq_ids)
            if compare(need, alloc.num_free):
                raise pl.OutOfPagesError(need, alloc.num_free, alloc.num_pages)

            def attend():
                tables, lens = self.cache.block_tables(order(seq_ids))
                return pl.paged_attention_decode(
                    self.xp.asarray(q, dtype=self.cache.dtype), self.cache.k_cache,
                    self.cache.v_cache, tables, lens,
                    1 / np.sqrt(q.shape[-1]) if own_scale else self.scale)
            out = attend() if attend_first else None
            for i, seq_id in enumerate(seq_ids):
                self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])
            return out if attend_first else attend()
    return MyManager


def _serve(promise=True, fifo=True, free=True, need_of=sum, pages=_ceil):
    def serve(cache, requests, kv_for):
        waiting, running, finished = list(range(len(requests))), {}, []
        while waiting or running:
            for i in list(waiting):
                promised = sum(pages(sum(requests[j]), cache.page_size)
                               - pages(cache.seq_len(s), cache.page_size)
                               for j, s in running.items()) if promise else 0
                if pages(need_of(requests[i]), cache.page_size) > \
                        cache.allocator.num_free - promised:
                    if fifo:
                        break
                    continue
                waiting.remove(i)
                running[i] = cache.add_sequence()
                cache.append(running[i], *kv_for(i, 0, requests[i][0]))
            for i, seq_id in list(running.items()):
                position = cache.seq_len(seq_id)
                if position < sum(requests[i]):
                    cache.append(seq_id, *kv_for(i, position, 1))
                if cache.seq_len(seq_id) == sum(requests[i]):
                    if free:
                        cache.free_sequence(seq_id)
                    del running[i]
                    finished.append(i)
        return finished
    return serve


def _serve_held_pages(cache, requests, kv_for):
    """promised from the tables' lengths, the queue as an index."""
    head, running, finished = 0, [], []
    while head < len(requests) or running:
        while head < len(requests):
            promised = sum(_ceil(sum(requests[i]), cache.page_size) - len(cache.block_table(s))
                           for i, s in running)
            if _ceil(sum(requests[head]), cache.page_size) + promised > cache.allocator.num_free:
                break
            seq_id = cache.add_sequence()
            cache.append(seq_id, *kv_for(head, 0, requests[head][0]))
            running.append((head, seq_id))
            head += 1
        still = []
        for i, seq_id in running:
            if cache.seq_len(seq_id) < sum(requests[i]):
                cache.append(seq_id, *kv_for(i, cache.seq_len(seq_id), 1))
            if cache.seq_len(seq_id) == sum(requests[i]):
                cache.free_sequence(seq_id)
                finished.append(i)
            else:
                still.append((i, seq_id))
        running = still
    return finished


LESSON_07 = [
    ("pages_for_next_token", _next_pages(full=lambda n, p: n % 16 == 0), "pages of 16 tokens",
     ["shifts and masks"]),
    ("pages_for_next_token", _next_pages(full=lambda n, p: n & (p - 1) == 0),
     "page_size = 6 here is not", ["pages of 16 tokens"]),
    ("pages_for_next_token", _next_pages(last_page_counts=False), "copy on write"),
    ("pages_for_next_token", _next_pages_any_shared, "only the page the token is written into"),
    ("pages_for_next_token", _next_pages(full=lambda n, p: n % p == 0 and n > 0),
     "test seq_len % page_size == 0 (true for 0) first"),
    ("decode_step", _manager(count=lambda c, ids: len(ids)), "not one page per sequence"),
    ("decode_step", _manager(compare=lambda need, free: need >= free), "not needed >= num_free"),
    ("decode_step", _manager(count=lambda c, ids: sum(c.seq_len(s) % c.page_size == 0
                                                      for s in ids)), "copy on write"),
    ("decode_step", _manager(attend_first=True), "must attend to itself"),
    ("decode_step", _manager(own_scale=True), "pass self.scale"),
    ("decode_step", _manager(order=sorted), "in the order of seq_ids"),
    ("serve", _serve(pages=lambda n, p: _ceil(n, 16)), "pages of 16 tokens"),
    ("serve", _serve(pages=lambda n, p: n // p), "yours rounds down"),
    ("serve", _serve(promise=False), "after the pages the running sequences will still take"),
    ("serve", _serve(fifo=False), "first come, first served"),
    ("serve", _serve(free=False), "cache.free_sequence"),
    ("serve", _serve(need_of=lambda r: r[0]), "the prompt's pages alone"),
]

RIGHT_07 = [
    ("pages_for_next_token", _next_pages()), ("pages_for_next_token", _next_pages_by_table),
    ("pages_for_next_token", _next_pages_by_ceil),
    ("decode_step", _manager()),
    ("decode_step", _manager(count=lambda c, ids: sum(map(lambda s: _next_pages_by_ceil(c, s),
                                                          ids)))),
    ("decode_step", _manager(count=lambda c, ids: sum(_next_pages_by_table(c, s) for s in ids))),
    ("serve", _serve()), ("serve", _serve_held_pages),
    ("serve", _serve(pages=lambda n, p: math.ceil(n / p))),
]


# -- lesson 08 ----------------------------------------------------------------------------------

def _kv_bytes(tokens=lambda lens: int(np.sum(lens)), heads=lambda h, kv: kv, both=2,
              size=lambda dtype: np.dtype(dtype).itemsize):
    def kv_bytes(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
        return tokens(seq_lens) * both * heads(num_heads, num_kv_heads) * head_dim * size(dtype)
    return kv_bytes


def _choose(waste_of=lambda lens, p: _paged(lens, p), pick=max, fallback=min,
            within=lambda w, limit: w <= limit):
    def choose_page_size(seq_lens, candidates, max_waste):
        lens = np.asarray(seq_lens, dtype=np.int64)
        good = [p for p in candidates if within(waste_of(lens, p), max_waste)]
        return pick(good) if good else fallback(candidates)
    return choose_page_size


def _choose_loop(seq_lens, candidates, max_waste):
    best = None
    for p in candidates:
        allocated = sum(math.ceil(n / p) for n in seq_lens) * p
        waste = (allocated - sum(seq_lens)) / allocated if allocated else 0.0
        if waste <= max_waste and (best is None or p > best):
            best = p
    return best if best is not None else min(candidates)


LESSON_08 = [
    ("kv_bytes", _kv_bytes(both=1), "the factor 2"),
    ("kv_bytes", _kv_bytes(heads=lambda h, kv: h), "not num_heads"),
    ("kv_bytes", _kv_bytes(tokens=lambda lens: max(lens) * len(lens)), "sum the lengths"),
    ("kv_bytes", _kv_bytes(size=lambda dtype: 2), "not 2 whatever the dtype"),
    ("kv_bytes", _kv_bytes(size=lambda dtype: 8 * np.dtype(dtype).itemsize), "that is bits"),
    ("kv_bytes", lambda L, H, K, D, dt: int(np.sum(np.asarray(L, dtype=np.int32)
                                                 * np.int32(2 * K * D * np.dtype(dt).itemsize))),
     "overflowed int32"),
    ("decode_floor_ms", lambda n, b: n / (b * 2**30) * 1e3, "not 2**30"),
    ("decode_floor_ms", lambda n, b: n / (b * 1e9), "seconds x 1000"),
    ("decode_floor_ms", lambda n, b: n / (b * 1e9) * 1e6, "that is microseconds"),
    ("decode_floor_ms", lambda n, b: b * 1e9 / n * 1e3, "not bandwidth / bytes"),
    ("decode_floor_ms", lambda n, b: 2 * n / (b * 1e9) * 1e3, "no factor 2"),
    ("decode_floor_ms", lambda n, b: round(n / (b * 1e9) * 1e3, 3), "unrounded"),
    ("choose_page_size", _choose(pick=min), "pick the largest"),
    ("choose_page_size", _choose(within=lambda w, limit: w < limit), "(<=), not 'below' (<)"),
    ("choose_page_size", _choose(fallback=max), "return the smallest one"),
    ("choose_page_size", _choose(pick=lambda good: good[0]), "pick the largest"),
    ("choose_page_size",
     _choose(waste_of=lambda lens, p: float(np.mean(1 - lens / (_ceil(lens, p) * p)))),
     "1 - sum(seq_lens) / allocated over the whole batch"),
]

RIGHT_08 = [
    ("kv_bytes", lambda L, H, K, D, dt: sum(int(x) for x in L) * 2 * K * D
     * np.dtype(dt).itemsize),
    ("kv_bytes", _kv_bytes(tokens=lambda lens: int(np.sum(lens, dtype=np.int64)))),
    ("kv_bytes", _kv_bytes(size=lambda dtype: np.zeros(1, dtype).nbytes)),
    ("decode_floor_ms", lambda n, b: n / b / 1e6),
    ("decode_floor_ms", lambda n, b: 1000 * n / (1e9 * b)),
    ("decode_floor_ms", lambda n, b: float(np.float64(n) / np.float64(b) * 1e-6)),
    ("choose_page_size", _choose()), ("choose_page_size", _choose_loop),
    ("choose_page_size", lambda L, C, mw: next(
        (p for p in sorted(C, reverse=True) if _paged(np.asarray(L, dtype=np.int64), p) <= mw),
        min(C))),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(LESSON_07 + LESSON_08))
def test_lessons_07_08_mistakes_are_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("task, impl", RIGHT_07 + RIGHT_08,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(RIGHT_07 + RIGHT_08)])
def test_lessons_07_08_right_answers_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
