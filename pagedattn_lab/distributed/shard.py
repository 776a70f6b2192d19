"""Tensor parallelism's bookkeeping, in NumPy (no torch): which heads a rank owns, its shard of
the cache, the one buffer that carries a step's block tables, and the gathered output.

With R ranks and Hkv KV heads, rank r owns KV heads [r*Hkv/R, (r+1)*Hkv/R) and the query
heads that read them: with group = H/Hkv query heads per KV head, query heads
[r*H/R, (r+1)*H/R). Its cache holds only those KV heads, in every page: the page ids (the
block table) are the same on every rank, the bytes behind them are not.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..attention_common import shared_arrays
from ..backend import to_numpy_together
from ..decode_plan import check_decode_tables
from ..prefill_plan import check_prefill_tables
from ..validate import (INT32_MAX, check_array, check_bool, check_gqa_heads, check_int,
                        check_int_list)
from ..validate_memory import check_memory


class HeadRange(NamedTuple):
    """Rank `rank`'s heads: KV heads kv_start..kv_stop-1 and query heads q_start..q_stop-1."""
    kv_start: int
    kv_stop: int
    q_start: int
    q_stop: int


def check_split(num_heads: int, num_kv_heads: int, world_size: int) -> tuple[int, int, int]:
    """Refuse a split that does not give every rank whole KV heads with their query heads;
    returns the three as Python ints (NumPy ones would wrap, or turn to floats, in the
    arithmetic done with them: int8 heads times a length, an int64 over a uint64)."""
    num_heads, num_kv_heads = check_gqa_heads(num_heads, num_kv_heads)
    world_size = check_int(world_size, "world_size", minimum=1)
    if num_kv_heads % world_size:
        raise ValueError(f"world_size: {world_size} ranks cannot split {num_kv_heads} KV heads "
                         f"evenly (each rank owns whole KV heads and their query heads); use a "
                         f"world_size that divides num_kv_heads "
                         f"({', '.join(str(d) for d in _divisors(num_kv_heads))})")
    return num_heads, num_kv_heads, world_size


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def head_range(rank: int, world_size: int, num_heads: int, num_kv_heads: int) -> HeadRange:
    """The heads rank `rank` of `world_size` owns (see the module's docstring)."""
    num_heads, num_kv_heads, world_size = check_split(num_heads, num_kv_heads, world_size)
    rank = check_int(rank, "rank", minimum=0, maximum=world_size - 1)
    kv_per_rank = num_kv_heads // world_size
    q_per_rank = num_heads // world_size     # = kv_per_rank * group: whole groups
    return HeadRange(rank * kv_per_rank, (rank + 1) * kv_per_rank,
                     rank * q_per_rank, (rank + 1) * q_per_rank)


def shard_cache(cache, heads: HeadRange):
    """The rank's own cache: every page, only its KV heads (a contiguous copy, as the kernels
    read). cache: [num_pages, page_size, num_kv_heads, head_dim], NumPy or CuPy."""
    check_array(cache, "cache", ndim=4, contiguous=False)
    if not isinstance(heads, tuple) or len(heads) != len(HeadRange._fields):
        raise TypeError(f"heads: expected a HeadRange (head_range's answer), got {heads!r}")
    heads = HeadRange(*heads)
    start, stop = (check_int(heads[i], f"heads.{HeadRange._fields[i]}", minimum=0)
                   for i in range(2))
    if start >= stop:   # (else "KV heads 2..1 are not within" the cache's heads)
        raise ValueError(f"heads: expected at least one KV head, got the empty range "
                         f"kv_start={start}, kv_stop={stop}")
    if stop > cache.shape[2]:   # a slice past the heads would be cut short
        raise ValueError(f"heads: KV heads {start}..{stop - 1} are not within the cache's "
                         f"{cache.shape[2]} KV heads (shape {tuple(cache.shape)})")
    return cache[:, :, start:stop].copy()


def reassemble(gathered, world_size: int, batch: int, num_heads: int, head_dim: int):
    """The full output [batch, num_heads, head_dim] from what an all_gather into one buffer
    leaves: rank after rank, each rank's [batch, num_heads/R, head_dim] block whole. The
    ranks' head ranges are consecutive, so rank r's block goes to heads r*H/R ... (a plain
    reshape would interleave the ranks' sequences)."""
    world_size = check_int(world_size, "world_size", minimum=1)
    batch = check_int(batch, "batch", minimum=0)
    num_heads = check_int(num_heads, "num_heads", minimum=1)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    if num_heads % world_size:
        raise ValueError(f"world_size: {world_size} ranks cannot each own num_heads/R of "
                         f"num_heads={num_heads} query heads")
    check_array(gathered, "gathered", contiguous=False)
    if gathered.size != batch * num_heads * head_dim:
        raise ValueError(f"gathered: expected {world_size} x {batch} x {num_heads // world_size}"
                         f" x {head_dim} values (every rank's output block), got shape "
                         f"{tuple(gathered.shape)}")
    blocks = gathered.reshape(world_size, batch, num_heads // world_size, head_dim)
    return blocks.transpose(1, 0, 2, 3).reshape(batch, num_heads, head_dim)


# ---- the step's tables in one buffer -------------------------------------------------------

HEADER = 2   # batch, pages per row


def table_capacity(max_batch: int, max_pages: int, prefill: bool = False) -> int:
    """int32 entries of the broadcast buffer: a header, the lengths, the padded table (and,
    for prefill, qo_indptr after it), each as large as max_batch and max_pages allow."""
    max_batch = check_int(max_batch, "max_batch", minimum=0)
    max_pages = check_int(max_pages, "max_pages", minimum=0)
    prefill = check_bool(prefill, "prefill")   # (a count would be multiplied in)
    return HEADER + max_batch + max_batch * max_pages + (max_batch + 1) * prefill


def pack_tables(block_tables, seq_lens, max_batch: int, max_pages: int,
                qo_indptr=None, *, page_size: int | None = None) -> np.ndarray:
    """One int32 buffer of `table_capacity` entries: [batch, pages, seq_lens..., table...]
    (then qo_indptr, for a prefill step), then zeros. The arrays are int32, NumPy, CuPy or
    torch, as the wrappers' plan takes them. Each part starts where the one before it ends,
    so where it is follows from the header alone (`unpack_tables` reads it exactly).

    The buffer has a fixed size so that the other ranks, which do not know this step's batch
    yet, can post their receive of the same size: one broadcast per step, no size exchange.
    With page_size, the tables' values are refused as the wrappers' plan refuses them (a
    page id below 0 where a sequence reads one, a sequence longer than its row, and for a
    prefill step offsets that go down or more queries than tokens): sent, every rank would
    plan them only to refuse them.
    """
    prefill = qo_indptr is not None
    capacity = table_capacity(max_batch, max_pages, prefill)   # (checks the two sizes)
    check_memory(4 * capacity, "cpu", "max_batch, max_pages",
                 f"the broadcast buffer ({max_batch} rows of {max_pages} pages)")
    # torch tensors as the arrays that share their memory, as the wrappers' plan takes them
    block_tables, seq_lens, qo_indptr = shared_arrays(
        dict(block_tables=block_tables, seq_lens=seq_lens, qo_indptr=qo_indptr))
    check_array(block_tables, "block_tables", ndim=2, dtypes=[np.int32])
    batch, pages = (int(n) for n in block_tables.shape)
    if batch > max_batch or pages > max_pages:
        raise ValueError(f"block_tables: the buffer holds at most {max_batch} rows of "
                         f"{max_pages} pages, got shape {(batch, pages)}")
    # int32 arrays, as the wrapper's plan takes them: a cast here would cut 16.9 to 16 and
    # wrap 2**32 + 5 to 5, which every rank would then plan without a word
    check_array(seq_lens, "seq_lens", ndim=1, dtypes=[np.int32])
    if seq_lens.shape != (batch,):
        raise ValueError(f"seq_lens: expected shape ({batch},), got {seq_lens.shape}")
    if prefill:
        check_array(qo_indptr, "qo_indptr", ndim=1, dtypes=[np.int32])
        if qo_indptr.shape != (batch + 1,):
            raise ValueError(f"qo_indptr: expected shape ({batch + 1},), got {qo_indptr.shape}")
    # host copies (a GPU's arrays too), with one wait for all of them
    tables, lens, *indptr = to_numpy_together(block_tables, seq_lens,
                                              *([qo_indptr] if prefill else []))
    indptr = indptr[0] if prefill else None
    if page_size is not None:
        _check_values(tables, lens, indptr, page_size)
    buf = np.zeros(capacity, np.int32)
    buf[:HEADER] = batch, pages
    # back to back, not at offsets of max_batch and max_pages: a reader given other sizes
    # than these (the buffer's size cannot tell every pair apart) still finds every part
    start = HEADER
    for part in (lens, tables.ravel(), *([indptr] if prefill else [])):
        buf[start:start + part.size] = part
        start += part.size
    return buf


def _check_values(block_tables, seq_lens, qo_indptr, page_size) -> None:
    """The checks of the tables' values (host copies) that BatchDecodeWrapper.plan (qo_indptr
    None) or BatchPrefillWrapper.plan runs, with their errors."""
    page_size = check_int(page_size, "page_size", minimum=1)
    if qo_indptr is None:
        check_decode_tables(block_tables, seq_lens, page_size)
    else:
        check_prefill_tables(qo_indptr.astype(np.int64), block_tables, seq_lens, page_size)


_SAME_SIZES = "pack_tables and unpack_tables must be given the same sizes"


def unpack_tables(buf, max_batch: int, max_pages: int | None = None):
    """(block_tables [batch, pages], seq_lens [batch]), views into `buf` (NumPy or CuPy; a
    torch tensor as the array sharing its memory, as pack_tables takes its arrays); with
    max_pages (a prefill buffer), qo_indptr [batch + 1] too. Where they are follows
    from the buffer's header alone (pack_tables writes them back to back), so the read is
    exact whatever sizes are given; sizes the buffer's header or size shows it was not
    packed with are refused by name (sizes whose buffer has the same size, 2 rows of 5
    pages for 3 rows of 3, cannot be told apart, and need not be)."""
    max_batch = check_int(max_batch, "max_batch", minimum=0)
    prefill = max_pages is not None
    if prefill:
        max_pages = check_int(max_pages, "max_pages", minimum=0)
    # (a tensor's .size is a method: compared with HEADER, a TypeError naming nothing)
    (buf,) = shared_arrays(dict(buf=buf))
    if getattr(buf, "ndim", None) != 1 or buf.size < HEADER:
        raise ValueError(f"buf: expected the 1-D buffer pack_tables fills, got shape "
                         f"{getattr(buf, 'shape', None)}")
    if buf.dtype != np.int32:   # (a float64 one gave float64 tables and lengths)
        raise TypeError(f"buf: expected the int32 buffer pack_tables fills, got dtype "
                        f"{buf.dtype}")
    batch, pages = (int(n) for n in buf[:HEADER].tolist())
    if batch == REFUSED:
        raise ValueError("buf: it holds rank 0's refusal of this step, not tables (its error "
                         "follows in a second broadcast: as many bytes of message as the "
                         "refusal's words say, read by refusal_error)")
    if batch < 0 or pages < 0:   # (not "more than" the sizes: no sizes would read it)
        raise ValueError(f"buf: its header says {batch} rows of {pages} pages, a negative count "
                         f"that pack_tables never writes: not a buffer it filled")
    if not (batch <= max_batch and (not prefill or pages <= max_pages)):
        raise ValueError(f"max_batch, max_pages: buf holds {batch} rows of {pages} pages, more "
                         f"than max_batch={max_batch}, max_pages={max_pages} ({_SAME_SIZES})")
    # pack_tables fills table_capacity entries: a prefill buffer's size is known exactly; a
    # decode one's is HEADER + max_batch * (1 + its max_pages), for some max_pages >= pages
    body = int(buf.size) - HEADER
    if prefill and body + HEADER != (need := table_capacity(max_batch, max_pages, True)):
        raise ValueError(f"buf: {buf.size} entries, not the {need} that pack_tables fills for "
                         f"max_batch={max_batch}, max_pages={max_pages} ({_SAME_SIZES})")
    if not prefill and not (body % max_batch == 0 and body // max_batch - 1 >= pages
                            if max_batch else body == 0):
        raise ValueError(f"buf: {buf.size} entries, not a size pack_tables fills for max_batch="
                         f"{max_batch} ({HEADER} + max_batch * (1 + max_pages), max_pages >= "
                         f"{pages}; {_SAME_SIZES})")
    lens = buf[HEADER:HEADER + batch]
    start = HEADER + batch
    tables = buf[start:start + batch * pages].reshape(batch, pages)
    if not prefill:
        return tables, lens
    start += batch * pages
    return tables, lens, buf[start:start + batch + 1]


# ---- a step a rank refuses -----------------------------------------------------------------
# The other ranks are waiting in the broadcast when rank 0 refuses the tables it was given: so
# the buffer goes out all the same, a refusal's words (REFUSED, the error's kind, its message's
# bytes) in place of (batch, pages, ...), then one more broadcast carries the message, whole, and
# every rank raises the same error. A rank that refuses its own inputs sends the same words after
# its share of the output's gather (TPDecode.gather). A step that is not refused sends nothing
# more.

REFUSED = -1            # in place of the batch, which is never negative
# int32 words of a refusal: REFUSED, kind, message bytes, 0 (16 bytes, a whole number of any
# element, so that the outputs gathered after a rank's words stay aligned)
REFUSAL_WORDS = 4
# an error of one of these kinds (the first it is) is rebuilt as that kind, sent as its index
REFUSAL_KINDS = (ValueError, TypeError)
OTHER_KIND = len(REFUSAL_KINDS)           # any other exception: a RuntimeError naming its type


def refusal_kind(error: BaseException) -> int:
    """`error`'s kind as sent: its index in REFUSAL_KINDS, or OTHER_KIND (a KeyboardInterrupt
    too: an exception, if no Exception)."""
    if not isinstance(error, BaseException):
        raise TypeError(f"error: expected an exception, got {type(error).__name__}")
    return next((i for i, cls in enumerate(REFUSAL_KINDS) if isinstance(error, cls)),
                OTHER_KIND)


def error_text(error: BaseException) -> str:
    """str(error), or, where that raises, a text saying so: raised while a rank refuses its
    step, it would leave the other ranks waiting."""
    try:
        return str(error)
    except Exception:   # noqa: BLE001 - any error of the error's own __str__
        return f"({type(error).__name__}: its message could not be read)"


def refusal_message(error: BaseException) -> np.ndarray:
    """`error`'s message, whole, as UTF-8 bytes (uint8); one of another kind than
    REFUSAL_KINDS starts with its type's name, which the rebuilt RuntimeError would lose (a
    RuntimeError's own name would only repeat it). (A lone surrogate, which UTF-8 cannot
    carry, goes as its escape; a message that cannot be read, as saying so.)"""
    text = error_text(error)
    if refusal_kind(error) == OTHER_KIND and type(error) is not RuntimeError:
        text = f"{type(error).__name__}: {text}"
    return np.frombuffer(text.encode("utf-8", "backslashreplace"), np.uint8).copy()


def refusal_header(capacity: int, error: BaseException) -> np.ndarray:
    """The int32 buffer of `capacity` entries (at least REFUSAL_WORDS) that says its rank
    refused the step with `error`: its REFUSAL_WORDS, then zeros."""
    kind = refusal_kind(error)
    buf = np.zeros(check_int(capacity, "capacity", minimum=REFUSAL_WORDS), np.int32)
    buf[:REFUSAL_WORDS] = REFUSED, kind, refusal_message(error).size, 0
    return buf


def is_refusal(buf) -> bool:
    """Whether a received buffer holds a refusal (reads one entry: 4 bytes off a GPU)."""
    return int(buf[0]) == REFUSED


def refusal_error(header, message) -> Exception:
    """The error a rank refused its step with, rebuilt from the REFUSAL_WORDS it sent and its
    message (NumPy arrays; the message as many bytes as the header says)."""
    words = tuple(int(n) for n in header[:REFUSAL_WORDS])
    message = np.asarray(message, np.uint8)
    if not (len(words) == REFUSAL_WORDS and words[0] == REFUSED
            and 0 <= words[1] <= OTHER_KIND and words[2] == message.size and words[3] == 0):
        raise ValueError(f"header: expected ({REFUSED}, 0..{OTHER_KIND}, {message.size}, 0), "
                         f"what refusal_header writes for this {message.size}-byte message, "
                         f"got {words}")
    text = bytes(message).decode("utf-8", errors="replace")
    return (*REFUSAL_KINDS, RuntimeError)[words[1]](text)


# ---- what crosses the wire -----------------------------------------------------------------

class StepBytes(NamedTuple):
    """Bytes of one decode step of one attention layer (`step_bytes`)."""
    tables: int        # the broadcast buffer, once per step (all layers share it)
    output_share: int  # one rank's part of the output, sent to every other rank (with its
                       # 16-byte status, REFUSAL_WORDS int32, not counted here)
    output: int        # the whole gathered output every rank ends with
    kv_read: int       # K and V one rank reads from its own memory: never on the wire


def _holding(size, name: str, needed: int, what: str) -> int:
    """A buffer size of at least `needed`: the buffer must hold this step's table."""
    size = check_int(size, name, minimum=0)
    if size < needed:
        raise ValueError(f"{name}: the buffer must hold {what}, {needed}; got {size}")
    return size


def step_bytes(seq_lens, num_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
               world_size: int, itemsize: int = 2, max_batch: int | None = None,
               max_pages: int | None = None) -> StepBytes:
    """What one decode step moves, for a batch of sequences of lengths `seq_lens`."""
    num_heads, num_kv_heads, world_size = check_split(num_heads, num_kv_heads, world_size)
    # ints only: a cast would cut 16.9 to 16 and read "5" as 5, giving byte counts silently
    lens = check_int_list(seq_lens, "seq_lens", "length", minimum=0)
    # int32, as the buffer carries them (two lengths of 2**62 summed past int64: a negative
    # kv_read); the sums below are Python ints
    for i, n in enumerate(lens):
        if n > INT32_MAX:
            raise ValueError(f"seq_lens[{i}]: expected a length <= {INT32_MAX} (the broadcast "
                             f"buffer carries int32 lengths, as the wrapper's plan takes "
                             f"them), got {n}")
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    page_size = check_int(page_size, "page_size", minimum=1)
    itemsize = check_int(itemsize, "itemsize", minimum=1)
    batch = len(lens)
    # the buffer must hold this batch: smaller sizes would count a table that cannot be sent
    needed = -(-max(lens) // page_size) if batch else 0
    max_batch = batch if max_batch is None else _holding(max_batch, "max_batch", batch,
                                                         "the batch's sequences")
    max_pages = needed if max_pages is None else _holding(max_pages, "max_pages", needed,
                                                          "the longest sequence's pages")
    out = batch * num_heads * head_dim * itemsize
    kv = sum(lens) * 2 * (num_kv_heads // world_size) * head_dim * itemsize
    return StepBytes(4 * table_capacity(max_batch, max_pages), out // world_size, out, kv)
