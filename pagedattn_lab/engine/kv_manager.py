"""Pages per request: allocation, prefix hits, copy on write, swapping (vLLM's KV cache manager).

The scheduler decides WHO runs and how many tokens; this module decides WHERE their K/V go.
Every operation that can fail is priced first (`admission_cost`, `growth_cost`) and then
done all at once, so a request never holds half of what it asked for. One that fails halfway
all the same (a copy interrupted, memory out) is undone (`_atomic`): the request, the
counters and every page, its place in the LRU free queue and its cached prefix included, are
as before the call, inside a step or outside one; only the pages it took from the free queue
forget their prefix, since a copy into them may have begun.

Copy on write: a page that another request holds, or that the prefix cache offers to future
requests, is never written into. Writing a token there first copies the page to a fresh one
that only this request holds. It happens when a prompt is ENTIRELY a cached prefix: the last
prompt token must still be run through the model to get the logits of the first output
token, and its K/V slot lies in a cached page (with pages of one token, that page holds
nothing else: it is not taken, so not copied). (nano-vllm crashed on this case: with every
token cached there was nothing left to compute.)
"""
from __future__ import annotations

from contextlib import contextmanager

from ..paging import BlockAllocator, check_page_ids
from ..validate import check_bool, check_int, check_int_list
from .prefix_cache import BlockPool, hash_block
from .request import Request, empty_prompt_error


def _pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


class KVCacheManager:
    """Device pages (a `BlockPool`), host pages for swapping, and the prefix cache's use."""

    def __init__(self, num_pages: int, page_size: int, *, enable_caching: bool = True,
                 num_host_pages: int = 0, store=None):
        self.pool = BlockPool(num_pages)
        # (page_size 0 divided by zero at the first request; "no" turned caching on; a bad
        # num_host_pages was refused as BlockAllocator's num_pages)
        self.page_size = check_int(page_size, "page_size", minimum=1)
        self.enable_caching = check_bool(enable_caching, "enable_caching")
        num_host_pages = check_int(num_host_pages, "num_host_pages", minimum=0)
        self.host = BlockAllocator(num_host_pages) if num_host_pages else None
        self.store = store            # a KVStore; None for bookkeeping-only use (tests)
        self.query_tokens = 0         # tokens looked up in the prefix cache at admissions
        self.hit_tokens = 0           # ... of which found there
        self.cow_copies = 0
        self._counts = self._host_state = None   # at `begin`, for `rollback`

    # -- undoing a failed step (the scheduler's begin / commit / rollback) -----------------

    def begin(self) -> None:
        self.pool.begin()
        self._counts, self._host_state = (self.query_tokens, self.hit_tokens,
                                          self.cow_copies), None

    def commit(self) -> None:
        self.pool.commit()
        self._counts = self._host_state = None

    def _save_host(self) -> None:
        if self._counts is not None and self._host_state is None:
            self._host_state = self.host.state()

    def rollback(self) -> list[int]:
        """The pool, the host pages and the counters as at `begin`; returns the device pages
        handed out since (BlockPool.rollback)."""
        if self._counts is None:
            raise RuntimeError("rollback: nothing to roll back (no begin() since the last "
                               "commit or rollback)")
        (self.query_tokens, self.hit_tokens, self.cow_copies), self._counts = self._counts, None
        if self._host_state is not None:
            self.host.restore(self._host_state)
            self._host_state = None
        return self.pool.rollback()

    @contextmanager
    def _atomic(self, req: Request):
        """All or nothing for one call about `req`: if the body raises, the request, the
        counters and the pool are put back (BlockPool.atomic)."""
        saved, counts = req.save(), (self.query_tokens, self.hit_tokens, self.cow_copies)
        try:
            with self.pool.atomic():
                yield
        except BaseException:
            req.restore(saved)
            self.query_tokens, self.hit_tokens, self.cow_copies = counts
            raise

    # -- the prefix cache ---------------------------------------------------------------

    def block_tokens(self, req: Request, i: int) -> list[int]:
        """The token ids of the request's block i (those of its page i)."""
        return req.tokens(i * self.page_size, (i + 1) * self.page_size)

    def hashes(self, req: Request) -> list[bytes]:
        """The chained hashes of the request's full blocks (computed once, as it grows)."""
        req.block_hashes.extend(self._hashes_past_kept(req, req.num_tokens // self.page_size))
        return req.block_hashes

    def _hashes_past_kept(self, req: Request, count: int) -> list[bytes]:
        """The chained hashes of the request's blocks past those it keeps, up to block
        `count` - 1 (each full), chained on to the kept ones; returned, not kept."""
        new, parent = [], req.block_hashes[-1] if req.block_hashes else None
        for i in range(len(req.block_hashes), count):
            parent = hash_block(parent, self.block_tokens(req, i))
            new.append(parent)
        return new

    def cached_prefix(self, req: Request) -> tuple[list[int], int]:
        """(pages, computed): how many of the request's first tokens need no computing (its
        longest cached prefix, but the last token is always computed: its logits pick the
        next token, even when the whole prompt is cached), and the cached pages holding them.
        With one-token pages the last token's own cached page is not among them: taking it
        would copy (on write) a page whose only slot is about to be overwritten."""
        if not req.num_tokens:   # (computed would be -1, and its cost an IndexError)
            raise empty_prompt_error(req.rid)
        pages = []
        if self.enable_caching:
            for i, block_hash in enumerate(self.hashes(req)):
                page = self.pool.lookup(block_hash, self.block_tokens(req, i))
                if page is None:
                    break
                pages.append(page)
        computed = min(len(pages) * self.page_size, req.num_tokens - 1)
        return pages[:_pages_for(computed, self.page_size)], computed

    def register_computed(self, req: Request) -> None:
        """Offer the request's full, computed pages to the prefix cache."""
        full = req.num_computed_tokens // self.page_size   # (<= the blocks hashed)
        if not self.enable_caching or full <= req.num_registered_blocks:
            return   # (most steps: no block filled, nothing to undo)
        with self._atomic(req):
            hashes = self.hashes(req)
            for i in range(req.num_registered_blocks, full):
                self.pool.register(req.pages[i], hashes[i], self.block_tokens(req, i))
            req.num_registered_blocks = full

    @property
    def hit_rate(self) -> float:
        """Tokens found in the cache over tokens looked up, at every admission (a request
        resumed after preemption by recompute looks its tokens up again)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    # -- pricing ------------------------------------------------------------------------

    def _write_cost(self, pages: list[int], start: int, num_new: int, lookahead: int) -> int:
        """Free pages that writing tokens start..start+num_new-1 takes: pages past the end
        (covering `lookahead` more tokens too), plus copies of shared or cached pages."""
        end = start + num_new
        grow = max(0, _pages_for(end + lookahead, self.page_size) - len(pages))
        touched = range(start // self.page_size, min(len(pages), _pages_for(end, self.page_size)))
        return grow + sum(self.pool.is_shared_or_cached(pages[i]) for i in touched)

    def growth_cost(self, req: Request, num_new: int) -> int:
        num_new = _check_num_new(req, num_new, req.num_computed_tokens)
        return self._write_cost(req.pages, req.num_computed_tokens, num_new, 0)

    def admission_cost(self, hits: list[int], computed: int, num_new: int,
                       lookahead: int = 0) -> int:
        """Free pages that admitting a request with these prefix hits takes: hits sitting in
        the free queue leave it, plus what writing its first chunk takes."""
        # (unchecked, a lookahead of -5 priced nothing, a hit of -1 read the last page's
        # count, a float computed failed inside range())
        hits = self._cached_hit_ids(hits)   # (admit refuses them: a price of no admission)
        computed = check_int(computed, "computed", minimum=0)
        num_new = check_int(num_new, "num_new", minimum=0)
        lookahead = check_int(lookahead, "lookahead", minimum=0)
        free_hits = sum(self.pool.ref_cnt[p] == 0 for p in hits)
        return free_hits + self._write_cost(hits, computed, num_new, lookahead)

    # -- doing ----------------------------------------------------------------------------

    def admit(self, req: Request, hits: list[int], computed: int, num_new: int,
              lookahead: int = 0) -> None:
        """Give a waiting request its prefix hits and the pages for its first `num_new`
        tokens (and `lookahead` more); hits and computed as `cached_prefix` gave them. The
        caller checked `admission_cost`; a failure (a copy on write interrupted) leaves it
        waiting, holding nothing."""
        refuse_held(req, "admit", "a waiting request", device=True, host=True)
        hits, computed = self._check_hits(req, hits, computed)   # (Python ints: a NumPy int
        # stayed in the request and the counters)
        num_new = _check_num_new(req, num_new, computed)
        lookahead = check_int(lookahead, "lookahead", minimum=0)
        with self._atomic(req):
            self.pool.touch(hits)
            req.pages = list(hits)
            req.num_registered_blocks = len(hits)
            req.num_computed_tokens = computed
            self.query_tokens += req.num_tokens
            self.hit_tokens += computed
            self._prepare_write(req, num_new, lookahead)

    def _cached_hit_ids(self, hits) -> list[int]:
        """hits as Python ints, each a page id of the pool that caches a prefix: the one
        refusal of a hit caching nothing, for pricing an admission and for admitting."""
        hits = check_int_list(hits, "hits", "page id")
        check_page_ids(hits, "hits", self.pool.num_pages, "pool")
        for i, page in enumerate(hits):
            if self.pool.page_hash[page] is None:
                raise ValueError(f"hits[{i}]: page {page} caches no prefix; pass what "
                                 f"cached_prefix returns")
        return hits

    def _check_hits(self, req: Request, hits, computed) -> tuple[list[int], int]:
        """(hits, computed) as ints, refused unless they are what `cached_prefix` gives: a
        page caching nothing, or another block (another prompt's, or this prompt's in another
        place), taken as a hit would serve its contents as the prompt's."""
        hits = self._cached_hit_ids(hits)
        computed = check_int(computed, "computed")
        if not 0 <= computed < req.num_tokens:   # (the last token is always computed)
            raise ValueError(f"computed: expected 0..{req.num_tokens - 1} (request {req.rid} "
                             f"has {req.num_tokens} tokens, the last always computed), got "
                             f"{computed}")
        if len(hits) != _pages_for(computed, self.page_size):
            raise ValueError(f"hits: expected {_pages_for(computed, self.page_size)} page(s) "
                             f"holding the {computed} computed token(s), got {hits} "
                             f"(pass what cached_prefix returns)")
        # the full blocks' hashes, not kept (a refused call changes no request); a hit past
        # them would cache a partial block, which is never cached
        count = min(len(hits), req.num_tokens // self.page_size)
        chain = req.block_hashes[:count] + self._hashes_past_kept(req, count)
        for i, page in enumerate(hits):   # each the page that caches the request's block i
            if i >= count or self.pool.lookup(chain[i], self.block_tokens(req, i)) != page:
                raise ValueError(f"hits[{i}]: page {page} does not cache request {req.rid}'s "
                                 f"block {i} (its tokens {i * self.page_size}.."
                                 f"{(i + 1) * self.page_size - 1}); pass what cached_prefix "
                                 f"returns")
        return hits, computed

    def grow(self, req: Request, num_new: int) -> bool:
        """Pages for the request's next `num_new` tokens; False (nothing changed) when the
        pool cannot give them."""
        cost = self.growth_cost(req, num_new)   # (refuses a num_new the request has not)
        if cost > self.pool.num_free:
            return False
        if cost:   # (most decode steps write into a page they hold: nothing to do or undo)
            with self._atomic(req):
                self._prepare_write(req, num_new, 0)
        return True

    def _prepare_write(self, req: Request, num_new: int, lookahead: int) -> None:
        start, end = req.num_computed_tokens, req.num_computed_tokens + num_new
        ps = self.page_size
        for i in range(start // ps, min(len(req.pages), _pages_for(end, ps))):
            if self.pool.is_shared_or_cached(req.pages[i]):
                self._copy_on_write(req, i)
        missing = _pages_for(end + lookahead, ps) - len(req.pages)
        if missing > 0:
            req.pages.extend(self.pool.allocate(missing))

    def _copy_on_write(self, req: Request, i: int) -> None:
        """(Inside its caller's `_atomic`, which undoes a copy that fails halfway.)"""
        (fresh,) = self.pool.allocate(1)
        if self.store is not None:
            self.store.copy_page(req.pages[i], fresh)
        self.pool.free([req.pages[i]])
        req.pages[i] = fresh
        self.cow_copies += 1

    def free(self, req: Request) -> None:
        """Give back every page of the request, last page first (evicted first)."""
        self.pool.free(reversed(req.pages))
        req.pages = []
        req.num_registered_blocks = 0

    # -- swapping -------------------------------------------------------------------------

    def can_swap_out(self, req: Request) -> bool:
        return (self.host is not None and
                self.host.num_free >= _pages_for(req.num_computed_tokens, self.page_size))

    def swap_out(self, req: Request) -> None:
        """Copy the pages holding the request's computed tokens to host memory, then free
        every page it holds on the device."""
        self._need_host(req, f"swap request {req.rid} out to")
        refuse_held(req, "swap_out", "a running request", device=False, host=True)
        keep = req.pages[:_pages_for(req.num_computed_tokens, self.page_size)]
        self._save_host()
        never_used = self.host.num_never_used
        host_pages = self.host.allocate(len(keep))
        try:
            if self.store is not None:
                self.store.swap_out(keep, host_pages)
            self.free(req)
        except BaseException:   # (an interrupt mid-copy or mid-free) the host pages would
            # leak: the request keeps its device pages, and no host page; they go back to
            # the front of the host free list (free() would reorder it)
            self.host.unallocate(host_pages, never_used)
            raise
        req.host_pages = host_pages

    def _need_host(self, req: Request, what: str) -> None:
        """Refuse, by name, a swap call on a manager without host pages (else an
        AttributeError on None, halfway through)."""
        if self.host is None:
            raise ValueError(f"req: this manager has no host pages to {what} "
                             f"(num_host_pages=0)")

    def free_host(self, req: Request) -> None:
        """Give back the host pages of a swapped-out request."""
        self._need_host(req, f"give request {req.rid}'s host pages back to")
        self._save_host()
        self.host.free(req.host_pages)
        req.host_pages = []

    def swap_in_cost(self, req: Request, num_new: int = 0) -> int:
        """Free pages that bringing the request back takes, plus the pages its next `num_new`
        tokens grow into (its pages come back exactly as they left, none shared)."""
        num_new = _check_num_new(req, num_new, req.num_computed_tokens)
        back = len(req.host_pages)
        return back + max(0, _pages_for(req.num_computed_tokens + num_new, self.page_size) - back)

    def swap_in(self, req: Request) -> None:
        """Bring a swapped request's pages back (the caller checked `swap_in_cost`); a
        failure (a copy interrupted) leaves it swapped out, its host pages held."""
        self._need_host(req, f"swap request {req.rid} in from")
        refuse_held(req, "swap_in", "a swapped-out request", device=True, host=False)
        with self._atomic(req):
            pages = self.pool.allocate(len(req.host_pages))
            if self.store is not None:
                self.store.swap_in(req.host_pages, pages)
            self.free_host(req)   # the last step that can fail: the host pages stay held
            req.pages = pages
            req.num_registered_blocks = 0


def _check_num_new(req: Request, num_new, computed: int) -> int:
    """num_new as an int, refused unless the request has that many tokens past `computed`
    (pages for tokens it does not have would be taken and never written)."""
    num_new = check_int(num_new, "num_new")
    if not 0 <= num_new <= req.num_tokens - computed:
        raise ValueError(f"num_new: expected 0..{req.num_tokens - computed} (the request's "
                         f"{req.num_tokens} tokens less {computed} computed), got {num_new}")
    return num_new


def refuse_held(req: Request, call: str, takes: str, device: bool, host: bool) -> None:
    """Refuse a request holding pages that `call` would replace in its tables: they would
    stay held for ever (leaked)."""
    if device and req.pages:
        raise ValueError(f"req: request {req.rid} holds device pages {req.pages} already; "
                         f"{call} takes {takes}")
    if host and req.host_pages:
        raise ValueError(f"req: request {req.rid} holds host pages {req.host_pages} already "
                         f"(it is swapped out); {call} takes {takes}")
