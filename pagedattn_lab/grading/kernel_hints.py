"""Hints read off a kernel's wrong output: which elements were never written, which hold a
NaN the kernel computed, which padding rows hold data.

Each function returns a hint only when the evidence for its mistake is in the output (the
poison's bit pattern tells "never written" from "computed NaN", see kernel_runner.py) or in
the source, and None otherwise, so that the checks can chain them: the first that speaks wins.
"""
from __future__ import annotations

import re

import numpy as np

from .compare import ATOL, diagnose, matches
from .report import Mismatch, NotAttempted, several_fit
from .variants import attention_variant

# What a float variable holds before its first write on the CPU executor built by GCC 12 or
# later (-ftrivial-auto-var-init=pattern fills 0xfe bytes, cpu/compiler.py): -1.7e38. A sum
# that starts there stays there, as a float32 cannot hold it plus a score.
UNSET_FLOAT = float(np.uint32(0xFEFEFEFE).view(np.float32))

NOTHING_WRITTEN = ("the kernel wrote nothing to its output (it still holds the NaN the check "
                   "filled it with): write the kernel body where the // TODO is")


def nothing_written(source: str) -> None:
    """Every output element still holds the poison: the stub, or a kernel that never stores."""
    if "TODO" in source:
        raise NotAttempted(NOTHING_WRITTEN)
    raise Mismatch("the kernel wrote nothing: every output element still holds the check's "
                   "NaN poison", "no thread reached a store to the output: check the guards "
                   "before it (a `return` or an `if` that every thread takes) and the output "
                   "pointer you write through.")


def _code(source: str) -> str:
    """The source with its comments left out."""
    code = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", " ", code)


def barriers(source: str) -> int:
    """How many __syncthreads() calls the source makes (comments left out)."""
    return len(re.findall(r"__syncthreads\s*\(", _code(source)))


_SHIFT_OR_MASK = re.compile(r"<<|>>|&\s*\(\s*\w+\s*-\s*1\s*\)")


def shift_hint(source: str, sizes: dict) -> str | None:
    """Shifts or masks (`>> log2(n)`, `& (n - 1)`) in the source, and sizes of this case that
    are not powers of two: they stand for / and % only for a power of two (the other cases'
    sizes all are)."""
    odd = [f"{name} = {n}" for name, n in sizes.items() if n & (n - 1)]
    if not odd or not _SHIFT_OR_MASK.search(_code(source)):
        return None
    return ("your kernel shifts or masks (<< or >> log2(n), & (n - 1)), which stand for * n, "
            f"/ n and % n only when n is a power of two, and {', '.join(odd)} here "
            f"{'is' if len(odd) == 1 else 'are'} not: use *, / and %.")


def fixed_page_asked(page_size: int) -> bool:
    """Whether a kernel right with pages of 16 tokens, and wrong with `page_size`, shows a
    16 written into the code: for a smaller power of two only (a shift or a mask is right at
    any power of two, and a page longer than a block's threads asks for a loop, not a row
    per thread)."""
    return page_size < 16 and not page_size & (page_size - 1)


def fixed_page_hint(page_size: int) -> str:
    """A kernel right on a case's problem with pages of 16 tokens, wrong with its own."""
    return (f"your kernel is right on this problem with pages of 16 tokens and wrong with "
            f"page_size = {page_size}: is 16 written into the code where page_size belongs? "
            "Use the page_size argument.")


def mha_only_hint(num_heads: int, num_kv_heads: int) -> str:
    """A kernel right on a case's problem with one KV head per query head, wrong with GQA."""
    return (f"your kernel is right on this problem when every query head has its own KV head "
            f"and wrong where {num_heads} query heads share {num_kv_heads} KV heads (GQA): "
            "check what each head index selects: query head h reads its own q row and KV head "
            "h / (num_heads / num_kv_heads), and a slot of the cache holds num_kv_heads heads, "
            "not num_heads: KV head kv_head's row is (slot * num_kv_heads + kv_head) * "
            "head_dim.")


WHOLE_TOKEN_OFFSET_HINT = ("the offset inside the page is t % page_size: the token's "
                           "position t itself is right only in the first page.")


PAGE_FOR_HEAD_DIM_HINT = ("page_size is written where head_dim belongs: a row of K or V "
                          "(in the cache or in a shared tile) is head_dim floats, so key j's "
                          "element d is at j * head_dim + d; with head_dim = 16 here, pages "
                          "of 16 tokens hide the difference.")


def one_size_hint(right_with, sizes: dict, longest: int | None = None) -> str | None:
    """fixed_page_hint or mha_only_hint for a kernel wrong at `sizes` (page_size, num_heads,
    num_kv_heads) that `right_with(**changed)` finds right with pages of 16 tokens, or with a
    KV head per query head; None where it is right as it is (wrong for another reason).
    Where `sizes` has head_dim 16, page_size written where head_dim belongs is right with
    pages of 16 tokens too, and both are named.
    `longest`: the case's longest sequence; where it fits one page of 16 tokens, a kernel
    that takes the position t for the offset is right there too, and both are named."""
    fixed_page = fixed_page_asked(sizes["page_size"])
    gqa = sizes["num_kv_heads"] != sizes["num_heads"]
    if not (fixed_page or gqa) or right_with():   # (no probe where neither hint could come)
        return None
    if fixed_page and right_with(page_size=16):
        fits = [fixed_page_hint(sizes["page_size"])]
        if longest is not None and longest <= 16:
            fits.append(WHOLE_TOKEN_OFFSET_HINT)
        if sizes.get("head_dim") == 16:   # (pages of 16 are then as long as a row)
            fits.append(PAGE_FOR_HEAD_DIM_HINT)
        return several_fit(fits) if len(fits) > 1 else fits[0]
    if gqa and right_with(num_kv_heads=sizes["num_heads"]):
        return mha_only_hint(sizes["num_heads"], sizes["num_kv_heads"])
    return None


def unwritten_pattern_hint(diff, *, threads: int, token_axis: str = "token") -> str | None:
    """Hints read off which entries were never written (prefill: a thread owns a token row)."""
    if not diff.unwritten.any():
        return None
    nan_tokens, n_tokens = diff.affected(token_axis)
    axis = diff.axes.index(token_axis)
    never = np.moveaxis(diff.unwritten, axis, 0)
    if nan_tokens and min(nan_tokens) >= threads and n_tokens > threads and \
            never[threads:].all():   # every element of every token from `threads` on
        return (f"tokens from {threads} on were never written: a block has {threads} threads, "
                f"so the token index is blockIdx.x * blockDim.x + threadIdx.x.")
    if diff.axes[-1] == "dim":
        never = diff.unwritten.any(axis=tuple(range(diff.unwritten.ndim - 1)))
        first = int(np.argmax(never))
        if first > 0 and never[first:].all():
            return (f"only dims 0..{first - 1} of each row were written: the thread's loop "
                    f"over the row must run d = 0 .. head_dim - 1 ({never.size} here).")
    return None


def row_stride_hint(diff, head_dim: int, threads: int) -> str | None:
    """Gather: every token row was written only up to some position."""
    if not diff.unwritten.any():
        return None
    idx = np.argwhere(diff.unwritten)
    row_pos = idx[:, 2] * head_dim + idx[:, 3]
    row_len = diff.unwritten.shape[2] * head_dim
    first = int(row_pos.min())
    if first == 0:
        return None
    text = (f"only the first {first} values of each token's row were copied; a row holds "
            f"num_kv_heads * head_dim = {row_len} values (every kv head of the token)")
    if first == threads:
        also = " (or one kv head's worth)" if first == head_dim else ""
        return (text + f": one value per thread{also} is not enough, loop over the whole row "
                "with a stride: for (int i = threadIdx.x; i < row_len; i += blockDim.x).")
    return text + ": the copy loop must run over the whole row."


def padding_hint(got, expected, valid, never, *, copies: bool = False) -> str | None:
    """Right on real tokens, wrong on the rows past seq_lens: they must be zeros. `copies`:
    the kernel copies rows (the gather), it runs no softmax."""
    real = np.broadcast_to(valid, got.shape)
    ok_real = np.allclose(np.where(real, got, 0), np.where(real, expected, 0), atol=2e-4,
                          rtol=2e-4)
    if not ok_real or (~real).sum() == 0:
        return None
    pad, pad_never = got[~real], never[~real]
    if pad_never.any():
        return ("rows at or past seq_lens[b] were never written: they are part of the output "
                "and must hold zeros (a thread there must not read the cache, but it must "
                "store 0).")
    if not np.any(pad != 0):      # (NaN != 0)
        return None
    first = _first_length_rows(got, valid)
    if first:
        return first
    if copies:
        return ("rows at or past seq_lens[b] must be zeros, but yours hold what a thread past "
                "the sequence's end copied from the cache (its block-table entries there are "
                "-1 padding). Test t >= seq_lens[b] first, store zeros and return (a copy "
                "after the zeros overwrites them).")
    if np.isnan(pad).any():
        # (a causal loop past the end reads keys past it: NaN there is no 0/0 over no keys)
        return ("rows at or past seq_lens[b] must be zeros, but yours hold NaN: a thread past "
                "the sequence's end computed attention anyway, over keys past the end (unused "
                "slots, -1 padding) or over none (0/0). Test t >= seq_lens[b] first and store "
                "zeros.")
    return ("rows at or past seq_lens[b] must be zeros, but yours hold data: a thread past "
            "the sequence's end computed attention. Test t >= seq_lens[b] first and "
            "store zeros.")


def _first_length_rows(got, valid) -> str | None:
    """The padding rows that hold data are exactly those below seq_lens[0] (sequence 0 is
    the longest): every sequence was bounded by the first one's length."""
    batch, max_len = valid.shape[:2]
    lens = valid.reshape(batch, max_len).sum(axis=1)
    wrong = (got != 0).reshape(batch, max_len, -1).any(axis=2) & ~valid.reshape(batch, max_len)
    below_first = (np.arange(max_len)[None, :] < lens[0]) & ~valid.reshape(batch, max_len)
    if batch < 2 or not below_first.any() or not (wrong == below_first).all():
        return None
    return (f"rows at or past seq_lens[b] must be zeros, but yours hold data in exactly the "
            f"rows below seq_lens[0] ({int(lens[0])}) of every sequence: the bound is sequence "
            "0's length for all of them. Sequence b's length is seq_lens[b]: test t >= "
            "seq_lens[b] first and store zeros.")


def sequence_hint(got, expected, valid, never) -> str | None:
    """Sequence 0 (the longest) right on every real token, a later one wrong there: what
    differs between them is b, so look at what depends on b, before any guess at the math."""
    real = np.broadcast_to(valid, got.shape)
    close = np.isclose(got, expected, atol=2e-4, rtol=2e-4) | ~real | never
    per_sequence = close.reshape(len(got), -1).all(axis=1)
    if len(got) < 2 or not per_sequence[0] or per_sequence.all():
        return None
    wrong = [b for b in range(len(got)) if not per_sequence[b]]
    return (f"sequence 0 is right and sequence{'s' if len(wrong) > 1 else ''} "
            f"{', '.join(map(str, wrong))} {'are' if len(wrong) > 1 else 'is'} not (on tokens "
            "< seq_len), so look at what depends on b: sequence b's block-table row starts at "
            "block_tables + b * max_pages (max_pages, the table's width), its length is "
            "seq_lens[b] (sequence 0 is the longest: a bound taken from max_len or from "
            "sequence 0 reads past the others' ends), its q and out rows start at "
            "((b * max_len + t) * num_heads + h) * head_dim.")


def nan_hint(got, valid, never, *, shared_tile: bool, source: str) -> str | None:
    """NaN the kernel computed in rows that hold attention."""
    real = np.broadcast_to(valid, got.shape)
    made = np.isnan(got) & ~never & real
    if not made.any():
        return None
    if shared_tile and barriers(source) < 2:
        return ("your kernel computed NaN, and it has fewer than two __syncthreads() per "
                "page: a thread that reads the shared tile before every thread has stored "
                "its part reads what was there before (the CPU executor fills shared memory "
                "with NaN). A barrier must separate the load from the compute, and another "
                "the compute from the next load.")
    if shared_tile:
        return ("your kernel computed NaN. Shared memory starts as NaN on the CPU executor "
                "(garbage on a GPU): is every element of the tile that the compute reads "
                "loaded first? The load loop must cover all n_keys * head_dim elements of K "
                "and of V, whatever the block size. If it does, the NaN comes from the online "
                "softmax (0/0, inf - inf): start the running max at -inf and rescale by "
                "exp(old_max - new_max), never the other way round.")
    return ("your kernel computed NaN in rows that hold attention: a 0/0, inf - inf or inf * 0 "
            "in the online softmax. Start the running max at -inf, compute the rescale "
            "exp(old_max - new_max) before overwriting the max, and weigh each key with "
            "exp(score - new_max).")


MAX0_HINT = ("every score here is far below 0: a running max started at 0, not -inf, makes "
             "expf(score - 0) underflow to 0 in float32 for every key, and the output 0/0 = "
             "NaN. Start the running max at -inf (NEG_INF).")
UNLOADED_TILE_HINT = ("a tile element read before it was loaded (shared memory starts as NaN "
                      "on the CPU executor): the load loop must cover all n_keys * head_dim "
                      "elements of K and of V, whatever the block size.")


def max0_tile_hint(case, got) -> str | None:
    """A tiled kernel's NaN just where a running max started at 0 gives it (every score far
    below 0): that mistake first, then the unloaded tile, whose NaN can fall anywhere."""
    max0 = attention_variant(case.q, case.k_cache, case.v_cache, case.block_tables,
                             case.seq_lens, case.scale, online_bug="max0")
    if not matches(got, max0):
        return None
    return several_fit([MAX0_HINT, UNLOADED_TILE_HINT])


def _half_sum(q_rows, keys) -> np.ndarray:
    """q . k as a __half running sum (in d order) of float products, each rounded to __half."""
    products = (q_rows.astype(np.float32)[:, None] * keys.astype(np.float32)[None])
    total = np.zeros(products.shape[:2], np.float16)
    for d in range(products.shape[-1]):
        total = total + products[..., d].astype(np.float16)   # (float16 + float16: float16)
    return total.astype(np.float64)


# The dot products a kernel that rounds to __half computes: summed in __half, the float sum
# rounded once (a __half score), and q and k rounded before they are multiplied.
NARROW_DOTS = (
    _half_sum,
    lambda q_rows, keys: (q_rows.astype(np.float32) @ keys.T.astype(np.float32))
    .astype(np.float16).astype(np.float64),
    lambda q_rows, keys: (q_rows.astype(np.float16).astype(np.float64)
                          @ keys.T.astype(np.float16).astype(np.float64)),
)


ROUNDING_HINT = (f"your outputs are what q . k computed in __half gives, off the expected by "
                 f"more than {ATOL:g}: a step of your kernel rounds to a narrower type (a "
                 "__half score or sum, a __float2half on the way): keep the dot products, the "
                 "softmax and the accumulator in float.")


def rounding_hint(got, expected, valid, prob) -> str | None:
    """ROUNDING_HINT when the real rows (`valid`) are what one of NARROW_DOTS gives on the
    prefill problem `prob`, within the check's tolerance. An answer merely near the expected
    (a scale off by 1%) is no evidence of rounding."""
    return diagnose(got, expected, [
        (ROUNDING_HINT, lambda dot=dot: attention_variant(
            prob.q, prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens, prob.scale,
            dot=dot)) for dot in NARROW_DOTS], mask=valid)


def array_size_hint(source: str, head_dim: int) -> str | None:
    """A per-thread array declared shorter than this case's head_dim but long enough for the
    smaller cases' (e.g. float acc[32] where head_dim is 128)."""
    code = _code(source)
    declared = [m for stmt in re.findall(r"(?<![\w_])(?:float|double)\s+([^;()]*);", code)
                for m in re.findall(r"(?:^|,)\s*(\w+)\s*\[\s*(\d+)\s*\]", stmt)]
    short = [(name, int(n)) for name, n in declared
             if 16 <= int(n) < head_dim and not re.search(rf"__shared__[^;]*\b{name}\s*\[", code)]
    if not short:
        return None
    name, n = short[0]
    return (f"{name}[{n}] holds {n} values, but head_dim is {head_dim} here: a thread's "
            f"arrays over the head dimension need MAX_HEAD_DIM (128) entries, and writing past "
            f"the end of one corrupts the thread's other variables.")


def tiled_hint(source: str, racecheck: bool = False) -> str:
    """The last resort for the tiled kernel: name the race the barriers leave open (where no
    race check ran: on the CPU executor it would have named the threads already)."""
    if racecheck:
        return ("the race check found no race, so look at the arithmetic: each page p covers "
                "keys p * page_size .. + n_keys - 1 (n_keys = min(page_size, keys_needed - "
                "first_key)), pages = ceil(keys_needed / page_size); query t uses tile key j "
                "while first_key + j <= t; scale once; one online softmax over all the pages "
                "(never reset per page); V from v_cache.")
    if barriers(source) < 2:
        return ("a race on the shared tile: with one __syncthreads() per page, a fast thread "
                "overwrites the tile with the next page while others still read it. Put a "
                "barrier after the load AND one after the compute loop.")
    return ("if every page is loaded right, look for a race: is anything in shared memory "
            "written by one thread and read by another without a __syncthreads() between "
            "(the guide stages every thread's query in ONE shared buffer: keep your query in "
            "registers)?")


def tile_load_hint(reads: int, values, needed: np.ndarray, lens: np.ndarray, tile: int,
                   page_size: int) -> str:
    """The tiled kernel's mistake behind `reads` loads of a cache array where its blocks need
    `values(needed)`: `values(keys)` counts the values read for `keys` per (sequence, block);
    `needed` [batch, blocks] the keys each block of `tile` queries needs, `lens` [batch, 1]
    the sequences' lengths."""
    whole = np.broadcast_to(lens, needed.shape)
    firsts = np.arange(needed.shape[1])[None, :] * tile
    if reads in (values(whole), values(np.where(firsts < lens, lens, 0))):
        b, x = (int(i) for i in np.argwhere(needed < whole)[0])
        return (f"every block loads its whole sequence: the blocks ({x}, h, {b}) hold "
                f"queries {x * tile}..{x * tile + tile - 1} of sequence {b} and need "
                f"keys 0..{needed[b, x] - 1} only (causal), not all {lens[b, 0]}; a block "
                "past seq_len needs none. Load Task 1's pages: keys_needed = min(seq_len, "
                "first_query + blockDim.x).")
    if reads == values(-(-needed // page_size) * page_size):
        return ("as many values as whole pages hold: the last page's slots from "
                "keys_needed on were loaded too, and no query of the block reads them (they "
                "may hold garbage). keys_needed = min(seq_len, first_query + blockDim.x), "
                "and the last page loads n_keys = min(page_size, keys_needed - first_key).")
    if reads == values(np.minimum(-(-needed // page_size) * page_size, lens)):
        return ("the last page a block loads stops at seq_len, not at keys_needed: its keys "
                "after the block's last query are real, but no query of the block reads "
                "them (causal). n_keys = min(page_size, keys_needed - first_key), "
                "keys_needed = min(seq_len, first_query + blockDim.x).")
    return ("each block loads the keys and values 0..keys_needed - 1 of its kv head into the "
            "tiles once, keys_needed = min(seq_len, first_query + blockDim.x), and reads them "
            "from the tiles after that.")
