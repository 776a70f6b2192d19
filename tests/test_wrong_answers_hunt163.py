"""Hunt 163: plausible learner mistakes in workbooks 09-13 that the checks failed with a hint
restating the spec or naming another mistake (or a message showing a 0 as the wrong value),
and right answers written another way that must pass.

Each wrong answer must fail with a hint naming its mistake; kernels run on the CPU executor.
"""
import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import (as_params, assert_caught, beyond_held, mutate, run_check,
                                 schedule_step_answer, solution_source)


def _ceil(a, b):
    return -(-a // b)


# -- lesson 09 ----------------------------------------------------------------------------------

def _group_rows_sixteen_heads(q, kv_head, group):
    """Whole tiles sliced from the group's first head: the padding rows get the next heads."""
    n_tiles = _ceil(group, 16)
    tiles = np.zeros((n_tiles * 16, q.shape[1]), q.dtype)
    rows = q[kv_head * group:kv_head * group + n_tiles * 16]
    tiles[:len(rows)] = rows
    return tiles.reshape(n_tiles, 16, q.shape[1])


def _mask_tile_last_tile_count(s, tile, seq_len, scale):
    """Every tile masked as if it were the sequence's last: columns from seq_len % 16 on."""
    logits = s * np.float32(scale)
    logits[:, np.arange(16) >= seq_len % 16] = -np.inf
    return logits


# -- lesson 10 ----------------------------------------------------------------------------------

def _chunk_mask_prefix_and_itself(q_len, seq_len):
    """Each new query sees the cached prefix and its own key, not the new tokens before it."""
    i, j = np.arange(q_len)[:, None], np.arange(seq_len)[None, :]
    return (j < seq_len - q_len) | (j == seq_len - q_len + i)


def _visible_keys_prefix_and_itself(qo_indptr, seq_lens):
    """Every row counted as the cached prefix and itself (the rows before it left out)."""
    q_lens = np.diff(qo_indptr.astype(np.int64))
    seq = np.repeat(np.arange(q_lens.size), q_lens)
    return seq_lens[seq].astype(np.int64) - q_lens[seq] + 1


def _tile_work_numbered(qo_indptr, seq_lens, rows, kv_tile):
    """first given as the tile's number (0, 1, 2, ...), not its first query's index."""
    work = []
    for b, (q_len, seq_len) in enumerate(zip(np.diff(qo_indptr), seq_lens)):
        for t, first in enumerate(range(0, int(q_len), rows)):
            keys = int(seq_len) - int(q_len) + min(first + rows, int(q_len))
            work.append((b, t, _ceil(keys, kv_tile)))
    return work


# -- lesson 12 ----------------------------------------------------------------------------------

def _block_hashes_at_block_numbers(token_ids, page_size):
    """Block i sliced from token i (its number), not from i * page_size."""
    hashes, parent = [], None
    for i in range(len(token_ids) // page_size):
        parent = hash_block(parent, token_ids[i:i + page_size])
        hashes.append(parent)
    return hashes


def _cached_prefix_page_less(hashes, cached, num_tokens, page_size):
    """A full hit gives back the last page (as if it had to be computed again), not one token."""
    pages = []
    for h in hashes:
        if h not in cached:
            break
        pages.append(cached[h])
    computed = len(pages) * page_size
    return pages, computed - page_size if computed >= num_tokens else computed


# -- lesson 13 ----------------------------------------------------------------------------------

def _wire_bytes(output_share=None, kv_read=None):
    """The solution's three counts, with `output_share(share, world_size)` or
    `kv_read(seq_lens, per_token_bytes, kv_read, world_size)` for its own."""
    def wire_bytes(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                   itemsize):
        batch = len(seq_lens)
        tables = 4 * (2 + batch + batch * _ceil(int(max(seq_lens)), page_size))
        share = batch * (num_heads // world_size) * head_dim * itemsize
        per_token = 2 * (num_kv_heads // world_size) * head_dim * itemsize
        read = int(np.sum(seq_lens)) * per_token
        if output_share:
            share = output_share(share, world_size)
        if kv_read:
            read = kv_read(seq_lens, per_token, read, world_size)
        return tables, share, read
    return wire_bytes


MISTAKES = [
    ("group_rows", _group_rows_sixteen_heads, "the rows past the group hold the query heads "
     "after it", ["anything there (another head, a copy, NaN)"]),
    ("mask_tile", _mask_tile_last_tile_count, "seq_len % 16 counts the tokens of the "
     "sequence's last tile only"),
    ("chunk_mask", _chunk_mask_prefix_and_itself, "not only the cached prefix and its own key",
     ["query i sees key j exactly when"]),
    ("visible_keys", _visible_keys_prefix_and_itself, "not seq_lens[b] - q_len + 1",
     ["row r of sequence b (i = r - qo_indptr[b]) sees"]),
    ("tile_work", _tile_work_numbered, "not the tile's number (0, 1, 2, ...)",
     ["one (b, first, kv_tiles) per query tile"]),
    ("block_hashes", _block_hashes_at_block_numbers, "token_ids[i:i + page_size] starts at "
     "the block's number", ["as returned (bytes), parent none for block 0"]),
    ("cached_prefix", _cached_prefix_page_less, "not a whole page less",
     ["the pages are right; num_computed = min("]),
    ("schedule_step", schedule_step_answer(beyond_held(_ceil), lambda n, page_size: n),
     "priced at n pages, one per token", ["compare with the expected batch above"]),
    ("wire_bytes", _wire_bytes(output_share=lambda share, world: share // world),
     "output_share was divided by world_size twice"),
    ("wire_bytes", _wire_bytes(kv_read=lambda lens, per, read, world: read // world),
     "kv_read was divided by world_size twice"),
    ("wire_bytes", _wire_bytes(kv_read=lambda lens, per, read, world: len(lens) * int(max(lens))
                               * per), "not batch * max(seq_lens)",
     ["tables: 4 * (2 + batch + batch * pages)"]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_group_rows_padding_message_shows_the_value_that_is_not_zero():
    """A padding row whose first dim is 0 but whose others are not: the message names the
    first value that is not 0, not the row's first one ("holds 0 ... instead of 0")."""
    def group_rows(q, kv_head, group):
        n_tiles = _ceil(group, 16)
        tiles = np.zeros((n_tiles * 16, q.shape[1]), q.dtype)
        tiles[:group] = q[kv_head * group:(kv_head + 1) * group]
        tiles[group:, 1:] = 7    # (dim 0 of the padding rows left 0)
        return tiles.reshape(n_tiles, 16, q.shape[1])
    _, printed = assert_caught("group_rows", group_rows, "holds 7 at dim 1 instead of 0")
    assert "holds 0" not in printed, printed


def test_schedule_step_prompt_priced_per_token_is_named_beside_the_running_charge():
    """Where charging the running requests every page they fill gives the same batch, both
    mistakes are named, not the running requests' charge alone."""
    result, printed = run_check("schedule_step",
                                schedule_step_answer(beyond_held(_ceil), lambda n, page_size: n))
    case = next(c for c in result.cases if "running requests before waiting" in c.name)
    assert not case.passed and "these mistakes give the same batch" in case.hint, printed
    assert "one per token" in case.hint and "it already holds num_pages" in case.hint, printed


# -- kernels on the CPU executor ----------------------------------------------------------------

def test_quantize_write_codes_without_the_head_term_are_named():
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_WRITE"), [
        ("signed char* dst = k_cache + (slot * num_kv_heads + head) * head_dim;",
         "signed char* dst = k_cache + slot * head_dim;")])
    assert_caught("quantize_write", source, "not k_cache[slot * head_dim + d]", device="cpu",
                  not_phrases=("code = rintf(x / scale) clamped",))


def test_tc_tile_scores_page_looked_up_by_the_tile_is_named():
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("block_table[t / page_size]", "block_table[tile]")])
    assert_caught("tc_tile_scores", source, "looks the page up by the token tile",
                  device="cpu", not_phrases=("summed over all head_dim dimensions",))


def test_tc_tile_scores_group_turned_around_names_the_zero_tiles():
    """group = num_kv_heads / num_heads is 0 where a group has several heads: no Q row is
    copied and every score is 0, which a K tile of zeros gives too: both are named."""
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("int group = num_heads / num_kv_heads;",
                      "int group = num_kv_heads / num_heads;")])
    _, printed = assert_caught("tc_tile_scores", source, "the q tile was all zeros",
                               device="cpu", not_phrases=("summed over all head_dim",))
    assert "the K tile was all zeros" in " ".join(printed.split())


READ = "11_kv_compression.ipynb"


def test_quantize_write_amax_by_a_comparison_is_refused():
    """amax = amax > |x| ? amax : |x|: false for a NaN, so the NaN becomes the lane's amax and
    the lane's larger element before it is lost (the shuffle's fmaxf then drops the NaN)."""
    source = mutate(solution_source(READ, "SOURCE_WRITE"), [
        ("amax = fmaxf(amax, fabsf(row[d]));",
         "amax = amax > fabsf(row[d]) ? amax : fabsf(row[d]);")])
    assert_caught("quantize_write", source, "a comparison (amax > x ? amax : x) is false for "
                  "a nan", device="cpu")


_UPDATE = """        float m_new = fmaxf(m, s);
        float rescale = expf(m - m_new)"""


@pytest.mark.parametrize("edits, phrase, not_phrases", [
    # m set before the rescale is worked out: e^(m - m_new) = 1, acc and l never rescaled
    ([(_UPDATE, _UPDATE.replace("fmaxf(m, s);", "fmaxf(m, s);\n        m = m_new;")),
      ("l = l * rescale + w;\n        m = m_new;", "l = l * rescale + w;")],
     "neither acc nor l was rescaled", ("k element d of a token is",)),
    # the weight against the old max: e^(s - (-inf)) = inf on the first token
    # (not the fallback's "adds its weight": the NaN everywhere names the weight's max)
    ([("w = expf(s - m_new);", "w = expf(s - m);")], "not expf(s - m)",
     ("adds its weight e^(s - m_new)",)),
    # the per-token scale at the query head h: past k_scale's end (MQA: also h / num_kv_heads)
    ([("slot * num_kv_heads + kv_head : kv_head", "slot * num_kv_heads + h : kv_head")],
     "read at slot * num_kv_heads + h", ()),
], ids=["m before the rescale", "weight with the old max", "scale at the query head"])
def test_dequant_decode_mistake_is_named(edits, phrase, not_phrases):
    source = mutate(solution_source(READ, "SOURCE_READ"), edits)
    assert_caught("dequant_decode", source, phrase, device="cpu", not_phrases=not_phrases)


# -- right answers written another way: they pass -----------------------------------------------

def _group_rows_loop(q, kv_head, group):
    tiles = np.zeros((_ceil(group, 16), 16, q.shape[1]), q.dtype)
    for i in range(group):
        tiles[i // 16, i % 16] = q[kv_head * group + i]
    return tiles


def _chunk_mask_loop(q_len, seq_len):
    mask = np.zeros((q_len, seq_len), dtype=bool)
    for i in range(q_len):
        mask[i, :seq_len - q_len + i + 1] = True
    return mask


def _tile_work_enumerated(qo_indptr, seq_lens, rows, kv_tile):
    lens = np.diff(qo_indptr).tolist()
    return [(b, first, _ceil(int(seq_lens[b]) - q + min(first + rows, q), kv_tile))
            for b, q in enumerate(lens) for first in range(0, q, rows)]


def _block_hashes_tuples(token_ids, page_size):
    hashes = []
    for i in range(len(token_ids) // page_size):
        block = tuple(token_ids[i * page_size:(i + 1) * page_size])
        hashes.append(hash_block(hashes[-1] if hashes else None, block))
    return hashes


def _schedule_step_one_loop(running, waiting, budget, free_pages, watermark, page_size,
                            max_chunk):
    """Both lists in one loop, a flag telling a waiting prompt's admission apart."""
    batch, free = [], free_pages
    for req, is_waiting in [(r, False) for r in running] + [(r, True) for r in waiting]:
        if budget == 0:
            break
        n = min(req.num_tokens - req.num_computed, budget, max_chunk)
        cost = max(0, _ceil(req.num_computed + n, page_size) - req.num_pages)
        if is_waiting and cost + watermark > free:
            break
        free -= cost
        batch.append((req.rid, n))
        budget -= n
    return batch


def _gather_heads_loop(gathered, world_size, batch, num_heads, head_dim):
    per = num_heads // world_size
    blocks = gathered.reshape(world_size, batch, per, head_dim)
    out = np.empty((batch, num_heads, head_dim), gathered.dtype)
    for r in range(world_size):
        out[:, r * per:(r + 1) * per] = blocks[r]
    return out


RIGHT = [("group_rows", _group_rows_loop), ("chunk_mask", _chunk_mask_loop),
         ("tile_work", _tile_work_enumerated), ("block_hashes", _block_hashes_tuples),
         ("schedule_step", _schedule_step_one_loop), ("gather_heads", _gather_heads_loop),
         ("wire_bytes", _wire_bytes())]


@pytest.mark.parametrize("task, impl", RIGHT, ids=[t for t, _ in RIGHT])
def test_right_answer_written_another_way_passes(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
