"""Helper 266: the outsider's seeded grid, continued: the serving side's other public parts.

- `PagedKVCache`, plain and compressed (int8, fp8 e4m3; static and per-token scales), under
  random adds, appends of 0, 1, page-1, page and page+1 tokens, forks, frees and failed
  transactions: after each, ref counts equal the block tables holding each page, each
  sequence's length equals the tokens appended and its table the pages they need, and its
  gathered K/V equal those of a cache that holds the same rows in one straight run (no fork,
  no copy on write); `pages_needed` and `decode_pages_needed` price exactly what the appends
  then take (never less at any point of the step); a full pool's refusal changes nothing.
- The tensor-parallel step helpers: head ranges tile the heads in whole groups, the shards
  put together are the cache, `reassemble` puts each rank's heads back, `pack_tables` /
  `unpack_tables` round-trip decode and prefill tables of every size up to the buffer's,
  `step_bytes` agrees with `table_capacity` and the shards.
- The serving simulator: each step's five categories add up to the capacity and none goes
  negative, every request finishes, only paging preempts, paging has no external waste.
"""
from collections import Counter

import numpy as np
import pytest

from pagedattn_lab import OutOfPagesError, PagedKVCache
from pagedattn_lab.distributed import (head_range, pack_tables, reassemble, shard_cache,
                                       step_bytes, table_capacity, unpack_tables)
from pagedattn_lab.sim import CATEGORIES, POLICIES, Workload, simulate

HEADS, DIM = 2, 4


class Undo(Exception):
    """Raised inside a transaction to roll it back."""


# -- PagedKVCache -------------------------------------------------------------------------------

def make_cache(num_pages, page_size, kv_dtype, scheme, dtype=np.float32):
    scales = {}
    if kv_dtype and scheme == "static":
        scales = dict(k_scale=np.full(HEADS, 0.05, np.float32),
                      v_scale=np.full(HEADS, 0.04, np.float32))
    return PagedKVCache(num_pages, page_size, HEADS, DIM, dtype=dtype, device="cpu",
                        kv_dtype=kv_dtype, scale_scheme=scheme, **scales)


def rows(rng, n):
    k = (rng.standard_normal((n, HEADS, DIM)) * rng.choice([0.1, 1, 3])).astype(np.float32)
    return k, rng.standard_normal((n, HEADS, DIM)).astype(np.float32)


def check_cache(cache, written, kv_dtype, scheme, dtype):
    cache.allocator.check_invariants()
    held = Counter(p for s in cache.seq_ids for p in cache.block_table(s))
    assert [cache.allocator.ref_count(p) for p in range(cache.num_pages)] == [
        held.get(p, 0) for p in range(cache.num_pages)], "ref counts differ from the tables"
    ps = cache.page_size
    for s in cache.seq_ids:
        ks, vs = written[s]
        assert cache.seq_len(s) == len(ks)
        assert len(cache.block_table(s)) == -(-len(ks) // ps)
        straight = make_cache(max(1, -(-len(ks) // ps)), ps, kv_dtype, scheme, dtype)
        t = straight.add_sequence()
        if ks:
            straight.append(t, np.stack(ks), np.stack(vs))
        for got, want in zip(cache.gather(s), straight.gather(t)):
            assert np.array_equal(got, want), f"sequence {s}: its K/V depend on its pages"


def cache_case(seed):
    rng = np.random.default_rng(seed)
    kv_dtype = [None, "int8", "fp8_e4m3"][seed % 3]
    scheme = ["static", "per_token"][seed // 3 % 2]
    dtype = [np.float32, np.float16][seed // 6 % 2]
    return rng, kv_dtype, scheme, dtype, int(rng.choice([1, 2, 3, 5])), int(rng.integers(1, 16))


def price_the_next_append(cache, rng, seq):
    """pages_needed, then the append it priced; rolled back."""
    n = int(rng.choice([0, 1, cache.page_size, cache.page_size + 1]))
    need, free = cache.pages_needed(seq, n), cache.allocator.num_free
    try:
        with cache.transaction():
            cache.append(seq, *rows(rng, n))
            assert free - cache.allocator.num_free == need, "pages_needed is not what it takes"
            raise Undo
    except OutOfPagesError:
        assert need > free, "refused an append that pages_needed says fits"
    except Undo:
        pass


def price_a_decode_step(cache, rng):
    """decode_pages_needed of a random batch, then one token appended to each; rolled back."""
    live = cache.seq_ids
    ids = [int(s) for s in rng.permutation(live)[:int(rng.integers(1, len(live) + 1))]]
    need, free, peak = cache.decode_pages_needed(ids), cache.allocator.num_free, 0
    if need > free:
        return
    try:
        with cache.transaction():
            for s in ids:
                cache.append(s, *rows(rng, 1))
                peak = max(peak, free - cache.allocator.num_free)
            assert peak <= need == free - cache.allocator.num_free, (need, peak)
            raise Undo
    except Undo:
        pass


@pytest.mark.parametrize("seed", range(24))
def test_paged_cache_grid_keeps_tables_counts_and_contents(seed):
    rng, kv_dtype, scheme, dtype, page_size, num_pages = cache_case(seed)
    cache = make_cache(num_pages, page_size, kv_dtype, scheme, dtype)
    written = {cache.add_sequence(): ([], [])}
    for _ in range(30):
        op = rng.choice(["add", "append", "append", "fork", "fork", "free", "price", "decode"])
        seq = int(rng.choice(cache.seq_ids)) if cache.seq_ids else None
        if op == "add" or seq is None:
            written[cache.add_sequence()] = ([], [])
        elif op == "append":
            n = int(rng.choice([0, 1, max(1, page_size - 1), page_size, page_size + 1]))
            k, v = rows(rng, n)
            before = cache.k_cache.copy(), cache.allocator.state()
            try:
                cache.append(seq, k, v)
            except OutOfPagesError:
                assert np.array_equal(cache.k_cache, before[0])
                assert cache.allocator.state() == before[1]
            else:
                written[seq][0].extend(k)
                written[seq][1].extend(v)
        elif op == "fork":
            written[cache.fork_sequence(seq)] = tuple(list(x) for x in written[seq])
        elif op == "free":
            cache.free_sequence(seq)
            del written[seq]
        elif op == "price":
            price_the_next_append(cache, rng, seq)
        else:
            price_a_decode_step(cache, rng)
        check_cache(cache, written, kv_dtype, scheme, dtype)


# -- tensor parallelism -------------------------------------------------------------------------

def tables_case(rng, page_size):
    batch = int(rng.integers(0, 5))
    lens = rng.integers(1, 40, batch).astype(np.int32)
    pages = -(-lens // page_size)
    width = max([0, *pages.tolist()]) + int(rng.integers(0, 2))
    tables = np.full((batch, width), -1, np.int32)
    for i, n in enumerate(pages):
        tables[i, :n] = rng.integers(0, 100, n)
    queries = [int(rng.integers(0, n + 1)) for n in lens]
    indptr = np.concatenate([[0], np.cumsum(queries)]).astype(np.int32)
    return tables, lens, indptr


@pytest.mark.parametrize("seed", range(40))
def test_tensor_parallel_helpers_round_trip(seed):
    rng = np.random.default_rng(seed)
    kv_heads, group = int(rng.choice([1, 2, 4, 6, 8])), int(rng.choice([1, 2, 3, 8]))
    heads = kv_heads * group
    world = int(rng.choice([d for d in range(1, kv_heads + 1) if kv_heads % d == 0]))
    ranges = [head_range(r, world, heads, kv_heads) for r in range(world)]
    assert (ranges[0].kv_start, ranges[0].q_start) == (0, 0)
    assert (ranges[-1].kv_stop, ranges[-1].q_stop) == (kv_heads, heads)
    for a, b in zip(ranges, ranges[1:]):
        assert (a.kv_stop, a.q_stop) == (b.kv_start, b.q_start)
    for r in ranges:   # each query head reads a KV head of its own rank
        assert all(r.kv_start <= q // group < r.kv_stop for q in range(r.q_start, r.q_stop))
    cache = rng.standard_normal((3, 2, kv_heads, 4)).astype(np.float32)
    assert np.array_equal(np.concatenate([shard_cache(cache, r) for r in ranges], axis=2), cache)
    batch = int(rng.integers(0, 4))
    out = rng.standard_normal((batch, heads, 4)).astype(np.float32)
    gathered = np.concatenate([out[:, r.q_start:r.q_stop].ravel() for r in ranges])
    assert np.array_equal(reassemble(gathered, world, batch, heads, 4), out)

    page_size = int(rng.choice([1, 3, 16]))
    tables, lens, indptr = tables_case(rng, page_size)
    max_batch, max_pages = len(lens) + int(rng.integers(0, 3)), tables.shape[1] + int(
        rng.integers(0, 3))
    for prefill in (None, indptr):
        buf = pack_tables(tables, lens, max_batch, max_pages, prefill, page_size=page_size)
        assert buf.size == table_capacity(max_batch, max_pages, prefill is not None)
        back = unpack_tables(buf, max_batch, None if prefill is None else max_pages)
        for got, want in zip(back, (tables, lens, indptr)):
            assert np.array_equal(got, want)
    moved = step_bytes(lens.tolist(), heads, kv_heads, 4, page_size, world, 2, max_batch,
                       max_pages)
    assert moved.tables == 4 * table_capacity(max_batch, max_pages)
    assert moved.output_share * world == moved.output == len(lens) * heads * 4 * 2
    assert moved.kv_read == sum(shard_cache(cache, ranges[0]).shape[2] * 4 * 2 * 2 * n
                                for n in lens.tolist())


# -- the serving simulator ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(30))
def test_simulator_accounts_for_every_slot_and_finishes_every_request(seed):
    rng = np.random.default_rng(seed)
    page_size = int(rng.choice([1, 2, 3, 16, 17]))
    prompt_max = int(rng.choice([4, 8, 33, 64]))
    workload = Workload(num_requests=int(rng.integers(1, 30)),
                        prompt_median=float(rng.choice([2, 10, 40])),
                        output_median=float(rng.choice([1, 5, 50])), prompt_max=prompt_max,
                        max_len=prompt_max + int(rng.choice([4, 5, 30, 100])),
                        min_len=int(rng.choice([1, 4])), seed=seed)
    capacity = workload.max_len + int(rng.choice([0, 1, page_size - 1, page_size, 200]))
    watermark = float(rng.choice([0, 0.01, 0.1, 0.3]))
    for policy in POLICIES:
        try:
            result = simulate(policy, workload, capacity_tokens=capacity, page_size=page_size,
                              watermark=watermark, max_steps=5000)
        except ValueError as error:   # (paging: too few whole pages for max_len)
            assert policy == "paged" and ("page_size" in str(error) or
                                          "watermark" in str(error)), error
            continue
        parts = [result.series[c] for c in CATEGORIES]
        assert all((p >= 0).all() for p in parts), policy
        assert (sum(parts) == result.capacity).all(), policy
        assert result.finished == workload.num_requests, policy
        assert abs(sum(result.breakdown().values()) - 1) < 1e-9
        if policy == "paged":
            assert not result.series["external"].any()
        else:
            assert result.preemptions == 0
