"""Check for lesson 07's first task: how many new pages one more token of a sequence takes.

A token takes a page when the sequence's last page is full (seq_len % page_size == 0, an
empty sequence included), or when that last page is shared with a fork (copy on write);
nothing else matters: not earlier shared pages, not how many pages the pool has free. The
answer only counts: the check fails an answer that changes the cache. One page size is not
a power of two, where `seq_len & (page_size - 1)` is not seq_len % page_size; either mask,
or a 16 written in for page_size, is named once the answer is asked again about sequences of
1..48 tokens.
"""
from __future__ import annotations

import numpy as np

from ..cache import PagedKVCache
from ..words import counted
from .compare import FIXED_PAGE_HINT, POW2_HINT, pow2_mod
from .report import Case, CheckResult, Mismatch, as_int, probe, run_cases
from .seeds import case_rng


def _next_page_story(cache, page_size: int, tokens) -> list[tuple[int, str]]:
    """Sequences around every page boundary, and forks before and after a copy on write."""
    story = []
    for n in (1, page_size - 1, page_size, page_size + 1, 2 * page_size, 3 * page_size - 1):
        sid = cache.add_sequence()
        cache.append(sid, tokens(n), tokens(n))
        story.append((sid, f"a sequence of {counted(n, 'token')}"))
    parent = cache.add_sequence()
    cache.append(parent, tokens(page_size + 2), tokens(page_size + 2))
    child = cache.fork_sequence(parent)
    story += [(parent, f"a sequence of {page_size + 2} tokens whose pages a fork shares"),
              (child, f"its fork ({page_size + 2} tokens, last page shared and partly filled)")]
    full_parent = cache.add_sequence()
    cache.append(full_parent, tokens(2 * page_size), tokens(2 * page_size))
    full_child = cache.fork_sequence(full_parent)
    story.append((full_child, f"a fork of a {2 * page_size}-token sequence (last page shared, "
                              "full)"))
    # After one token the fork owns a private copy of its tail; its first pages are still
    # shared, and the parent's tail has one owner again.
    source = cache.add_sequence()
    cache.append(source, tokens(2 * page_size + 1), tokens(2 * page_size + 1))
    fork = cache.fork_sequence(source)
    cache.append(fork, tokens(1), tokens(1))
    story += [(fork, f"a fork that wrote one token after the fork ({2 * page_size + 2} "
                     "tokens: first pages shared, its last page a private copy)"),
              (source, f"the sequence it forked from ({2 * page_size + 1} tokens: first pages "
                       "shared, its last page its own again)"),
              (cache.add_sequence(), "a new sequence with no tokens (and no pages)")]
    return story


def _next_page_case(fn, page_size: int) -> None:
    rng = case_rng(page_size)
    cache = PagedKVCache(60, page_size, 1, 4, device="cpu")

    def tokens(n):
        return rng.standard_normal((n, 1, 4)).astype(np.float32)

    story = _next_page_story(cache, page_size, tokens)
    for sid, what in story:
        _next_page_answer(fn, cache, sid, what, page_size, drained=False)
    # The answer is what the token takes, not what the pool can give: the same with no page free.
    cache.allocator.allocate(cache.allocator.num_free)
    for sid, what in story:
        _next_page_answer(fn, cache, sid, what + ", the pool empty", page_size, drained=True)


def _next_page_answer(fn, cache, sid, what: str, page_size: int, drained: bool) -> None:
    n = cache.seq_len(sid)
    table = cache.block_table(sid)
    last_shared = n % page_size != 0 and cache.allocator.ref_count(table[-1]) > 1
    expected = 1 if (n % page_size == 0 or last_shared) else 0
    before = _cache_state(cache)
    try:
        got = fn(cache, sid)
    except IndexError as exc:
        if n:
            raise
        raise Mismatch(f"{what}: raised IndexError: {exc}", "a sequence with no tokens has "
                       "no pages, so block_table(seq_id)[-1] does not exist: test "
                       "seq_len % page_size == 0 (true for 0) first.") from None
    after = _cache_state(cache)
    if after != before:
        raise Mismatch(f"{what}: pages_for_next_token changed the cache",
                       "it only counts: read seq_len, block_table and ref_count. Allocating, "
                       "appending or freeing there changes the cache for good (a page taken "
                       "to look at it is never given back).", _state_shown(before),
                       _state_shown(after))
    if isinstance(got, (bool, np.bool_)):   # a yes/no is the count here: 0 or 1 page
        got = int(got)
    got = as_int(got, what, expected,
                 "return the number of new pages the token needs, 0 or 1, as an int.")
    if got is None:   # (no count to compare: a hint about the count would blame a guess)
        raise Mismatch(f"{what}: pages_for_next_token returned None", "return the count, 0 "
                       "or 1, as an int (a `return` is missing?).", str(expected), "None")
    if got == expected:
        return
    any_shared = any(cache.allocator.ref_count(p) > 1 for p in table)
    masked = pow2_mod(n, page_size) != 0 and cache.allocator.ref_count(table[-1]) > 1 \
        or pow2_mod(n, page_size) == 0
    # (with the pool drained, the same state had its right answer with pages free: a
    # shifted answer does not depend on the pool)
    rule = _fullness_rule(fn, page_size) if not drained and got == int(
        masked if page_size & (page_size - 1) else (n % 16 == 0 or last_shared)) else None
    if rule == "mask":
        hint = POW2_HINT.format(name="page_size", n=page_size)
    elif rule == "16":
        hint = FIXED_PAGE_HINT.format(n=page_size)
    elif drained and got == 0:
        hint = ("no page is free here, and the token still needs one: count the pages the "
                "token takes, whatever the pool holds (the decode step compares that count "
                "with num_free and raises OutOfPagesError).")
    elif last_shared and got == 0:
        hint = ("the last page is shared with another sequence (ref_count > 1): writing into "
                "it would change the other sequence's tokens, so the next token needs a "
                "private copy of that page (copy on write): one new page.")
    elif last_shared and got > 1:
        hint = ("the last page is shared, so the token takes one page: the private copy of "
                "that page (copy on write), which still has room for the token; not a copy "
                "and a new page besides.")
    elif n == 0:
        hint = "a sequence with no tokens has no page yet: its first token takes one."
    elif n % page_size == 0 and got == 2:
        hint = ("the last page is full, so the token goes to a new page: one page. A full "
                "page is never written again, so sharing it takes no copy.")
    elif n % page_size == 0:
        hint = ("the last page is full (seq_len % page_size == 0): the next token needs a "
                "new page.")
    elif any_shared and got == 1:
        hint = ("only the page the token is written into matters: the last one. Here "
                "earlier pages are shared but the last page has one owner, so the token "
                "goes there: no new page.")
    elif page_size - n % page_size == 1:
        hint = "the last page still has 1 free slot: no new page (unless it is shared)."
    else:   # (not the slot before a page boundary: more than off by one)
        hint = (f"the last page still has {page_size - n % page_size} free slots, and its "
                "ref_count is 1: this sequence alone holds it (a page is shared when "
                "ref_count > 1), so the token goes there: no new page.")
    raise Mismatch(f"{what} (page_size {page_size})", hint, str(expected), repr(got))


def _fullness_rule(fn, page_size: int) -> str | None:
    """"mask" or "16" when `fn`, asked again about sequences of 1..48 tokens that share no
    page, finds the last page full exactly where seq_len & (page_size - 1) == 0, or where
    seq_len % 16 == 0 (a page size written into the code); else None."""
    lengths = range(1, 49)
    cache = PagedKVCache(sum(-(-n // page_size) for n in lengths), page_size, 1, 1,
                         device="cpu")
    answers = []
    for n in lengths:
        sid = cache.add_sequence()
        cache.append(sid, np.zeros((n, 1, 1), np.float32), np.zeros((n, 1, 1), np.float32))
        answers.append(probe(fn, cache, sid))
    rules = {"mask": [int(pow2_mod(n, page_size) == 0) for n in lengths],
             "16": [int(n % 16 == 0) for n in lengths]}
    right = [int(n % page_size == 0) for n in lengths]
    return next((name for name, want in rules.items() if want != right and answers == want),
                None)


def _cache_state(cache) -> tuple:
    """(free pages, each sequence's length and table, the ref count of each page in them)."""
    tables = {sid: (cache.seq_len(sid), tuple(cache.block_table(sid))) for sid in cache.seq_ids}
    pages = sorted({p for _, table in tables.values() for p in table})
    return (cache.allocator.num_free, tables,
            tuple(cache.allocator.ref_count(p) for p in pages))


def _state_shown(state) -> str:
    free, tables, _ = state
    return f"{free} pages free, {len(tables)} sequences, lengths " \
           f"{[n for n, _ in tables.values()]}"


def pages_for_next_token(fn) -> CheckResult:
    """Check `fn(cache, seq_id)`: pages one more token of that sequence takes (0 or 1)."""
    cases = [Case("lengths around page boundaries, and forks", {"page_size": p},
                  lambda p=p: _next_page_case(fn, p)) for p in (4, 16, 6)]
    return run_cases("pages_for_next_token", "pages_for_next_token: when a token takes a page",
                     cases)
