"""Hunt 145: an outside team's grid over the 16-bit kernels and the paging API (CPU executor),
against its own float64 reference: page sizes 1, 3, 5, 7, 12, 257, 1000, 4096; every head size
of the simt and tensor-core decodes (fp16, bf16) and of the prefill wrapper; GQA groups 1-65;
tables as int64, lists, Fortran-ordered, read-only, strided, padded with garbage; seq_lens as
scalars, 0-d, uint32, bool; empty batches and sequences; out= aliased, mistyped, strided;
scales 0, negative, NaN; inf and NaN in q, K and V; CSR duplicates and bad last_page_len;
lengths near 2^31. All within fp16 bounds or refused by name, but for the tests below: each
holds a defect the grid found, the input, and what must happen instead.
"""
import numpy as np
import pytest

from pagedattn_lab import BlockAllocator


@pytest.mark.parametrize("never_used", [None, 0])
def test_unallocate_of_a_repeated_page_is_refused_and_changes_nothing(never_used):
    """unallocate([2, 2]) passed the one-owner check for each entry, then dropped page 2
    twice: a bare KeyError(2) on the second, with the page already gone from the owners and
    never put back (num_free + num_used == num_pages - 1)."""
    alloc = BlockAllocator(8)
    alloc.allocate(3)
    alloc.free([1])
    before = alloc.state()
    with pytest.raises(ValueError, match=r"pages\[1\]: page 2 is listed 2 times"):
        alloc.unallocate([2, 2], never_used)
    assert alloc.state() == before
    alloc.check_invariants()
    alloc.unallocate([2], 0)   # the single undo still works
    assert alloc.ref_count(2) == 0 and alloc.num_free == 7


def test_gather_names_seq_len_not_a_sequence_index_for_a_bad_page():
    """gather_kv takes one row and a seq_len, yet a page id out of range in it was explained
    with "(sequence 0 has 49 tokens, ...)": no argument of the call is a sequence 0. The reason
    names the length argument as the call spells it (seq_len here, seq_lens[b] in a batch)."""
    from pagedattn_lab import gather_kv_reference
    cache = np.zeros((9, 16, 2, 8), np.float16)
    row = np.array([4, 0, 8, 2**31 - 1, -5], np.int32)
    with pytest.raises(ValueError) as err:
        gather_kv_reference(cache, cache.copy(), row, 49)
    message = str(err.value)
    assert message.startswith("block_table_row[3]: page id 2147483647 is out of range")
    assert "seq_len is 49 tokens, so the first 4 entries of its row are read" in message
    assert "sequence 0" not in message


def _decode_inputs():
    rng = np.random.default_rng(145)
    k, v = (rng.standard_normal((4, 3, 1, 8)).astype(np.float16) for _ in range(2))
    q = rng.standard_normal((1, 2, 8)).astype(np.float16)
    return q, k, v, np.array([[2, 0]], np.int32), np.array([5], np.int32)


@pytest.mark.parametrize("argument", ["seq_lens", "q", "out"])
def test_a_numpy_scalar_for_an_array_is_said_to_be_a_scalar(argument):
    """seq_lens=np.int32(5) (one sequence's length) was refused with "seq_lens: expected a NumPy
    or CuPy array, got int32", which reads as a dtype complaint about an int32 array; the
    message says that a NumPy scalar came."""
    from pagedattn_lab import paged_attention_decode
    q, k, v, tables, lens = _decode_inputs()
    args = dict(q=q, k_cache=k, v_cache=v, block_tables=tables, seq_lens=lens)
    scalar = {"seq_lens": np.int32(5), "q": np.float16(1), "out": np.float16(0)}[argument]
    args[argument] = scalar
    with pytest.raises(TypeError, match=rf"^{argument}: expected a NumPy or CuPy array.*, got "
                                        rf"{type(scalar).__name__} \(a NumPy scalar, not an "
                                        rf"array\)$"):
        paged_attention_decode(**args)


def test_one_shot_decode_takes_a_batch_the_tensor_core_plan_takes(monkeypatch):
    """paged_attention_decode (plan + run in one call) refused a batch of more than 65535
    sequences up front ("q: batch 65536 exceeds 65535 sequences per launch; split the batch"),
    also with kernel="tensor_core", whose plan puts the work on the grid's x (the wrapper takes
    that batch): the plan checks the grid of the kernel it chose, and the one-shot call runs.
    (run is replaced: the CPU executor takes ~1.5 minutes over 65536 sequences.)"""
    from pagedattn_lab import BatchDecodeWrapper, paged_attention_decode
    from pagedattn_lab.attention_common import MAX_GRID_YZ
    batch = MAX_GRID_YZ + 1
    planned = []
    monkeypatch.setattr(BatchDecodeWrapper, "run", lambda w, q, k, v, out=None, scale=None:
                        planned.append(w) or out)
    q = np.zeros((batch, 2, 16), np.float16)
    k = np.zeros((batch, 1, 1, 16), np.float16)
    tables = np.arange(batch, dtype=np.int32)[:, None]
    lens = np.ones(batch, np.int32)
    out = paged_attention_decode(q, k, k.copy(), tables, lens, kernel="tensor_core")
    assert out.shape == (batch, 2, 16) and planned[0].kernel == "tensor_core"
    assert planned[0].batch == batch and max(planned[0].grid[1:]) <= MAX_GRID_YZ
    with pytest.raises(ValueError, match=rf"^q, k_cache: {batch} sequences .* past CUDA's limit"):
        paged_attention_decode(q, k, k.copy(), tables, lens, kernel="simt")


# A table listing page 0 4096 times over pages of 2^19 tokens: 2^31 slots of one small page,
# so lengths near int32's limit pass the table checks without a large cache.
PAGE = 2**19
WIDE_ROW = np.zeros((1, 4096), np.int32)


@pytest.mark.parametrize("length, num_splits, part_len", [
    (2**31 - 1, None, 512),               # automatic partitions: the last one ends at 2^31
    (1_500_000_000, 2, 750_000_000),      # merge's count: 1.5e9 + 7.5e8 - 1 wraps
    (2**31 - 1, 1, 2**31 - 1),            # no split: the load step past the end wraps
])
def test_simt_plan_refuses_lengths_whose_partition_ends_pass_int32(length, num_splits,
                                                                   part_len):
    """decode.cu counts tokens in int32: a partition's end (start + part_len) and the merge's
    partition count (seq_len + part_len - 1) wrapped for these lengths, which the plan took
    (2^31 - 1 tokens in two partitions of 2^30 merged to NaN, launched alone on the CPU
    executor). The plan refuses them, naming the length, before anything runs."""
    from pagedattn_lab import BatchDecodeWrapper
    w = BatchDecodeWrapper()
    with pytest.raises(ValueError, match=rf"^seq_lens\[0\]: {length} tokens in (partitions of "
                                         rf"{part_len}|one partition): the simt kernel counts "
                                         rf".* in int32"):
        w.plan(WIDE_ROW, np.array([length], np.int32), 2, 1, 16, PAGE, "float16",
               kernel="simt", num_splits=num_splits)
    assert w.kernel is None   # nothing planned


@pytest.mark.parametrize("length, num_splits, parts", [
    (2**31 - 2048, None, (512, 2**22 - 4)),   # a load step of at most 2048 past the last
    (2**30, 2, (2**29, 2)),                   # the merge counts up to 2^30 + 2^29 - 1
    (2**31 - 2048, 1, (2**31 - 2048, 1)),     # one partition: no merge, no partition end
])
def test_simt_plan_takes_the_longest_lengths_it_can_count(length, num_splits, parts):
    from pagedattn_lab import BatchDecodeWrapper
    w = BatchDecodeWrapper().plan(WIDE_ROW, np.array([length], np.int32), 2, 1, 16, PAGE,
                                  "float16", kernel="simt", num_splits=num_splits)
    assert (w.part_len, w.max_parts) == parts
