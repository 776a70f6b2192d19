"""Checks for lesson 01, part 2: block tables, one per sequence.

The mistakes these catch: a page per token instead of per `page_size` tokens, a new page
although the last one still has room, all the sequence's pages taken again (the ones the
table holds not subtracted), rounding down, several allocate calls that leave a
table half grown when the pool runs out, one block table shared by the whole batch
(the guide's bug; in Python, `[[]] * n`), a ceil right only for powers of two, and a table
built [max_pages, batch]: returned as is, or as its `.T` view (NumPy indexes it right; a
kernel reads its memory transposed).
"""
from __future__ import annotations

import numpy as np

from ..paging import BlockAllocator, OutOfPagesError
from ..validate_kinds import is_int
from ..words import counted
from .block_table_hints import EMPTY_BATCH_HINT, count_hint, width_hint
from .compare import FIXED_PAGE_HINT, call_on_copies
from .report import Case, CheckResult, Mismatch, probe, run_cases, several_fit, shortened, text_of
from .seeds import case_rng


def _busy_allocator(num_pages: int, held: int, seed: int) -> tuple[BlockAllocator, set[int]]:
    """A pool that has served before: `held` random pages belong to other sequences and the
    free list is shuffled, so the pages allocate returns are neither 0, 1, 2... nor in order."""
    alloc = BlockAllocator(num_pages)
    pages = alloc.allocate(num_pages)
    order = case_rng(seed).permutation(num_pages)
    alloc.free([pages[i] for i in order[held:]])
    return alloc, {pages[i] for i in order[:held]}


def _in_use(alloc: BlockAllocator) -> set[int]:
    return set(alloc.state().owners)


IN_PLACE_HINT = ("you took the right pages from the allocator, but `table` did not grow by "
                 "them: extend the caller's list in place (table.extend(pages)); `table = "
                 "table + pages` only rebinds your local name, and table.append(pages) adds one "
                 "entry holding a list.")


def _expect_new_entries(table: list, before: list, taken: set[int]) -> None:
    """The entries appended are the pages the allocator handed out, each once."""
    new = table[len(before):]
    if not all(is_int(p) for p in new):
        raise Mismatch(f"the new entries are {new!r}", "each entry is one page id (an int): "
                       "table.extend(pages), not table.append(pages).")
    if sorted(int(p) for p in new) != sorted(taken):
        raise Mismatch(f"the new entries {[int(p) for p in new]} are not the pages allocate "
                       f"returned ({sorted(taken)})", "append the ids allocate returned: "
                       "page ids come from the allocator (here its free list is shuffled), "
                       "not from a counter or from the pages the table already holds.",
                       repr(sorted(taken)), repr(sorted(int(p) for p in new)))


# -- task: grow one sequence's block table ----------------------------------------------

def _room_hint(page_size: int, seq_len: int) -> str:
    return (f"the sequence's last page still has room for "
            f"{counted(page_size - seq_len % page_size, 'token')}: fill it before taking new pages "
            "(new pages = ceil((seq_len + n_new) / page_size) - len(table)).")


def _pages_taken(fn, n_new: int, page_size: int, seq_len: int = 0) -> int:
    """The pages `fn` takes from a fresh pool for `n_new` tokens into the table of a
    sequence of `seq_len` (a probe confirming a suspected mistake)."""
    held = -(-seq_len // page_size)
    # room beside the held pages for a page per token and for all the pages again: the
    # mistakes probed take that many, and a pool too small would refuse them, not show them
    alloc = BlockAllocator(held + n_new + -(-(seq_len + n_new) // page_size))
    probe(fn, alloc.allocate(held), seq_len, n_new, page_size, alloc)
    return alloc.num_used - held


ALL_AGAIN_HINT = ("you took all ceil((seq_len + n_new) / page_size) pages the sequence needs, "
                  "but the table already holds len(table) of them: take only the missing ones, "
                  "ceil((seq_len + n_new) / page_size) - len(table).")


def _append_case(fn, page_size: int, seq_len: int, n_new: int, num_pages: int = 16) -> None:
    alloc, _ = _busy_allocator(num_pages, 3, 7 + seq_len + n_new)
    table = alloc.allocate(-(-seq_len // page_size))
    before = list(table)
    used_before, in_use_before = alloc.num_used, _in_use(alloc)
    result = fn(table, seq_len, n_new, page_size, alloc)
    if result is not None and result is not table:
        what = "a new list" if isinstance(result, list) else f"a value ({type(result).__name__})"
        raise Mismatch(f"append_tokens returned {what}", "extend `table` in place (the "
                       "caller keeps its reference) and return None.",
                       expected="None (`table` extended in place)",
                       got=shortened(text_of(result)))
    want = -(-(seq_len + n_new) // page_size)
    taken = alloc.num_used - used_before
    if len(table) != want or taken != want - len(before):
        hint = "a sequence of L tokens owns ceil(L / page_size) pages."
        # (confirmed at a table of 3 full pages and 1 token more: 4 pages taken, not 1)
        if before and taken == want and _pages_taken(fn, 1, 4, seq_len=12) == 4:
            hint = ALL_AGAIN_HINT
        elif taken == want - len(before):
            hint = IN_PLACE_HINT
        elif taken == n_new and n_new != want - len(before):
            per_token = ("one page per token: a page holds page_size tokens, so take "
                         "ceil((seq_len + n_new) / page_size) - len(table) new pages.")
            hint = "you took " + per_token
            if n_new == 1 and seq_len % page_size:   # ceil(1 / page_size) is 1 page too
                hint = several_fit([per_token, _room_hint(page_size, seq_len)], "pages")
        elif (seq_len + n_new) % page_size == 0 and taken == want - len(before) + 1 \
                and _pages_taken(fn, 4, 4) == 2:   # (4 tokens in pages of 4: 1 page, not 2)
            hint = (f"one page too many: ceil is not floor + 1, {seq_len + n_new} tokens fill "
                    f"exactly {counted(want, 'page')}; use -(-(seq_len + n_new) // page_size).")
        elif taken == -(-n_new // page_size) and seq_len % page_size:
            hint = _room_hint(page_size, seq_len)
        elif page_size != 16 and taken == max(0, -(-(seq_len + n_new) // 16) - len(before)) \
                and _pages_taken(fn, 17, 4) == 2:   # (17 tokens: 5 pages of 4, 2 of 16)
            hint = FIXED_PAGE_HINT.format(n=page_size)
        elif taken == (seq_len + n_new) // page_size - len(before):
            hint = "round up, not down: a partly filled last page is still a page (ceil)."
            if (seq_len + n_new) % page_size == 1:   # ceil of one token less gives it too
                hint = several_fit([hint, "count the new tokens' last one: the sequence will "
                                    "hold seq_len + n_new tokens, not seq_len + n_new - 1, and "
                                    "here that last token alone starts a new page."], "pages")
        elif taken == want - len(before) + 1:
            hint = "one page too many: take a new page only when the last one is full."
        elif taken == 1 and want - len(before) > 1:
            hint = (f"{n_new} tokens may need several new pages: take "
                    "ceil((seq_len + n_new) / page_size) - len(table) of them, not one.")
        elif taken == 0:
            hint = (f"the new tokens do not fit: the table's {len(before)} pages hold "
                    f"{len(before) * page_size} tokens, and the sequence will hold "
                    f"{seq_len + n_new}.")
        raise Mismatch(f"table length after {counted(n_new, 'new token')} on a sequence of "
                       f"{seq_len}",
                       hint, expected=f"{counted(want, 'page')} ({want - len(before)} new)",
                       got=f"{counted(len(table), 'page')} ({taken} new taken from the "
                           "allocator)")
    if table[: len(before)] != before:
        raise Mismatch("the existing entries changed", "only append new pages at the end: the "
                       "tokens already cached stay where they are.", repr(before),
                       repr(table[: len(before)]))
    _expect_new_entries(table, before, _in_use(alloc) - in_use_before)


def _append_decode_loop(fn, page_size: int, steps: int) -> None:
    alloc, held = _busy_allocator(64, 5, 8)
    table: list[int] = []
    for seq_len in range(steps):
        before, in_use_before = list(table), _in_use(alloc)
        fn(table, seq_len, 1, page_size, alloc)
        want = -(-(seq_len + 1) // page_size)
        if len(table) != want or alloc.num_used - len(held) != want:
            raise Mismatch(f"decoding token {seq_len} one at a time (page_size {page_size})",
                           "take a new page only when the last page is full "
                           "(seq_len % page_size == 0).", f"{want} pages",
                           f"{len(table)} in the table, {alloc.num_used - len(held)} taken")
        _expect_new_entries(table, before, _in_use(alloc) - in_use_before)


def _append_out_of_pages(fn) -> None:
    alloc = BlockAllocator(3)
    table = alloc.allocate(1)
    try:
        fn(table, 4, 9, 4, alloc)
    except OutOfPagesError:
        pass
    else:
        raise Mismatch("13 tokens of page_size 4 need 4 pages; the pool has 3",
                       "the allocator raises OutOfPagesError here: let it propagate (do not "
                       "catch it, and do not take fewer pages than the tokens need).",
                       "OutOfPagesError", "no error")
    if len(table) != 1 or alloc.num_used != 1:
        hint = ("ask the allocator for all new pages in one allocate(n) call: it is all or "
                "nothing, so the table stays unchanged.") if alloc.num_used != 1 else (
            "the pages in use did not change, yet the table did: add entries to the table only "
            "after allocate(n) returned them.")
        raise Mismatch("after the failed append", hint, "table of 1 page, 1 page in use",
                       f"table of {counted(len(table), 'page')}, {alloc.num_used} in use")


def append_tokens(fn) -> CheckResult:
    """Check `fn(table, seq_len, n_new, page_size, allocator)` grows `table` in place."""
    cases = [
        Case("prompt into an empty table", {"page_size": 4, "seq_len": 0, "n_new": 5},
             lambda: _append_case(fn, 4, 0, 5)),
        Case("fits in the last page", {"page_size": 4, "seq_len": 6, "n_new": 2},
             lambda: _append_case(fn, 4, 6, 2)),
        Case("last page full", {"page_size": 4, "seq_len": 8, "n_new": 1},
             lambda: _append_case(fn, 4, 8, 1)),
        Case("partly filled page then more", {"page_size": 8, "seq_len": 5, "n_new": 12},
             lambda: _append_case(fn, 8, 5, 12)),
        Case("no new tokens", {"page_size": 4, "seq_len": 5, "n_new": 0},
             lambda: _append_case(fn, 4, 5, 0)),
        Case("an empty table, no tokens", {"page_size": 4, "seq_len": 0, "n_new": 0},
             lambda: _append_case(fn, 4, 0, 0)),
        Case("a prompt that fills its pages exactly", {"page_size": 4, "seq_len": 0,
                                                        "n_new": 8},
             lambda: _append_case(fn, 4, 0, 8)),
        Case("the token that fills the last page", {"page_size": 4, "seq_len": 3, "n_new": 1},
             lambda: _append_case(fn, 4, 3, 1)),
        Case("many pages at once", {"page_size": 2, "seq_len": 3, "n_new": 9},
             lambda: _append_case(fn, 2, 3, 9)),
        Case("decode 21 tokens one by one", {"page_size": 3},
             lambda: _append_decode_loop(fn, 3, 21)),
        Case("out of pages", {"num_pages": 3}, lambda: _append_out_of_pages(fn)),
    ]
    return run_cases("append_tokens", "append_tokens: grow a block table", cases)


# -- task: the batch's block tables -----------------------------------------------------

def _expect_rows(tables: np.ndarray, seq_lens: list[int], page_size: int, taken: int,
                 need: list[int]) -> None:
    """Each row holds its sequence's page count before its -1 padding."""
    filled = [int((row >= 0).sum()) for row in tables]
    hint = count_hint(filled, seq_lens, page_size, taken)
    short = [i for i in range(len(seq_lens)) if (tables[i, :need[i]] < 0).any()]
    # a square table (batch == max_pages) cannot show a transposition by its shape: its
    # columns hold the sequences' pages, each before its -1 padding
    square = tables.shape[0] == tables.shape[1]
    if not hint and short and square and all((tables[:need[i], i] >= 0).all() and
                                  (tables[need[i]:, i] < 0).all() for i in range(len(need))):
        hint = (f"the table is transposed (it is square here, {tables.shape[0]} x "
                f"{tables.shape[1]}, so its shape cannot show it): row i must be sequence i, "
                "[batch, max_pages], not [max_pages, batch].")
    if not hint and short and sorted(filled) == sorted(need):
        hint = ("the rows hold the right page counts in another order: row i is sequence i, "
                "in the order of seq_lens.")
    if hint or short:
        i = short[0] if short else next(i for i, f in enumerate(filled) if f != need[i])
        raise Mismatch(f"row {i} (a sequence of {counted(seq_lens[i], 'token')}) holds "
                       f"{counted(filled[i], 'page')}",
                       hint or "a sequence of L tokens owns ceil(L / page_size) pages, listed "
                       "before the row's -1 padding.", str(need[i]), str(filled[i]))


def _expect_own_pages(flat: list[int], held: set[int], fresh: set[int]) -> None:
    """Every page in the table was handed out by this call of the allocator."""
    stolen = sorted(p for p in flat if p in held)
    if stolen:
        raise Mismatch(f"pages {stolen} belong to other sequences (the allocator did not give "
                       "them to you)", "use the ids allocate returns: this pool has served "
                       "other sequences, so its free pages are not 0, 1, 2...")
    unowned = sorted(p for p in flat if p not in fresh)
    if unowned:
        raise Mismatch(f"pages {unowned} are free in the allocator", "use the ids allocate "
                       "returns, not numbers of your own (a counter, a range): a page nobody "
                       "took will be handed to another sequence.")


def _batch_case(fn, seq_lens: list[int], page_size: int, num_pages: int = 64) -> None:
    alloc, held = _busy_allocator(num_pages, 8, 9 + len(seq_lens) + sum(seq_lens))
    try:
        result = call_on_copies("block_tables", fn, {"seq_lens": list(seq_lens)}, page_size,
                                alloc)
    except (ValueError, IndexError) as exc:
        if seq_lens:
            raise
        raise Mismatch(f"an empty batch raised {type(exc).__name__}: {exc}",
                       EMPTY_BATCH_HINT) from None
    # a list of the two unpacks as the tuple does: `tables, lens = ...` works the same
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        got = f"a {type(result).__name__} of {len(result)}" \
            if isinstance(result, (tuple, list)) else f"one {type(result).__name__}"
        raise Mismatch("expected a tuple (block_tables, seq_lens)",
                       "return both arrays, as PagedKVCache.block_tables does.",
                       expected="a tuple of 2: (block_tables, seq_lens)", got=got)
    tables, lens = result
    if isinstance(tables, np.ndarray) and isinstance(lens, np.ndarray) and tables.ndim == 1 \
            and lens.ndim == 2 and list(tables) == seq_lens:
        raise Mismatch("the tuple holds seq_lens first: block_tables came second",
                       "return (block_tables, seq_lens), in that order, as "
                       "PagedKVCache.block_tables does.", "(block_tables [batch, max_pages], "
                       "seq_lens [batch])", f"(array of shape {tables.shape}, array of shape "
                       f"{lens.shape})")
    if not isinstance(tables, np.ndarray) or tables.dtype != np.int32:
        raise Mismatch("block_tables must be an int32 NumPy array",
                       "kernels read it through an `int*`: np.int32, not Python lists or int64.",
                       "np.ndarray int32", f"{type(tables).__name__} "
                       f"{getattr(tables, 'dtype', '')}")
    if not isinstance(lens, np.ndarray) or lens.dtype != np.int32 or \
            lens.shape != (len(seq_lens),) or list(lens) != seq_lens:
        raise Mismatch("seq_lens", "return the lengths as an int32 array, one per sequence.",
                       repr(np.array(seq_lens, np.int32)), repr(lens))
    need = [-(-n // page_size) for n in seq_lens]
    width = max(need + [1])
    taken = alloc.num_used - len(held)
    if tables.ndim == 2 and min(tables.shape) > 1 and not tables.flags.c_contiguous:
        # right values through NumPy's indexing, but a kernel reads the memory as a flat
        # [batch, max_pages] buffer: block_tables[b * max_pages + p]
        hint = ("kernels read block_tables as a flat buffer, row after row: build the table "
                "as a [batch, max_pages] array (np.ascontiguousarray makes a copy in that "
                "order).")
        if tables.T.flags.c_contiguous:
            # (a view and an array made column after column look alike, the more so once
            # the grader's channel has copied it)
            hint = ("your table is stored column after column: a transposed view (`.T` of a "
                    "[max_pages, batch] array), or an array made with order='F'. NumPy "
                    "indexes it right, but its memory holds page p of sequence b at "
                    "p * batch + b, and a kernel reads block_tables[b * max_pages + p]. Build "
                    "it as [batch, max_pages] in C order, row i for sequence i "
                    "(np.ascontiguousarray makes a copy in that order).")
        raise Mismatch("block_tables' memory order", hint, "a C-contiguous [batch, max_pages] "
                       "array (row after row)", "Fortran order (column after column)"
                       if tables.T.flags.c_contiguous else "a strided view")
    if tables.shape != (len(seq_lens), width):
        raise Mismatch("block_tables shape",
                       width_hint(tables, seq_lens, need, taken, width, page_size),
                       f"{(len(seq_lens), width)}", f"{tables.shape}")
    _expect_rows(tables, seq_lens, page_size, taken, need)
    rows = [tables[i, : need[i]].tolist() for i in range(len(seq_lens))]
    flat = [p for row in rows for p in row]
    if len(set(flat)) != len(flat):
        dup = next(p for p in flat if flat.count(p) > 1)
        owners = [i for i, row in enumerate(rows) if dup in row]
        raise Mismatch(f"page {dup} appears in the rows of sequences {owners}",
                       "each sequence needs its own pages, or the sequences overwrite each "
                       "other's keys and values: take every row's pages from the allocator "
                       "(a page appears in one row only).")
    if not all(0 <= p < num_pages for p in flat):
        raise Mismatch(f"page ids {flat} out of range", "use ids the allocator returned.")
    _expect_own_pages(flat, held, _in_use(alloc) - held)
    pad = next(((i, j) for i in range(len(seq_lens)) for j in range(need[i], tables.shape[1])
                if tables[i, j] != -1), None)
    if pad is not None:
        row, col = pad
        raise Mismatch(f"padding entry block_tables[{row}, {col}] (past row {row}'s "
                       f"{counted(need[row], 'page')})", "fill entries past a sequence's last "
                       "page with -1 (as PagedKVCache does), so a stray read is easy to spot.",
                       "-1", str(tables[row, col]))
    if taken != sum(need):
        raise Mismatch("pages taken from the allocator", "take exactly ceil(len / page_size) "
                       "pages per sequence, from the allocator you were given.",
                       str(sum(need)), str(taken))


def block_tables(fn) -> CheckResult:
    """Check `fn(seq_lens, page_size, allocator) -> (block_tables int32, seq_lens int32)`."""
    rng = case_rng(3)
    random_lens = [int(n) for n in rng.integers(1, 40, size=6)]
    cases = [
        Case("three sequences", {"seq_lens": [5, 9, 1], "page_size": 4},
             lambda: _batch_case(fn, [5, 9, 1], 4)),
        Case("exact multiples and an empty one", {"seq_lens": [8, 0, 4], "page_size": 4},
             lambda: _batch_case(fn, [8, 0, 4], 4)),
        Case("six random lengths", {"seq_lens": random_lens, "page_size": 8},
             lambda: _batch_case(fn, random_lens, 8)),
        Case("page_size 1", {"seq_lens": [3, 2], "page_size": 1},
             lambda: _batch_case(fn, [3, 2], 1)),
        Case("page_size 3, not a power of two", {"seq_lens": [7, 3, 10], "page_size": 3},
             lambda: _batch_case(fn, [7, 3, 10], 3)),
        Case("sequences with no tokens yet", {"seq_lens": [0, 0], "page_size": 4},
             lambda: _batch_case(fn, [0, 0], 4)),
        Case("an empty batch", {"seq_lens": [], "page_size": 4},
             lambda: _batch_case(fn, [], 4)),
    ]
    return run_cases("block_tables", "block_tables_for_batch: one block table per sequence", cases)
