"""Checks for lesson 12: block hashing and prefix lookup (one scheduler step is in
checks_engine_step).

The references are the engine's own rules (`pagedattn_lab.engine.prefix_cache`), restated
here small enough to compare against. Every case is seeded and random: prompt lengths that
are, and are not, page multiples; caches with a gap of one block and with page 0 in the
cached run; one page size that is not a power of two (shifts and masks fail there). A hint is given only when the learner's answer IS what a known mistake produces.
"""
from __future__ import annotations

import numpy as np

from ..engine.prefix_cache import hash_block
from ..validate_kinds import is_int
from ..words import counted
from .compare import FIXED_PAGE_HINT, POW2_HINT, call_on_copies, changed_input, pow2_mixes
from .report import Case, CheckResult, Mismatch, probe, run_cases
from .seeds import case_rng


def _short(h) -> str:
    return h.hex()[:8] if isinstance(h, bytes) else repr(h)


def _show(hashes) -> str:
    return "[" + ", ".join(_short(h) for h in hashes) + "]" if isinstance(hashes, list) \
        else repr(hashes)


# -- task 1: block hashes ------------------------------------------------------------------

def _hashes_from(tokens, starts, length: int, chain: bool = True) -> list:
    """The hashes of the blocks of `length` tokens from each of `starts`, each block's parent
    the hash before it (chain) or None."""
    out, parent = [], None
    for start in starts:
        h = hash_block(parent if chain else None, tokens[start:start + length])
        out.append(h)
        parent = h
    return out


def _reference_hashes(tokens, page_size, chain=True, partial=False, at_numbers=False,
                      width=0):
    """The chain of block hashes, or a mistake's: unchained, with the partial last block,
    (at_numbers) block i sliced from token i, its number, not from i * page_size, or each
    block sliced `width` tokens longer (-1: the slice's end taken as inclusive)."""
    count = -(-len(tokens) // page_size) if partial else len(tokens) // page_size
    starts = [i if at_numbers else i * page_size for i in range(count)]
    return _hashes_from(tokens, starts, page_size + width, chain)


def _prefix_hashes(tokens, page_size: int, chain: bool) -> list:
    """Each full block hashed with every token up to its end, on the block before's hash
    (chain) or on None."""
    out, parent = [], None
    for end in range(page_size, len(tokens) + 1, page_size):
        parent = hash_block(parent if chain else None, tokens[:end])
        out.append(parent)
    return out


def _hashes_from_first(tokens, page_size: int) -> list:
    """A chain whose parent is set once, from block 0: block i > 0 is hashed on block 0's
    hash."""
    first = hash_block(None, tokens[:page_size])
    return [first] + [hash_block(first, tokens[start:start + page_size])
                      for start in range(page_size, len(tokens) - page_size + 1, page_size)]


def _pow2_floors(num_tokens: int, page_size: int) -> set[int]:
    """The full blocks counted with shifts and masks (compare.pow2_mixes): div(n), or
    div(n - mod(n)). Right only for a power-of-two page_size."""
    return {int(count) for div, _, mod, _ in pow2_mixes(page_size)
            for count in (div(num_tokens), div(num_tokens - mod(num_tokens)))}


def _pow2_block_starts(num_tokens: int, page_size: int) -> set[tuple]:
    """The first tokens of the blocks that shifts and masks place: block i at mul(i) for
    each floor of _pow2_floors, or range(0, end, page_size) to end = mul(div(n)) or
    n - mod(n)."""
    mixes, floors = pow2_mixes(page_size), _pow2_floors(num_tokens, page_size)
    numbered = {tuple(mul(i) for i in range(count)) for _, mul, _, _ in mixes
                for count in floors}
    return numbered | {tuple(range(0, end, page_size)) for div, mul, mod, _ in mixes
                       for end in (mul(div(num_tokens)), num_tokens - mod(num_tokens))}


def _pow2_blocks_fit(got: list, tokens, page_size: int) -> bool:
    """`got` has as many hashes as a floor with shifts and masks counts, where that is not
    the number of full blocks (its blocks may hold a second mistake), or is the chain of
    the blocks shifts and masks place."""
    if len(got) != len(tokens) // page_size and \
            len(got) in _pow2_floors(len(tokens), page_size):
        return True
    return any(got == _hashes_from(tokens, starts, page_size)
               for starts in _pow2_block_starts(len(tokens), page_size)
               if len(starts) == len(got))


_NONE_HASHES_HINT = ("a hash is None, the parent of block 0: keep what hash_block returns "
                     "(parent = hash_block(parent, block)) and append that to the list.")


def _hash_case(fn, seed: int, page_size: int, num_tokens: int) -> None:
    rng = case_rng(seed)
    tokens = [int(t) for t in rng.integers(0, 1000, num_tokens)]
    expected = _reference_hashes(tokens, page_size)
    got = call_on_copies("block_hashes", fn, {"token_ids": tokens}, page_size)
    what = f"{num_tokens} tokens, page_size {page_size}"
    if not isinstance(got, (list, tuple)):   # (an array of bytes drops trailing zero bytes)
        raise Mismatch(f"{what}: expected a list of hashes", "return a plain list of the "
                       "bytes hash_block returns, one per full block.", "list",
                       type(got).__name__)
    got = list(got)
    if not all(type(h) is bytes for h in got):   # (a bytes subclass may lie with its ==)
        raise Mismatch(f"{what}: the block hashes differ: they are not bytes",
                       _NONE_HASHES_HINT if None in got else "return the bytes hash_block "
                       "returns, as they are (no str(), hex() or wrapper).",
                       "bytes",
                       repr(sorted({type(h).__name__ for h in got}))[:80])
    if got == expected:
        return
    hint = ""
    if got == _reference_hashes(tokens, page_size, partial=True):
        hint = ("the last block is only partly full: it gets no hash (its page will still be "
                "written, so it cannot be shared). Hash full blocks only.")
    elif got == _reference_hashes(tokens, page_size, chain=False):
        hint = ("each block is hashed on its own: two prompts that differ in block 0 but agree "
                "in block 1 would share block 1, whose K/V depend on block 0. Chain: "
                "hash_block(previous block's hash, tokens), None for the first block.")
    elif got == _reference_hashes(tokens, page_size, chain=False, partial=True):
        hint = ("two mistakes: the trailing partial block is hashed, and blocks are not chained "
                "(pass the previous block's hash as the parent).")
    elif got in (_prefix_hashes(tokens, page_size, chain) for chain in (False, True)):
        hint = ("each block was hashed with all the tokens before it: the chain carries the "
                "prefix, so block i is hash_block(block i-1's hash, its own page_size tokens "
                "only), None for block 0.")
    elif len(got) > 2 and got == _hashes_from_first(tokens, page_size):
        hint = ("every block after block 1 was chained on block 0's hash: the parent is the "
                "hash of the block just before, so update it after each block (parent = the "
                "hash just made).")
    elif got == _reference_hashes(tokens, page_size, at_numbers=True):
        hint = ("block i starts at token i * page_size: the slice token_ids[i:i + page_size] "
                "starts at the block's number, so the blocks overlap; take "
                "token_ids[i * page_size:(i + 1) * page_size].")
    elif page_size > 1 and got == _reference_hashes(tokens, page_size, width=-1):
        hint = (f"each block was hashed from its first {page_size - 1} tokens: a slice's end "
                "is not included, so token_ids[start:start + page_size] already holds the "
                "block's page_size tokens (no - 1).")
    elif got and page_size != 16 and got == _reference_hashes(tokens, 16):
        hint = FIXED_PAGE_HINT.format(n=page_size)
    elif page_size & (page_size - 1) and _pow2_blocks_fit(got, tokens, page_size):
        hint = POW2_HINT.format(name="page_size", n=page_size)
    elif isinstance(got, list) and len(got) != len(expected):
        full = num_tokens // page_size
        hint = (f"{num_tokens} tokens hold {counted(full, 'full block')} of "
                f"{page_size}: one hash per full block.")
    else:   # no known mistake gives this: restate the spec
        hint = ("block i's hash is hash_block(parent, token_ids[i*page_size:(i+1)*page_size]) "
                "as returned (bytes), parent None for block 0 and block i-1's hash after.")
    raise Mismatch(f"{what}: the block hashes differ", hint, _show(expected), _show(got))


def block_hashes(fn) -> CheckResult:
    """Check `fn(token_ids, page_size)`: the chained hashes of the full blocks."""
    sizes = [(4, 12), (4, 13), (16, 15), (16, 16), (8, 41), (1, 5), (32, 100), (6, 40)]
    cases = [Case("random tokens", {"page_size": p, "num_tokens": n},
                  lambda i=i, p=p, n=n: _hash_case(fn, 1200 + i, p, n))
             for i, (p, n) in enumerate(sizes)]
    return run_cases("block_hashes", "block_hashes: chained hashes of full blocks", cases)


# -- task 2: the cached prefix ---------------------------------------------------------------

def _reference_prefix(hashes, cached, num_tokens, page_size, stop_at_miss=True, cap=True,
                      page0_is_page=True):
    pages = []
    for h in hashes:
        if h in cached and (page0_is_page or cached[h]):
            pages.append(cached[h])
        elif stop_at_miss:
            break
    computed = len(pages) * page_size
    return pages, (min(computed, num_tokens - 1) if cap else computed)


def _trailing_run(hashes, cached) -> list:
    """The pages of the longest run of cached blocks that ends at the prompt's last block."""
    run = []
    for h in reversed(hashes):
        if h not in cached:
            break
        run.append(cached[h])
    return run[::-1]


def _right_without_page_0(fn, hashes, cached, num_tokens, page_size) -> bool:
    """The learner's lookup is right once page 0 is renumbered to a page no other block
    holds: then page 0 alone (its number's truth value) emptied its result; a lookup that
    found nothing for another reason finds nothing here too."""
    spare = max(cached.values()) + 1
    renumbered = {h: spare if page == 0 else page for h, page in cached.items()}
    got = probe(fn, list(hashes), dict(renumbered), num_tokens, page_size)
    expected = _reference_prefix(hashes, renumbered, num_tokens, page_size)
    try:
        return got is not None and (list(got[0]), int(got[1])) == expected
    except (TypeError, ValueError, IndexError, KeyError):   # a probe's odd return proves nothing
        return False


def _prefix_case(fn, seed: int, page_size: int, num_tokens: int, pattern: str) -> None:
    rng = case_rng(seed)
    hashes = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in
              range(num_tokens // page_size)]
    if pattern in ("all", "none"):
        hit = len(hashes) if pattern == "all" else 0
    else:   # a gap leaves at least one cached block after the missing one
        hit = int(rng.integers(1, len(hashes) - (pattern == "gap")))
    pages = rng.choice(np.arange(1, 200), hit, replace=False)
    if hit:   # page 0 is a page like any other (and falsy); neither first nor last where
        pages[rng.integers(1, hit - 1) if hit > 2 else 0] = 0   # it can (a shorter run)
    cached = {h: int(p) for h, p in zip(hashes[:hit], pages)}
    if pattern == "gap":   # one block missing, every later one cached: past the first miss
        cached.update({h: 500 + i for i, h in enumerate(hashes[hit + 1:])})
    for _ in range(5):   # other prompts' blocks
        cached[bytes(rng.integers(0, 256, 32, dtype=np.uint8))] = int(rng.integers(200, 400))
    expected = _reference_prefix(hashes, cached, num_tokens, page_size)
    snapshot = dict(cached)
    passed = list(hashes)
    got = fn(passed, cached, num_tokens, page_size)
    what = (f"a {num_tokens}-token prompt ({counted(len(hashes), 'full block')} of "
            f"{page_size}), {pattern} cached")
    if cached != snapshot:
        raise Mismatch(f"{what}: the cache was changed", "a lookup only reads `cached`; the "
                       "engine takes the pages (touch) after it decides to admit.")
    changed = changed_input("cached_prefix", {"hashes": hashes}, {"hashes": passed})
    if changed:
        raise changed
    # a list of the two unpacks as the tuple does: `pages, num_computed = ...` works the same
    if not (isinstance(got, (tuple, list)) and len(got) == 2
            and isinstance(got[0], (list, tuple)) and is_int(got[1])):
        raise Mismatch(f"{what}: expected a pair (pages, num_computed)", "return pages, "
                       "num_computed: a list of pages and an int.", "(list, int)", repr(got))
    pages = list(got[0])
    if not all(p is None or is_int(p) for p in pages):
        hashed = pages and all(isinstance(p, bytes) and p in hashes for p in pages)
        raise Mismatch(f"{what}: expected a list of page ids (ints)", "those are the blocks' "
                       "hashes, the keys of `cached`: append the page each one maps to, "
                       "cached[h]." if hashed else "return pages, num_computed: a list of "
                       "pages and an int.", "(list, int)", repr(got)[:200])
    # plain ints: an int subclass (or an object) may lie with its ==
    got = ([None if p is None else int(p) for p in pages], int(got[1]))
    if got[0] == expected[0] and got[1] == expected[1]:
        return
    hint = ""
    if got == _reference_prefix(hashes, cached, num_tokens, page_size, stop_at_miss=False):
        hint = ("the lookup went on past the first block not in the cache: a block's K/V are "
                "only valid after ALL the blocks before it, so the prefix stops at the first "
                "miss.")
    elif got[0] and got == _reference_prefix(hashes, cached, num_tokens, page_size,
                                             page0_is_page=False):
        hint = ("the lookup stopped at page 0 as if it were a miss: page 0 is a page like any "
                "other. Test `h in cached` (or `is None`), not the page number's truth value.")
    elif not got[0] and expected[0][:1] == [0] and \
            _right_without_page_0(fn, hashes, snapshot, num_tokens, page_size):
        hint = ("no pages, though block 0 is cached, at page 0: a lookup that tests the page "
                "number's truth value stops there as if it were a miss. Test `h in cached` (or "
                "`is None`).")
    elif not got[0] and expected[0]:
        hint = ("no pages, though block 0 is cached: the run starts at hashes[0] and goes "
                "forward, block by block, to the first hash not in `cached`.")
    elif got == _reference_prefix(hashes, cached, num_tokens, page_size, cap=False):
        hint = ("every token of this prompt is cached, but the last one must still be computed: "
                "its logits give the first output token. num_computed is at most "
                "num_tokens - 1.")
    elif got[0] == expected[0] and page_size & (page_size - 1) and got[1] == min(
            len(got[0]) << (page_size.bit_length() - 1), num_tokens - 1):
        hint = POW2_HINT.format(name="page_size", n=page_size)
    elif got[0] == expected[0] and expected[1] == num_tokens - 1 and \
            got[1] == (len(got[0]) - 1) * page_size:
        hint = ("on a full hit only the prompt's last token must be computed: num_computed = "
                "num_tokens - 1, not a whole page less (the last page's other tokens are "
                "cached too).")
    elif got[0] == expected[0] and \
            got[1] == min(len(got[0]) * page_size, num_tokens - page_size):
        hint = ("the cap is num_tokens - 1: only the prompt's last token must still be "
                "computed (its logits give the first output token), not its last page: "
                "min(len(pages) * page_size, num_tokens - 1), not num_tokens - page_size.")
    elif got[0] == expected[0] and got[1] == min(len(got[0]) * page_size, num_tokens) - 1:
        hint = ("the pages are right, but num_computed is one short: the cap num_tokens - 1 "
                "bites only when every token is in a cached block; min(len(pages) * "
                "page_size, num_tokens - 1), not min(len(pages) * page_size, num_tokens) - 1.")
    elif got[0] == expected[0] and got[1] == len(got[0]):
        hint = "num_computed counts tokens, not blocks: len(pages) * page_size (capped)."
    elif got[0] == expected[0]:
        hint = "the pages are right; num_computed = min(len(pages) * page_size, num_tokens - 1)."
    elif got[0] and got[0] == _trailing_run(hashes, snapshot):
        hint = ("these are the pages of the cached run at the END of the prompt: a block's K/V "
                "are only valid on top of every block before it, so the run starts at "
                "hashes[0] and stops at the first miss.")
    elif got[0] == [snapshot.get(h) for h in hashes]:
        hint = "a block not in the cache has no page: stop at the first miss."
    else:   # no known mistake gives this: restate the spec
        hint = ("pages: cached[hashes[0]], cached[hashes[1]], ... for as long as the hashes "
                "are in `cached`; every cached block of the run counts, even on a full hit.")
    raise Mismatch(f"{what}: the prefix differs", hint, f"pages {expected[0]}, computed "
                   f"{expected[1]}", f"pages {got[0]}, computed {got[1]}")


def cached_prefix(fn) -> CheckResult:
    """Check `fn(hashes, cached, num_tokens, page_size)`: (pages, tokens needing no compute)."""
    specs = [(4, 14, "part"), (4, 16, "all"), (8, 29, "all"), (4, 13, "none"),
             (16, 70, "gap"), (4, 20, "part"), (2, 12, "all"), (6, 40, "part")]
    cases = [Case("random hashes", {"page_size": p, "num_tokens": n, "cached": pat},
                  lambda i=i, p=p, n=n, pat=pat: _prefix_case(fn, 1210 + i, p, n, pat))
             for i, (p, n, pat) in enumerate(specs)]
    return run_cases("cached_prefix", "cached_prefix: the longest cached run of full blocks",
                     cases)
