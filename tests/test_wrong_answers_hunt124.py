"""Hunt 124: plausible learner mistakes in workbooks 09-13 that the checks refused with a
hint restating the spec (or naming nothing the evidence shows), and right answers written
another way that must pass.

Each wrong answer is the solution with one learner's mistake; the test asserts the check fails
it with a hint naming that mistake.
"""
import itertools
import math

import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import (as_params, assert_caught, mutate, run_check,
                                 schedule_step_answer, solution_source)


def _group_rows_one_short(q, kv_head, group):
    """The slice's stop one head short: (kv_head + 1) * group - 1."""
    n_tiles = -(-group // 16)
    tiles = np.zeros((n_tiles * 16, q.shape[1]), dtype=q.dtype)
    tiles[:group - 1] = q[kv_head * group:(kv_head + 1) * group - 1]
    return tiles.reshape(n_tiles, 16, q.shape[1])


def _group_rows_prescaled(q, kv_head, group):
    """The rows scaled by 1/sqrt(head_dim) on the way in (the scale belongs to the scores)."""
    n_tiles = -(-group // 16)
    tiles = np.zeros((n_tiles * 16, q.shape[1]), dtype=q.dtype)
    tiles[:group] = q[kv_head * group:(kv_head + 1) * group] / q.dtype.type(np.sqrt(q.shape[1]))
    return tiles.reshape(n_tiles, 16, q.shape[1])


def _visible_keys_counted_down(qo_indptr, seq_lens):
    """i counted from the sequence's last row down."""
    q_lens = np.diff(qo_indptr.astype(np.int64))
    seq = np.repeat(np.arange(q_lens.size), q_lens)
    i = qo_indptr[seq + 1] - 1 - np.arange(seq.size)
    return seq_lens[seq].astype(np.int64) - q_lens[seq] + i + 1


def _mask_tile(factor=lambda s, scale: np.float32(scale), masked=lambda t, n: t >= n):
    def mask_tile(s, tile, seq_len, scale):
        logits = s * factor(s, scale)
        logits[:, masked(16 * tile + np.arange(16), seq_len)] = -np.inf
        return logits
    return mask_tile


def _chunk_triu(q_len, seq_len):
    return np.triu(np.ones((q_len, seq_len), dtype=bool), k=seq_len - q_len)


def _chunk_offset_negated(q_len, seq_len):
    i, j = np.arange(q_len)[:, None], np.arange(seq_len)[None, :]
    return j <= q_len - seq_len + i


def _hashes_of_whole_prefixes(token_ids, page_size):
    """Each block hashed with every token up to its end, no parent."""
    return [hash_block(None, token_ids[:end])
            for end in range(page_size, len(token_ids) + 1, page_size)]


def _split_one_kv_head_per_rank(rank, world_size, num_heads, num_kv_heads):
    if num_kv_heads % world_size:
        raise ValueError(f"world_size {world_size} does not divide {num_kv_heads}")
    q = num_heads // world_size
    return (rank, rank + 1), (rank * q, (rank + 1) * q)


def _wire_bytes_pages_of_the_batch(seq_lens, num_heads, num_kv_heads, head_dim, page_size,
                                   world_size, itemsize):
    """Pages per table row from the whole batch's tokens, not the longest sequence's."""
    batch = len(seq_lens)
    pages = -(-int(np.sum(seq_lens)) // page_size)
    return (4 * (2 + batch + batch * pages),
            batch * (num_heads // world_size) * head_dim * itemsize,
            int(np.sum(seq_lens)) * 2 * (num_kv_heads // world_size) * head_dim * itemsize)


def _wire_bytes_ring_all_reduce(seq_lens, num_heads, num_kv_heads, head_dim, page_size,
                                world_size, itemsize):
    """The output counted as a ring all-reduce of the whole output, 2 (R - 1) / R of it."""
    batch = len(seq_lens)
    pages = -(-int(max(seq_lens)) // page_size)
    whole = batch * num_heads * head_dim * itemsize
    return (4 * (2 + batch + batch * pages), 2 * (world_size - 1) * whole // world_size,
            int(np.sum(seq_lens)) * 2 * (num_kv_heads // world_size) * head_dim * itemsize)


def _ceil(tokens, page_size):
    return -(-tokens // page_size)


# A running request charged every page its tokens fill (num_pages not subtracted).
_schedule_step_charging_held_pages = schedule_step_answer(
    lambda req, n, page_size: _ceil(req.num_computed + n, page_size), _ceil)


MISTAKES = [
    ("group_rows", _group_rows_one_short, "the group's last head",
     ["row r of tile t is query head"]),
    ("group_rows", _group_rows_prescaled, "the right heads times 0.25",
     ["row r of tile t is query head"]),
    ("visible_keys", _visible_keys_counted_down, "counted down from its last"),
    ("mask_tile", _mask_tile(factor=lambda s, scale: np.float32(1 / np.sqrt(s.shape[1]))),
     "every kept logit is s * 0.25, not s * scale"),
    ("mask_tile", _mask_tile(factor=lambda s, scale: np.float32(np.sqrt(scale))),
     "multiply by the scale argument as given"),
    ("mask_tile", _mask_tile(masked=lambda t, n: t < n), "the comparison is inverted"),
    ("chunk_mask", _chunk_triu, "the upper triangle (np.triu)"),
    ("chunk_mask", _chunk_offset_negated, "the offset has the wrong sign"),
    ("block_hashes", _hashes_of_whole_prefixes, "hashed with all the tokens before it"),
    ("head_split", _split_one_kv_head_per_rank, "KV heads, not one"),
    ("wire_bytes", _wire_bytes_pages_of_the_batch, "not the pages of the whole batch's tokens"),
    ("wire_bytes", _wire_bytes_ring_all_reduce, "the heads are gathered, not summed"),
    ("schedule_step", _schedule_step_charging_held_pages,
     "it already holds num_pages of them"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


# -- right answers written another way: they pass ---------------------------------------------

def _group_rows_padded(q, kv_head, group):
    rows = q[kv_head * group:(kv_head + 1) * group]
    return np.pad(rows, ((0, (-group) % 16), (0, 0))).reshape(-1, 16, q.shape[1])


def _mask_tile_where(s, tile, seq_len, scale):
    keep = (tile * 16 + np.arange(16)) < seq_len
    return np.where(keep[None, :], s * np.float32(scale), np.float32(-np.inf)).astype(np.float32)


def _chunk_mask_tril(q_len, seq_len):
    return np.tril(np.ones((q_len, seq_len), dtype=bool), k=seq_len - q_len)


def _visible_keys_loop(qo_indptr, seq_lens):
    out = []
    for b in range(len(seq_lens)):
        q_len = int(qo_indptr[b + 1]) - int(qo_indptr[b])
        out.extend(int(seq_lens[b]) - q_len + 1 + i for i in range(q_len))
    return np.asarray(out, dtype=np.int64)


def _tile_work_while(qo_indptr, seq_lens, rows, kv_tile):
    work = []
    for b in range(len(seq_lens)):
        q_len, first = int(qo_indptr[b + 1] - qo_indptr[b]), 0
        while first < q_len:
            end = min(q_len, first + rows)
            work.append((b, first, math.ceil((int(seq_lens[b]) - q_len + end) / kv_tile)))
            first += rows
    return work


def _kv_scales_divide_where(x, qmax):
    amax = np.max(np.abs(x), axis=x.ndim - 1, keepdims=True)[..., 0]
    out = np.ones_like(amax, dtype=np.float32)
    np.divide(amax, np.float32(qmax), out=out, where=amax > 0, casting="unsafe")
    return out


def _block_hashes_while(token_ids, page_size):
    out, start = [], 0
    while start + page_size <= len(token_ids):
        out.append(hash_block(out[-1] if out else None, token_ids[start:start + page_size]))
        start += page_size
    return out


def _cached_prefix_takewhile(hashes, cached, num_tokens, page_size):
    hit = [cached[h] for h in itertools.takewhile(lambda h: h in cached, hashes)]
    return hit, min(num_tokens - 1, page_size * len(hit))


def _head_split_from_kv(r, ws, nh, nkv):   # other parameter names, divmod
    per, rem = divmod(nkv, ws)
    if rem:
        raise ValueError(f"world_size {ws} must divide num_kv_heads {nkv}")
    kv = (r * per, r * per + per)
    return kv, (kv[0] * (nh // nkv), kv[1] * (nh // nkv))


def _gather_heads_split(gathered, world_size, batch, num_heads, head_dim):
    parts = np.split(gathered.reshape(world_size * batch, num_heads // world_size, head_dim),
                     world_size)
    return np.concatenate(parts, axis=1)


def _wire_bytes_ceil(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                     itemsize):
    lens = [int(x) for x in seq_lens]
    width = math.ceil(max(lens) / page_size)
    return (4 * (2 + len(lens) * (1 + width)),
            len(lens) * (num_heads // world_size) * head_dim * itemsize,
            2 * sum(lens) * (num_kv_heads // world_size) * head_dim * itemsize)


RIGHT = [("group_rows", _group_rows_padded), ("mask_tile", _mask_tile_where),
         ("chunk_mask", _chunk_mask_tril), ("visible_keys", _visible_keys_loop),
         ("tile_work", _tile_work_while), ("kv_scales", _kv_scales_divide_where),
         ("block_hashes", _block_hashes_while), ("cached_prefix", _cached_prefix_takewhile),
         ("head_split", _head_split_from_kv), ("gather_heads", _gather_heads_split),
         ("wire_bytes", _wire_bytes_ceil)]


@pytest.mark.parametrize("task, impl", RIGHT, ids=[t for t, _ in RIGHT])
def test_right_answer_written_another_way_passes(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


# -- the online softmax of dequant_decode with exp2f for expf (kernels on the CPU executor) --

_EXPS = "float rescale = expf(m - m_new), w = expf(s - m_new);"


@pytest.mark.parametrize("line, phrase", [
    ("float rescale = expf(m - m_new), w = exp2f(s - m_new);", "the weight was exp2f"),
    ("float rescale = exp2f(m - m_new), w = expf(s - m_new);", "the rescale was exp2f"),
    ("float rescale = exp2f(m - m_new), w = exp2f(s - m_new);",
     "multiply the score by log2(e)"),
], ids=["weight", "rescale", "both"])
def test_dequant_decode_exp2f_for_expf_is_named(line, phrase):
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_READ"), [(_EXPS, line)])
    assert_caught("dequant_decode", source, phrase, device="cpu")


def test_dequant_decode_rescale_with_its_exponent_negated_is_named():
    """expf(m_new - m): inf on the first token (m = -inf), so every output is 0 * inf = NaN."""
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_READ"),
                    [("float rescale = expf(m - m_new)", "float rescale = expf(m_new - m)")])
    assert_caught("dequant_decode", source, "not expf(m_new - m)", device="cpu")


def test_dequant_decode_in_base_two_passes():
    """exp2f everywhere with the score times log2(e): the same softmax."""
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_READ"), [
        ("float s = dot * scale;", "float s = dot * scale * 1.4426950408889634f;"),
        (_EXPS, "float rescale = exp2f(m - m_new), w = exp2f(s - m_new);")])
    result, printed = run_check("dequant_decode", source, device="cpu")
    assert result.passed, printed


@pytest.mark.parametrize("rounding", ["nearbyintf(row[d] / scale)",
                                      "(float)__float2int_rn(row[d] / scale)"])
def test_quantize_write_with_another_round_to_nearest_even_passes(rounding):
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_WRITE"),
                    [("rintf(row[d] / scale)", rounding)])
    result, printed = run_check("quantize_write", source, device="cpu")
    assert result.passed, printed
