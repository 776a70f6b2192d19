"""Hunt 183: the advanced half checked against references written here, not read off the package.

- compressed capacity: every array a `PagedKVCache` or the engine's `KVStore` allocates adds
  up to `num_pages * page_bytes(...)`, which is the byte formula written out here (one byte a
  code, 2 float32 scales per (token, KV head) per token, none per page for static scales);
  the same memory holds exactly twice the static-scale pages of fp16, and the serving
  simulator given that memory gets exactly those pages' slots;
- prefix caching: `BlockPool` step by step against a plain-list model of vLLM's pool (ref
  counts, a hash -> page table, an LRU free queue evicted from the front, begin/rollback);
  block hashes against SHA-256 written out (full blocks only, chained);
- tensor parallelism: head ranges against the GQA rule (query head h reads KV head h // group),
  the reassembled all-gather and the step's byte counts against formulas written here;
- the split-K merge of partial states against softmax over all scores.

Bugs found (each test below failed before its fix):
- `page_bytes` took any sizes: page_size -16 gave -65536 bytes, 16.5 a float, head_dim 0 made
  `pages_in` divide by zero; a misspelt scale_scheme passed for uncompressed pages;
  `pages_in` cut 1000.9 bytes to 1000, read "1000" as 1000 and gave -1000 bytes -250 pages.
- `sim.simulate` given capacity_tokens and memory_bytes dropped capacity_tokens silently.
- `split_k.merge_partials` read partitions < 1.5 for num_parts=1.5 (two of them), and
  states of disagreeing shapes failed in a NumPy broadcast naming no argument.
- `KVCacheManager.admit` took any cached pages as a prompt's hits (it checked their number
  and that each caches something): another prompt's pages, or its own in another order,
  were served as its K/V.
"""
import contextlib
import copy
import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pagedattn_lab import sim
from pagedattn_lab.cache import PagedKVCache, page_bytes, pages_in
from pagedattn_lab.distributed.shard import (check_split, head_range, reassemble, step_bytes,
                                             table_capacity)
from pagedattn_lab.engine import tiny_config
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.kv_store import KVStore
from pagedattn_lab.engine.prefix_cache import BlockPool, block_hashes
from pagedattn_lab.engine.request import Request, SamplingParams
from pagedattn_lab.paging import OutOfPagesError
from pagedattn_lab.split_k import merge_partials, partial_state
from tests.test_engine_hunt67 import RefPool

# ---- compressed capacity -----------------------------------------------------------------

ITEMSIZE = {np.float32: 4, np.float16: 2}


def expected_page_bytes(page_size, heads, head_dim, dtype, kv_dtype, scheme):
    """K and V of one page: the element's bytes, or a byte a code plus per-token scales."""
    if kv_dtype is None:
        return page_size * heads * 2 * head_dim * ITEMSIZE[dtype]
    return page_size * heads * (2 * head_dim + (8 if scheme == "per_token" else 0))


FORMATS = [(None, "static"), ("int8", "static"), ("int8", "per_token"),
           ("fp8_e4m3", "static"), ("fp8_e4m3", "per_token")]


@pytest.mark.parametrize("kv_dtype, scheme", FORMATS)
@pytest.mark.parametrize("page_size, heads, head_dim", [(1, 1, 1), (3, 2, 5), (16, 3, 64)])
def test_a_caches_arrays_are_exactly_its_page_bytes(kv_dtype, scheme, page_size, heads,
                                                    head_dim):
    for dtype in (np.float32, np.float16):
        want = expected_page_bytes(page_size, heads, head_dim, dtype, kv_dtype, scheme)
        assert page_bytes(page_size, heads, head_dim, dtype, kv_dtype, scheme) == want
        ones = np.ones(heads, np.float32)
        cache = PagedKVCache(5, page_size, heads, head_dim, dtype=dtype, device="cpu",
                             kv_dtype=kv_dtype, scale_scheme=scheme, k_scale=ones, v_scale=ones)
        arrays = [cache.k_cache, cache.v_cache]
        if scheme == "per_token" and kv_dtype:
            arrays += [cache.k_scale, cache.v_scale]
        assert sum(a.nbytes for a in arrays) == 5 * want == 5 * cache.page_bytes
        assert cache.bytes_per_token * page_size == want


@pytest.mark.parametrize("kv_dtype, scheme", FORMATS[1:])
def test_the_engines_store_holds_exactly_its_bytes_per_page(kv_dtype, scheme):
    config = tiny_config()
    layers, heads = config.num_hidden_layers, config.num_key_value_heads
    scales = (np.ones((layers, heads), np.float32),) * 2 if scheme == "static" else None
    store = KVStore(config, 7, 4, np.float16, np, 0, kv_dtype, scheme, scales)
    held = sum(a.nbytes for arrays in store._paged for a in arrays)
    assert held == 7 * store.bytes_per_page == 7 * layers * expected_page_bytes(
        4, heads, config.head_dim, np.float16, kv_dtype, scheme)


@pytest.mark.parametrize("page_size, heads, head_dim", [(4, 2, 64), (16, 8, 128), (5, 3, 7)])
def test_the_same_memory_holds_twice_the_compressed_pages_and_the_simulator_agrees(
        page_size, heads, head_dim):
    fp16 = dict(page_size=page_size, num_kv_heads=heads, head_dim=head_dim, dtype=np.float16)
    memory = 30 * page_bytes(**fp16) + page_bytes(**fp16) - 1   # a page's worth left over
    assert pages_in(memory, **fp16) == 30
    for kv_dtype in ("int8", "fp8_e4m3"):
        assert pages_in(memory, **fp16, kv_dtype=kv_dtype) == 61   # the leftover: a half page
        per_token = pages_in(memory, **fp16, kv_dtype=kv_dtype, scale_scheme="per_token")
        assert per_token == memory // (page_size * heads * (2 * head_dim + 8))
    # the simulator's pool, given the memory and a token's bytes, is those pages' slots
    workload = sim.Workload(num_requests=3, prompt_max=4, min_len=1, max_len=8)
    for kv_dtype, scheme in FORMATS:
        page = dict(fp16, kv_dtype=kv_dtype, scale_scheme=scheme)
        result = sim.simulate("paged", workload, page_size=page_size, memory_bytes=memory,
                              bytes_per_token=page_bytes(**dict(page, page_size=1)),
                              max_steps=1)
        assert result.capacity == pages_in(memory, **page) * page_size


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((-16, 8, 128), {}, ValueError, r"^page_size: expected an int >= 1, got -16"),
    ((16.5, 8, 128), {}, TypeError, r"^page_size: expected an int, got 16\.5"),
    ((True, 8, 128), {}, TypeError, r"^page_size: expected an int, got True"),
    ((16, 0, 128), {}, ValueError, r"^num_kv_heads: expected an int >= 1, got 0"),
    ((16, 8, 0), {"kv_dtype": "int8"}, ValueError, r"^head_dim: expected an int >= 1, got 0"),
    ((16, 8, 128), {"scale_scheme": "per_tokn"}, ValueError, r"^scale_scheme: expected one of"),
])
def test_page_bytes_refuses_sizes_by_name(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        page_bytes(*args, **kwargs)


@pytest.mark.parametrize("memory, page, exc, match", [
    (1000.9, {}, TypeError, r"^memory_bytes: expected an int, got 1000\.9"),
    ("1000", {}, TypeError, r"^memory_bytes: expected an int, got '1000'"),
    (-1000, {}, ValueError, r"^memory_bytes: expected an int >= 0, got -1000"),
    (1000, {"head_dim": 0}, ValueError, r"^head_dim: expected an int >= 1, got 0"),
])
def test_pages_in_refuses_memory_and_sizes_by_name(memory, page, exc, match):
    with pytest.raises(exc, match=match):
        pages_in(memory, **{"page_size": 1, "num_kv_heads": 1, "head_dim": 1, **page})


@pytest.mark.parametrize("call", [sim.simulate, sim.compare_policies])
def test_simulate_refuses_a_capacity_and_a_memory_together(call):
    args = ("paged",) if call is sim.simulate else ()
    with pytest.raises(ValueError, match=r"^capacity_tokens, memory_bytes: give the capacity "
                                         r"in tokens or the memory"):
        call(*args, sim.Workload(num_requests=3), capacity_tokens=4096, memory_bytes=2**20,
             bytes_per_token=64)
    # either alone is what it was
    workload = sim.Workload(num_requests=3, prompt_max=4, min_len=1, max_len=8)
    assert sim.simulate("paged", workload, max_steps=1).capacity == 32768
    assert sim.simulate("paged", workload, capacity_tokens=64, max_steps=1).capacity == 64


# ---- prefix caching: the pool against a plain model --------------------------------------

class ModelPool(RefPool):
    """vLLM's block pool in plain lists (hunt 67's) under BlockPool's names, with its
    refusals: no more pages than are free, no page freed past its owners; a whole copy of
    itself serves begin/rollback."""

    def __init__(self, n):
        super().__init__(n)
        self.n = n

    def allocate(self, k):
        if k > len(self.queue):
            raise OutOfPagesError(k, len(self.queue), self.n)
        return super().allocate(k)

    def free(self, pages):
        if any(pages.count(p) > self.ref[p] for p in pages):
            raise ValueError("a page freed more times than it has owners")
        self.release(pages)

    def forget(self, pages):
        for p in pages:
            self.drop_hash(p)


HASHES = [bytes([i]) * 32 for i in range(5)]


class Interrupted(Exception):
    """A call that fails halfway inside `BlockPool.atomic`."""
TOKENS = st.lists(st.integers(0, 2), min_size=1, max_size=2)


class PoolAgainstModel(RuleBasedStateMachine):
    """Every call on both; the same answer (or the same refusal, the pool unchanged), and
    after every rule the same counts, hashes, free queue order and eviction count."""

    @initialize(n=st.integers(1, 5))
    def make(self, n):
        self.pool, self.model, self.saved, self.handed_out = BlockPool(n), ModelPool(n), None, []

    def both(self, name, *args):
        answers = []
        for obj in (self.model, self.pool):
            try:
                answers.append((getattr(obj, name)(*copy.deepcopy(args)), None))
            except (ValueError, OutOfPagesError) as e:
                answers.append((None, type(e)))
        assert answers[0] == answers[1], (name, args, answers)
        return answers[1][0]

    @rule(k=st.integers(0, 3))
    def allocate(self, k):
        self.handed_out += self.both("allocate", k) or []

    @rule(data=st.data())
    def touch(self, data):   # (a prefix hit takes a held or a cached page; any other refused)
        takeable = [p for p in range(self.model.n) if self.model.takeable(p)]
        anything = st.lists(st.integers(0, self.model.n - 1), max_size=3)
        self.both("touch", data.draw(st.one_of(st.lists(st.sampled_from(takeable), max_size=3),
                                               anything) if takeable else anything))

    @rule(data=st.data())
    def free(self, data):
        self.both("free", data.draw(st.lists(st.integers(0, self.model.n - 1), max_size=3)))

    @rule(data=st.data(), block_hash=st.sampled_from(HASHES), tokens=TOKENS)
    def register(self, data, block_hash, tokens):   # (mostly a held or cached page)
        takeable = [p for p in range(self.model.n) if self.model.takeable(p)]
        anyone = st.integers(0, self.model.n - 1)
        page = data.draw(st.one_of(st.sampled_from(takeable), anyone) if takeable else anyone)
        self.both("register", page, block_hash, tokens)

    @rule(block_hash=st.sampled_from(HASHES), tokens=TOKENS)
    def lookup(self, block_hash, tokens):
        self.both("lookup", block_hash, tokens)

    @rule(data=st.data())
    def forget(self, data):
        self.both("forget", data.draw(st.lists(st.integers(0, self.model.n - 1), max_size=2)))

    @precondition(lambda self: self.saved is None)
    @rule()
    def begin(self):
        self.pool.begin()
        self.saved, self.handed_out = copy.deepcopy(self.model.__dict__), []

    @precondition(lambda self: self.saved is not None)
    @rule(keep=st.booleans())
    def end(self, keep):
        if keep:
            self.pool.commit()
        else:
            assert self.pool.rollback() == self.handed_out
            self.model.__dict__ = self.saved
        self.saved = None

    @rule(data=st.data(), fail=st.booleans())
    def atomic(self, data, fail):
        """Calls inside `atomic`; if it raises, the pool is as before it but the pages it
        took from the free queue forget their prefix (a copy into them may have begun)."""
        before, outer, self.handed_out = copy.deepcopy(self.model.__dict__), self.handed_out, []
        with contextlib.suppress(Interrupted), self.pool.atomic():
            self.allocate(data.draw(st.integers(0, 2)))
            for _ in range(data.draw(st.integers(0, 2))):
                call = data.draw(st.sampled_from([
                    lambda: self.allocate(data.draw(st.integers(0, 2))),
                    lambda: self.free(data), lambda: self.forget(data),
                    lambda: self.register(data, data.draw(st.sampled_from(HASHES)),
                                          data.draw(TOKENS))]))
                call()
            if fail:
                raise Interrupted
        if fail:
            self.model.__dict__ = before
            self.model.forget(self.handed_out)
        self.handed_out = outer + self.handed_out

    @invariant()
    def same(self):
        pool, model = self.pool, self.model
        assert (pool.ref_cnt, pool.page_hash, pool.page_tokens, pool.cached) == (
            model.ref, model.hash, model.tokens, model.cached)
        assert list(pool.free_queue) == model.queue
        assert (pool.evictions, pool.num_free) == (model.evictions, len(model.queue))
        assert pool.num_cached_free == sum(model.hash[p] is not None for p in model.queue)


TestPoolAgainstModel = PoolAgainstModel.TestCase
TestPoolAgainstModel.settings = settings(max_examples=120, stateful_step_count=25,
                                         deadline=None, suppress_health_check=list(HealthCheck))


def sha_chain(tokens, page_size):
    """SHA-256 of the parent's digest and the block's tokens as little-endian int64."""
    out, parent = [], b""
    for start in range(0, len(tokens) - page_size + 1, page_size):
        block = b"".join(int(t).to_bytes(8, "little", signed=True)
                         for t in tokens[start:start + page_size])
        parent = hashlib.sha256(parent + block).digest()
        out.append(parent)
    return out


@pytest.mark.parametrize("page_size", [1, 2, 3, 5])
def test_block_hashes_are_the_chained_sha256_of_full_blocks_only(page_size):
    rng = np.random.default_rng(page_size)
    for n in range(0, 12):
        tokens = rng.integers(-3, 2**40, n).tolist()
        assert block_hashes(tokens, page_size) == sha_chain(tokens, page_size)
    # an equal block after a different prefix has another hash; equal prefixes share
    a, b = [1] * page_size + [7] * page_size, [2] * page_size + [7] * page_size
    ha, hb = block_hashes(a, page_size), block_hashes(b, page_size)
    assert ha[1] != hb[1] and block_hashes(a + [9] * (page_size - 1), page_size) == ha


def admitted(kv, rid, prompt):
    """A request admitted with its cached prefix, all its tokens computed and offered."""
    req = Request(rid, prompt, SamplingParams())
    hits, computed = kv.cached_prefix(req)
    kv.admit(req, hits, computed, len(prompt) - computed)
    req.num_computed_tokens = len(prompt)
    kv.register_computed(req)
    return req


def pool_state(kv):
    pool = kv.pool
    return (list(pool.ref_cnt), list(pool.page_hash), list(pool.free_queue), kv.query_tokens,
            kv.hit_tokens)


@pytest.mark.parametrize("which", ["another prompt's", "its own, swapped"])
def test_admit_refuses_cached_pages_that_hold_other_blocks(which):
    """admit took any cached pages as hits: a prompt of [9, 9, 9, 9, 5] was admitted on the
    pages of [1, 2, 3, 4, ...], its first 4 tokens' K/V another prompt's."""
    kv = KVCacheManager(8, 2)
    a = admitted(kv, 0, [1, 2, 3, 4, 5])
    pages = list(a.pages)
    kv.free(a)
    prompt = [9, 9, 9, 9, 5] if which == "another prompt's" else [1, 2, 3, 4, 5]
    req = Request(1, prompt, SamplingParams())
    assert kv.cached_prefix(req)[1] == (0 if which == "another prompt's" else 4)
    before = pool_state(kv), req.save()
    with pytest.raises(ValueError, match=rf"^hits\[0\]: page {pages[1]} does not cache "
                                         r"request 1's block 0 \(its tokens 0\.\.1\); pass what "
                                         r"cached_prefix returns"):
        kv.admit(req, [pages[1], pages[0]], 4, 1)
    assert (pool_state(kv), req.save()) == before
    # what cached_prefix gives is taken: the same prompt again hits both pages
    b = admitted(kv, 2, [1, 2, 3, 4, 5, 6])
    assert b.pages[:2] == pages[:2] and kv.hit_tokens == 4


# ---- tensor parallelism: heads, the gathered output, the bytes ----------------------------

SPLITS = [(h, kv, r) for h, kv, r in itertools.product([1, 2, 4, 6, 8, 12, 32], [1, 2, 3, 4, 8],
                                                        [1, 2, 3, 4, 8]) if h % kv == 0]


def test_every_rank_reads_exactly_the_kv_heads_its_query_heads_need():
    for heads, kv_heads, world in SPLITS:
        if kv_heads % world:   # fewer KV heads than ranks included: refused, not replicated
            with pytest.raises(ValueError, match=rf"^world_size: {world} ranks cannot split "
                                                 rf"{kv_heads} KV heads evenly"):
                check_split(heads, kv_heads, world)
            continue
        group, covered = heads // kv_heads, []
        for rank in range(world):
            r = head_range(rank, world, heads, kv_heads)
            queries = range(r.q_start, r.q_stop)
            assert {h // group for h in queries} == set(range(r.kv_start, r.kv_stop))
            covered += queries
        assert covered == list(range(heads))


@pytest.mark.parametrize("world, batch, heads, head_dim", [(1, 3, 4, 2), (2, 3, 4, 2),
                                                           (4, 1, 8, 3), (2, 0, 4, 2)])
def test_reassemble_undoes_a_rank_by_rank_all_gather(world, batch, heads, head_dim):
    full = np.random.default_rng(world).standard_normal((batch, heads, head_dim))
    share = heads // world
    gathered = np.concatenate([full[:, r * share:(r + 1) * share].ravel() for r in range(world)])
    assert np.array_equal(reassemble(gathered, world, batch, heads, head_dim), full)


@pytest.mark.parametrize("lens, heads, kv_heads, head_dim, page_size, world, itemsize", [
    ([5, 17, 0], 8, 2, 64, 16, 2, 2), ([1], 4, 4, 8, 1, 4, 4), ([], 2, 1, 8, 4, 1, 2),
    ([33, 32, 31], 12, 4, 16, 8, 4, 1)])
def test_step_bytes_are_the_formulas(lens, heads, kv_heads, head_dim, page_size, world,
                                     itemsize):
    got = step_bytes(lens, heads, kv_heads, head_dim, page_size, world, itemsize)
    pages = max([-(-n // page_size) for n in lens], default=0)
    out = len(lens) * heads * head_dim * itemsize
    assert got.tables == 4 * (2 + len(lens) + len(lens) * pages) == \
        4 * table_capacity(len(lens), pages)
    assert (got.output, got.output_share) == (out, out // world)
    assert got.kv_read == sum(lens) * 2 * (kv_heads // world) * head_dim * itemsize


# ---- the split-K merge of partial states --------------------------------------------------

def test_merge_partials_is_softmax_over_every_score_for_any_cut():
    rng = np.random.default_rng(183)
    for n, d in [(1, 1), (7, 3), (40, 8)]:
        scores, values = rng.standard_normal(n) * 4, rng.standard_normal((n, d))
        w = np.exp(scores - scores.max())
        exact = w @ values / w.sum()
        cuts = sorted(set(rng.integers(1, n, min(3, n - 1)).tolist())) if n > 1 else []
        edges = [0, *cuts, n]
        m, l, o = (np.array(x) for x in zip(*(partial_state(scores[a:b], values[a:b])
                                              for a, b in zip(edges, edges[1:]))))
        np.testing.assert_allclose(merge_partials(m, l, o), exact, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(merge_partials(m, l, o, np.int64(len(m))), exact,
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shapes, num_parts, exc, match", [
    (((2, 3), (2, 3), (2, 3, 4)), 1.5, TypeError, r"^num_parts: expected an int or an int "),
    (((2, 3), (2, 3), (2, 3, 4)), np.array([True, False]), TypeError, r"^num_parts: expected"),
    (((2, 3), (2, 3), (2, 3, 4)), np.array([1, 2, 3]), ValueError,
     r"^num_parts: expected a shape that broadcasts to m's rows \(2,\), got \(3,\)"),
    (((2, 3), (2, 2), (2, 3, 4)), None, ValueError, r"^m, l, o: expected m and l of one shape"),
    (((2, 3), (2, 3), (2, 2, 4)), None, ValueError, r"^m, l, o: expected"),
    (((2, 3), (2, 3), (2, 3)), None, ValueError, r"^m, l, o: expected"),
])
def test_merge_partials_refuses_states_and_counts_by_name(shapes, num_parts, exc, match):
    m, l, o = (np.ones(s) for s in shapes)
    with pytest.raises(exc, match=match):
        merge_partials(m, l, o, num_parts)
