"""Bad input, seventh round: the serving side's NumPy bookkeeping (the prefix cache's hashes
and lookups, the scheduler's new requests, the simulator's workload, the tensor-parallel
table buffer and byte counts, quantize and dequantize). Each refusal here failed before its
fix: a wrong answer without an error, an error naming the wrong entry, or one from deep
inside naming no argument. The other tests hold the valid inputs next to them to what they
gave before."""
import numpy as np
import pytest

from pagedattn_lab.distributed import pack_tables, step_bytes, unpack_tables
from pagedattn_lab.engine.config import EngineConfig
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import BlockPool, block_hashes, hash_block
from pagedattn_lab.engine.request import Request, SamplingParams
from pagedattn_lab.engine.scheduler import Scheduler
from pagedattn_lab.quant import dequantize, quantize
from pagedattn_lab.sim import Workload

from .engine_fakes import FakeStore


def pool_state(pool):
    return (list(pool.ref_cnt), list(pool.page_hash), list(pool.page_tokens), dict(pool.cached),
            list(pool.free_queue.items()), pool.evictions)


@pytest.fixture
def pool_with_block():
    """A pool whose page 0 holds the cached block [1, 2] (and the block's hash)."""
    pool = BlockPool(4)
    page, = pool.allocate(1)
    block_hash = hash_block(None, [1, 2])
    assert pool.register(page, block_hash, [1, 2])
    return pool, block_hash


# -- the prefix cache: a token id is an int, wherever it comes in ----------------------------

@pytest.mark.parametrize("tokens, error, match", [
    ([1, 2.0], TypeError, r"^token_ids\[1\]: expected an integer token id, got 2.0 \(float\)"),
    ([True, 2], TypeError, r"^token_ids\[0\]: expected an integer token id, got True \(bool\)"),
    (np.array([1.0, 2.0]), TypeError, r"^token_ids\[0\]: expected an integer token id"),
    (None, TypeError, r"^token_ids: expected a list of token ids, got None"),
], ids=["float", "bool", "float-array", "none"])
def test_lookup_refuses_token_ids_that_are_not_ints(pool_with_block, tokens, error, match):
    """[1, 2.0] and [True, 2] compared equal to the block's (1, 2): a prefix hit on tokens
    register and hash_block refuse; None failed in tuple(), naming nothing."""
    pool, block_hash = pool_with_block
    before = pool_state(pool)
    with pytest.raises(error, match=match):
        pool.lookup(block_hash, tokens)
    assert pool_state(pool) == before


@pytest.mark.parametrize("block_hash", [[1], "h", None], ids=["list", "str", "none"])
def test_lookup_refuses_a_hash_that_is_not_bytes(pool_with_block, block_hash):
    """A list failed with "unhashable type" (no argument named); a str or None missed
    silently, as if the block were not cached (register refuses them by name)."""
    pool, _ = pool_with_block
    with pytest.raises(TypeError, match=r"^block_hash: expected the bytes hash_block returns, "
                                        rf"got {type(block_hash).__name__}$"):
        pool.lookup(block_hash, [1, 2])


def test_lookup_still_finds_the_block_from_any_integer_sequence(pool_with_block):
    pool, block_hash = pool_with_block
    assert pool.lookup(block_hash, [1, 2]) == 0
    assert pool.lookup(block_hash, (1, 2)) == 0
    assert pool.lookup(block_hash, np.array([1, 2], np.int32)) == 0
    assert pool.lookup(block_hash, [1, 3]) is None


@pytest.mark.parametrize("tokens, match", [
    ([1, 2, 3, 2**64], r"^token_ids\[3\]: expected a token id that fits int64"),
    (np.array([1, 2, 3, 2**63], np.uint64), r"^token_ids\[3\]: expected a token id that fits"),
], ids=["list", "uint64"])
def test_block_hashes_names_the_entry_past_int64_by_its_index_in_the_list(tokens, match):
    """Named token_ids[1]: its index in its block, not in the list given."""
    with pytest.raises(ValueError, match=match):
        block_hashes(tokens, 2)


@pytest.mark.parametrize("tokens, match", [
    ({1, 2, 3, 4}, r"^token_ids: expected a list of token ids in order, got a set"),
    (np.int64(4), r"^token_ids: expected a list of token ids, got np.int64\(4\)"),
    ([1, 2, 3, True], r"^token_ids\[3\]: expected an integer token id, got True \(bool\)"),
], ids=["set", "0-d", "bool"])
def test_block_hashes_refuses_token_ids_by_name(tokens, match):
    """A set failed with "not subscriptable", a NumPy scalar with "has no len()"; True in a
    list of ints was hashed as token 1."""
    with pytest.raises(TypeError, match=match):
        block_hashes(tokens, 2)


def test_hash_block_refuses_a_bool_among_ints():
    """[3, True] became the int64 array [3, 1]: hashed as the block [3, 1]."""
    with pytest.raises(TypeError, match=r"^token_ids\[1\]: expected an integer token id, got "
                                        r"True \(bool\)"):
        hash_block(None, [3, True])


def test_block_hashes_of_valid_tokens_are_unchanged():
    tokens = [5, 6, 7, 8, 9]
    chained = [hash_block(None, [5, 6])]
    chained.append(hash_block(chained[0], [7, 8]))
    assert block_hashes(tokens, 2) == chained
    assert block_hashes(np.array(tokens, np.uint64), 2) == chained


# -- the simulator's workload -----------------------------------------------------------------

def test_workload_sizes_given_as_small_numpy_ints_do_not_wrap():
    """int8 100 + int8 100 wrapped to -56: max_len=150 passed the check that every request
    fits, and sampled requests ran past it."""
    with pytest.raises(ValueError, match=r"^max_len: expected an int >= 200, got 150"):
        Workload(num_requests=5, prompt_max=np.int8(100), min_len=np.int8(100), max_len=150)


def test_workload_stores_python_ints():
    w = Workload(num_requests=np.int16(3), prompt_max=np.int8(100), min_len=np.int8(4),
                 max_len=np.int64(200), seed=np.uint8(1))
    values = (w.num_requests, w.prompt_max, w.min_len, w.max_len, w.seed)
    assert values == (3, 100, 4, 200, 1) and all(type(v) is int for v in values)
    prompts, outputs = w.sample()
    assert (prompts + outputs <= 200).all()


def test_workload_refuses_a_max_len_past_int64_by_name():
    """sample() failed with "Python int too large to convert to C long"."""
    with pytest.raises(ValueError, match=r"^max_len: expected an int <= 9223372036854775807"):
        Workload(num_requests=3, max_len=10**30)


# -- tensor parallelism's table buffer and byte counts ---------------------------------------

def test_step_bytes_refuses_lengths_past_int32():
    """Two lengths of 2**62 overflowed int64 in the sum: a negative kv_read, no error.
    The broadcast buffer carries int32 lengths, as the wrapper's plan takes them."""
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: expected a length <= 2147483647 "):
        step_bytes([2**62, 2**62], 8, 2, 4, 4, 2)


def test_step_bytes_of_the_longest_int32_lengths_is_exact():
    n = 2**31 - 1
    got = step_bytes([n] * 4, 8, 2, 4, 4, 2)
    assert got.kv_read == 4 * n * 2 * 1 * 4 * 2
    assert got.tables == 4 * (2 + 4 + 4 * -(-n // 4))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint32])
def test_unpack_tables_refuses_a_buffer_that_is_not_int32(dtype):
    """A float64 buffer came back as float64 block tables and lengths."""
    buf = pack_tables(np.array([[0, 1], [2, -1]], np.int32), np.array([5, 3], np.int32), 2, 2)
    with pytest.raises(TypeError, match=rf"^buf: expected the int32 buffer pack_tables fills, "
                                        rf"got dtype {np.dtype(dtype).name}$"):
        unpack_tables(buf.astype(dtype), 2)


# -- the scheduler: a request keeps no other prompt's block hashes --------------------------

def scheduler():
    config = EngineConfig(num_pages=8, page_size=2)
    return Scheduler(config, KVCacheManager(8, 2, store=FakeStore(8, 2)))


@pytest.mark.parametrize("kept, match", [
    ([hash_block(None, [9, 9])], r"^req.block_hashes\[0\]: not the hash of request 0's block 0 "
                                 r"\(tokens 0..1, chained on the blocks before\)"),
    ([hash_block(None, [1, 2]), hash_block(None, [3, 4])],
     r"^req.block_hashes\[1\]: not the hash of request 0's block 1 \(tokens 2..3"),
    ([hash_block(None, [1, 2])] * 3, r"^req.block_hashes: expected at most the hashes of "
                                     r"request 0's 2 full block\(s\) of 2 tokens"),
], ids=["another-prompt", "unchained", "too-many"])
def test_scheduler_add_refuses_block_hashes_of_other_tokens(kept, match):
    """Taken before: admitted, the request hashed its next blocks on after the kept ones and
    registered its pages under them, so a prompt starting 9, 9, 3, 4 was served this one's
    block 1 (K/V computed after 1, 2) as its own."""
    sched = scheduler()
    before = pool_state(sched.kv.pool)
    with pytest.raises(ValueError, match=match):
        sched.add(Request(0, [1, 2, 3, 4, 5], SamplingParams(), block_hashes=list(kept)))
    assert not sched.has_unfinished() and pool_state(sched.kv.pool) == before


def test_scheduler_add_takes_a_request_keeping_its_own_block_hashes():
    sched = scheduler()
    req = Request(0, [1, 2, 3, 4, 5], SamplingParams(), block_hashes=block_hashes([1, 2], 2))
    sched.add(req)
    step = sched.schedule()
    assert step.requests == [req] and sched.kv.hashes(req) == block_hashes([1, 2, 3, 4, 5], 2)


# -- quantize / dequantize: values with a head_dim axis ------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: quantize(np.float32(3.0), "int8", 1.0), "x"),
    (lambda: quantize(np.array(3.0, np.float32), "fp8", 1.0), "x"),
    (lambda: dequantize(np.int8(3), "int8", 1.0), "codes"),
], ids=["quantize-scalar", "quantize-0d", "dequantize-scalar"])
def test_quant_refuses_a_single_value(call, name):
    """A single number came back as an array of shape (1,), a rank it did not have."""
    with pytest.raises(ValueError, match=rf"^{name}: expected values \[\.\.\., num_kv_heads, "
                                         r"head_dim\], got a single number"):
        call()


def test_quant_still_takes_one_row_of_head_dim_values():
    x = np.array([0.5, -1.0, 2.0], np.float32)
    codes = quantize(x, "int8", 2.0 / 127)
    assert codes.shape == (3,) and codes.tolist() == [32, -64, 127]
    assert np.allclose(dequantize(codes, "int8", 2.0 / 127), x, atol=0.02)
