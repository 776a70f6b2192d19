"""Prefix caching (vLLM v1's scheme): pages named by the tokens they hold, kept until needed.

Every full block of a sequence gets a hash that covers the block's tokens AND everything
before it, by chaining:

    hash(block i) = H(hash(block i-1), token ids of block i)        (block -1: empty)

So two requests share block i exactly when their first (i+1) * page_size tokens are equal,
and a prompt's cached prefix is found by hashing its blocks in order until one is unknown.
H is SHA-256: a collision would silently serve another prompt's K/V, so a cryptographic hash
is worth its cost (vLLM offers the same choice). A cached page also keeps its block's token
ids, and a lookup hits only when they are the block's (nano-vllm's check): two different
blocks under one hash are a miss, never another prompt's page. (Equal blocks after parents
that differ under one hash are not caught: parents are compared as hashes only.)

`BlockPool` holds the pages: a reference count per page (how many running requests hold
it), the table hash -> page of cached pages, and a free queue in LRU order. A page whose
count drops to 0 goes to the BACK of the free queue but keeps its hash: a later request
with the same prefix can still take it back ("touch"). Allocation takes pages from the
FRONT, the least recently freed, and only then forgets (evicts) their hash. Free pages are
thus an LRU cache of prefixes that costs no memory: they are free the moment anyone needs
them.

`begin` / `rollback` undo everything done to the pool since `begin` (a step that failed):
the first change of each page records what the page was (count, hash and tokens, place in
the free queue), so the cost is in proportion to the pages a step touches, not to the pool.
`atomic` does the same for one call of the KV cache manager, inside a step or outside one.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from operator import itemgetter

import numpy as np

from ..paging import OutOfPagesError, check_owners, check_page_id, check_page_ids
from ..validate import MAX_PAGES, check_int, check_int_list
from ..validate_kinds import is_int
from ..validate_memory import check_memory

# A pool page costs ~144 bytes of Python objects from the start (its count, hash and tokens
# entries, its free-queue entry; measured with tracemalloc over 2^20 pages): unlike the
# allocator's, this pool is built whole, and 10^9 pages got the process killed, no error.
POOL_BYTES_PER_PAGE = 150
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1   # the token ids a hash takes (8 bytes each)


def hash_block(parent: bytes | None, token_ids) -> bytes:
    """The chained hash of one full block: SHA-256 of the parent's hash and the token ids.
    Refused by name: a parent not a hash, token ids not integers (1.5 was hashed as 1, a
    prefix hit on another prompt's block; so was True among ints) or past int64 (2**63 was
    hashed as -2**63)."""
    if parent is not None and not isinstance(parent, bytes):
        raise TypeError(f"parent: expected the bytes hash_block returns (or None for block "
                        f"0), got {type(parent).__name__}")
    ids = np.asarray(token_ids)
    if ids.dtype.kind in "iu":
        _refuse_bools(token_ids)
    if ids.ndim == 1 and ids.dtype.kind == "u" and ids.dtype.itemsize == 8:
        past = np.flatnonzero(ids > INT64_MAX)   # (at array speed: this runs for every block)
        if past.size:
            int64_token(int(ids[past[0]]), f"token_ids[{int(past[0])}]")
    # NumPy holds a list with an int past int64 as object or float64 (a uint64 array: above)
    wide = ids.ndim == 1 and ids.dtype.kind in "Of" and all(is_int(t) for t in token_ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu" and not wide):
        raise TypeError(f"token_ids: expected a list of integer token ids, got "
                        f"{ids.dtype.name} values of shape {ids.shape}")
    if wide:
        ids = np.array([int64_token(t, f"token_ids[{i}]") for i, t in enumerate(token_ids)],
                       np.int64)
    h = hashlib.sha256(parent or b"")
    h.update(ids.astype(np.int64).tobytes())
    return h.digest()


def _refuse_bools(token_ids) -> None:
    """A bool among the ints of a list: NumPy makes [3, True] the int64 array [3, 1] (bools
    alone make a bool array, refused by its dtype)."""
    if isinstance(token_ids, (list, tuple)):
        for i, token in enumerate(token_ids):
            if isinstance(token, (bool, np.bool_)):
                raise TypeError(f"token_ids[{i}]: expected an integer token id, got "
                                f"{token!r} (bool)")


def int64_token(token, where: str) -> int:
    """A token id as an int, refused past int64 naming `where` (its argument and index): the
    one check of every id the prefix cache may hash (hash_block, Scheduler.add)."""
    if not INT64_MIN <= token <= INT64_MAX:
        raise ValueError(f"{where}: expected a token id that fits int64 (the hash reads 8 "
                         f"bytes a token), got {int(token)}")
    return int(token)


def block_hashes(token_ids, page_size: int, parent: bytes | None = None) -> list[bytes]:
    """The hashes of every full block of `token_ids` (a trailing partial block has none)."""
    page_size = check_int(page_size, "page_size", minimum=1)   # (-1 gave [], 0 a range error)
    # every id checked here, named by its index in token_ids (hash_block names its index in
    # the block); a set or a NumPy scalar failed in slicing, naming nothing
    ids = [int64_token(t, f"token_ids[{i}]")
           for i, t in enumerate(check_int_list(token_ids, "token_ids", "token id"))]
    out = []
    for start in range(0, len(ids) - page_size + 1, page_size):
        parent = hash_block(parent, ids[start:start + page_size])
        out.append(parent)
    return out


def _check_hash(block_hash) -> None:
    if not isinstance(block_hash, bytes):
        raise TypeError(f"block_hash: expected the bytes hash_block returns, got "
                        f"{type(block_hash).__name__}")


class BlockPool:
    """Pages with reference counts, a hash -> page table, and an LRU free queue.

    A page is held (count >= 1), free with a cached block, or free and empty; a call that
    takes or offers a page (`touch`, `register`, `is_shared_or_cached`) refuses an empty free
    one, which holds nothing a request computed."""

    def __init__(self, num_pages: int):
        # (a negative count made a pool with num_used < 0; a bool, a pool of one page)
        self.num_pages = num_pages = check_int(num_pages, "num_pages", minimum=1,
                                               maximum=MAX_PAGES)
        check_memory(num_pages * POOL_BYTES_PER_PAGE, "cpu", "num_pages",
                     f"the bookkeeping of a pool of {num_pages} pages")
        self.ref_cnt = [0] * num_pages
        self.page_hash: list[bytes | None] = [None] * num_pages
        self.page_tokens: list[tuple | None] = [None] * num_pages   # while it has a hash
        self.cached: dict[bytes, int] = {}
        # Ordered from least to most recently freed; O(1) removal from the middle (a hit).
        # Each page's value is a stamp that grows with every free, so `rollback` can put a
        # page taken from the middle back in its place by sorting.
        self.free_queue: OrderedDict[int, int] = OrderedDict((p, p) for p in range(num_pages))
        self._stamp = num_pages
        self.evictions = 0
        self._undo: dict[int, tuple] | None = None   # page -> (count, hash, tokens, stamp)
        self._allocated: list[int] = []              # pages handed out since begin
        self._evictions_at_begin = 0

    @property
    def num_free(self) -> int:
        """Pages nobody holds: really free, or cached and evictable."""
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self.free_queue)

    @property
    def num_cached_free(self) -> int:
        """Free pages that still hold a cached prefix (reusable until evicted)."""
        return sum(1 for p in self.free_queue if self.page_hash[p] is not None)

    def lookup(self, block_hash: bytes, token_ids) -> int | None:
        """The cached page of this block, if it holds exactly these tokens (else None).
        Refused by name, as `register` refuses them: a hash not bytes (a str missed
        silently), token ids not ints (2.0 and True equal 2 and 1: a hit)."""
        _check_hash(block_hash)
        tokens = tuple(check_int_list(token_ids, "token_ids", "token id"))
        page = self.cached.get(block_hash)
        if page is None or self.page_tokens[page] != tokens:
            return None
        return page

    def allocate(self, n: int) -> list[int]:
        """Take n pages from the front of the free queue, evicting the hashes they held.
        All or nothing: OutOfPagesError changes nothing."""
        n = check_int(n, "n", minimum=0)
        if n > len(self.free_queue):
            raise OutOfPagesError(n, len(self.free_queue), self.num_pages)
        pages = []
        for _ in range(n):
            page = next(iter(self.free_queue))
            self._save(page)
            del self.free_queue[page]
            if self.page_hash[page] is not None:
                del self.cached[self.page_hash[page]]
                self.page_hash[page] = self.page_tokens[page] = None
                self.evictions += 1
            self.ref_cnt[page] = 1
            pages.append(page)
        if self._undo is not None:
            self._allocated += pages
        return pages

    def touch(self, pages) -> None:
        """A request takes cached pages (a prefix hit): one more owner each; a free one
        leaves the free queue, so it cannot be evicted while held. All or nothing: a free
        page that caches no block holds nothing to reuse, and is refused before any count
        changes."""
        pages = self._page_ids(pages)
        for i, page in enumerate(pages):
            self._refuse_free_uncached(page, f"pages[{i}]", "a prefix hit takes a page a "
                                       "request holds or a cached one (what lookup returns)")
        for page in pages:
            self._save(page)
            if self.ref_cnt[page] == 0:
                del self.free_queue[page]
            self.ref_cnt[page] += 1

    def free(self, pages) -> None:
        """Drop one owner of each page; at zero the page joins the back of the free queue
        (in the order given: pass a request's pages tail first, so its last blocks, the
        least likely to be shared, are evicted first). All or nothing: a page already free,
        or listed more times than it has owners, raises before any count changes."""
        pages = self._page_ids(pages)
        check_owners(pages, lambda page: self.ref_cnt[page])
        for page in pages:
            self._save(page)
            self.ref_cnt[page] -= 1
            if self.ref_cnt[page] == 0:
                self.free_queue[page] = self._stamp
                self._stamp += 1

    def _page_ids(self, pages) -> list[int]:
        """Page ids as ints in 0..num_pages-1 (a negative one would index from the end)."""
        ids = check_int_list(pages, "pages", "page id")
        check_page_ids(ids, "pages", self.num_pages, "pool")
        return ids

    def _refuse_free_uncached(self, page: int, name: str, advice: str) -> None:
        """Refuse, naming `name`, a page nobody holds that caches no block: no request
        computed what it holds, and `allocate` may hand it out at any time."""
        if self.ref_cnt[page] == 0 and self.page_hash[page] is None:
            raise ValueError(f"{name}: page {page} is free and caches no block; {advice}")

    def _page_id(self, page) -> int:
        """One page id in 0..num_pages-1 (a negative one would index from the end)."""
        page = check_int(page, "page")
        check_page_id(page, "page", self.num_pages, "pool")
        return page

    def register(self, page: int, block_hash: bytes, token_ids) -> bool:
        """Offer a full, computed page holding `token_ids` to the cache under `block_hash`.
        A hash already cached (another request computed the same block at the same time)
        keeps its page; this one stays private. Returns whether the page is now cached.
        A free page that caches nothing is refused: it holds no computed block, yet a lookup
        would hand it out as this one."""
        page = self._page_id(page)   # -1 would cache the last page under -1, an id handed out
        _check_hash(block_hash)
        tokens = tuple(check_int_list(token_ids, "token_ids", "token id"))
        self._refuse_free_uncached(page, "page", "only a page a request holds, its block "
                                   "computed, is offered to the cache")
        if block_hash in self.cached or self.page_hash[page] is not None:
            return False
        self._save(page)
        self.cached[block_hash] = page
        self.page_hash[page], self.page_tokens[page] = block_hash, tokens
        return True

    # -- undoing a failed step ----------------------------------------------------------

    def begin(self) -> None:
        """Record, from now on, what each page was before its first change (see rollback)."""
        self._undo, self._allocated, self._evictions_at_begin = {}, [], self.evictions

    def commit(self) -> None:
        """Keep the changes since `begin`; stop recording."""
        self._undo, self._allocated = None, []

    def _save(self, page: int) -> None:
        if self._undo is not None and page not in self._undo:
            self._undo[page] = (self.ref_cnt[page], self.page_hash[page],
                                self.page_tokens[page], self.free_queue.get(page))

    @contextmanager
    def atomic(self):
        """All or nothing for one larger call (a request's admission, a swap-in): if the body
        raises, every page is put back as it was before it (`rollback`), but the pages it
        took from the free queue forget their prefix (a copy into them may have begun). In a
        step (after `begin`) the step's record goes on, with what the body changed, failed
        or not: the step's rollback forgets the pages it wrote into too."""
        outer = (self._undo, self._allocated, self._evictions_at_begin)
        self.begin()
        try:
            yield
        except BaseException:
            undo = self._undo   # (the step's rollback puts these pages back, then forgets)
            written = self.rollback()
            self._resume(outer, undo, written)
            self.forget(written)
            raise
        self._resume(outer, self._undo, self._allocated)

    def _resume(self, outer: tuple, undo: dict, allocated: list[int]) -> None:
        """Back to the record of the step around an `atomic` call (or to none), adding what
        the call changed: the step's record of a page, older, stays."""
        self._undo, self._allocated, self._evictions_at_begin = outer
        if self._undo is not None:
            for page, saved in undo.items():
                self._undo.setdefault(page, saved)
            self._allocated += allocated

    def rollback(self) -> list[int]:
        """Every page's count, hash and place in the free queue back as they were at `begin`;
        returns the pages handed out since then: their contents may have been overwritten
        (a copy, a swap-in, the forward's writes), so any hash they get back is a lie until
        `forget` drops it."""
        if self._undo is None:
            raise RuntimeError("rollback: nothing to roll back (no begin() since the last "
                               "commit or rollback)")
        undo, allocated = self._undo, self._allocated
        self.commit()
        for page in undo:   # every hash first: a hash may have moved between two pages
            if self.page_hash[page] is not None:
                del self.cached[self.page_hash[page]]
        for page, (count, block_hash, tokens, stamp) in undo.items():
            self.ref_cnt[page], self.page_hash[page], self.page_tokens[page] = (
                count, block_hash, tokens)
            if block_hash is not None:
                self.cached[block_hash] = page
            self.free_queue.pop(page, None)
            if stamp is not None:
                self.free_queue[page] = stamp
        order = sorted(self.free_queue.items(), key=itemgetter(1))
        self.free_queue.clear()
        self.free_queue.update(order)
        self.evictions = self._evictions_at_begin
        return allocated

    def forget(self, pages) -> None:
        """Drop the cached hash of each page listed (its contents no longer match it)."""
        for page in self._page_ids(pages):   # (all checked first: -1 would be the last page)
            block_hash = self.page_hash[page]
            if block_hash is not None:
                self._save(page)
                del self.cached[block_hash]
                self.page_hash[page] = self.page_tokens[page] = None
                self.evictions += 1

    def is_shared_or_cached(self, page: int) -> bool:
        """Writing into such a page would change what another request, or a future prefix
        hit, reads: it must be copied first (copy on write). A free page that caches nothing
        is refused: no request writes into a page it does not hold."""
        page = self._page_id(page)
        self._refuse_free_uncached(page, "page", "a request writes only into its own pages "
                                   "(or copies a cached one first)")
        return self.ref_cnt[page] > 1 or self.page_hash[page] is not None

    def check_invariants(self) -> None:
        """Assert the pool's bookkeeping is self-consistent (the tests call it)."""
        for page in range(self.num_pages):
            assert self.ref_cnt[page] >= 0, f"page {page}: negative ref count"
            assert (self.ref_cnt[page] == 0) == (page in self.free_queue), (
                f"page {page}: ref count {self.ref_cnt[page]} but "
                f"{'in' if page in self.free_queue else 'not in'} the free queue")
        for block_hash, page in self.cached.items():
            assert self.page_hash[page] == block_hash, f"page {page}: hash table disagrees"
        for page in range(self.num_pages):
            assert (self.page_hash[page] is None) == (self.page_tokens[page] is None), (
                f"page {page}: a hash without its tokens, or tokens without a hash")
        assert sum(h is not None for h in self.page_hash) == len(self.cached)

    def __repr__(self) -> str:
        return (f"BlockPool(pages={self.num_pages}, used={self.num_used}, free={self.num_free} "
                f"of which cached={self.num_cached_free}, evictions={self.evictions})")
