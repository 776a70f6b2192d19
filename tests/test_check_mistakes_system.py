"""Wrong answers to workbook 07 (next page, decode step, serving loop)."""
from collections import deque

import pytest

import pagedattn_lab as pl
from tests.check_helpers import as_params, assert_caught, assert_several_fit

# -- lesson 07: the system ---------------------------------------------------------------------

def next_ignoring_forks(cache, sid):
    return 1 if cache.seq_len(sid) % cache.page_size == 0 else 0


MISTAKES = [
    ("pages_for_next_token", next_ignoring_forks, "copy on write"),
    ("pages_for_next_token", lambda cache, sid: 1, "still has"),
    ("pages_for_next_token",
     lambda cache, sid: int((cache.seq_len(sid) + 1) % cache.page_size == 0),
     "free slot"),
    ("pages_for_next_token", lambda cache, sid: int(
        cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1), "last page is full"),
]


def manager(kind):
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids = list(seq_ids)
            if kind == "attend_first":
                tables, lens = self.cache.block_tables(seq_ids)
                out = pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens)
                for i, s in enumerate(seq_ids):
                    self.cache.append(s, k[i:i + 1], v[i:i + 1])
                return out
            if kind == "one_page_each" and len(seq_ids) > self.cache.allocator.num_free:
                raise pl.OutOfPagesError(len(seq_ids), self.cache.allocator.num_free,
                                         self.cache.allocator.num_pages)
            for i, s in enumerate(seq_ids):
                if kind == "first_seq":
                    s = seq_ids[0]
                self.cache.append(s, k[i] if kind == "2d" else k[i:i + 1],
                                  v[i] if kind == "2d" else k[i:i + 1] if kind == "kk"
                                  else v[i:i + 1])
            tables, lens = (self.cache.block_tables() if kind == "all_tables"
                            else self.cache.block_tables(seq_ids))
            return pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens)
    return Manager


def serve_factory(*, frees=True, admits_all=False, early=False, order="finish", fifo=True,
                  ties="admitted", strict=False, promises=True, unguarded=False):
    """The lesson's serve loop, each switch a mistake; promises=False: admitting on the free
    pages alone, not setting aside those the running sequences will still take; unguarded:
    a token asked for every running sequence, whole ones included."""
    def serve(cache, requests, kv_for):
        pages = lambda n: -(-n // cache.page_size)  # noqa: E731
        waiting, running, done = deque(range(len(requests))), {}, []
        while waiting or running:
            for i in list(waiting):
                room = cache.allocator.num_free - promises * sum(
                    pages(sum(requests[j])) - pages(cache.seq_len(s)) for j, s in running.items())
                need = pages(sum(requests[i]))
                if admits_all or need < room or (need == room and not strict):
                    waiting.remove(i)
                    s = cache.add_sequence()
                    cache.append(s, *kv_for(i, 0, requests[i][0]))
                    running[i] = s
                elif fifo:
                    break
            items = list(running.items())
            for i, s in items[::-1] if ties == "reversed" else items:
                total = sum(requests[i]) - (1 if early else 0)
                if unguarded or cache.seq_len(s) < total:
                    cache.append(s, *kv_for(i, cache.seq_len(s), 1))
                if cache.seq_len(s) == total:
                    if frees:
                        cache.free_sequence(s)
                    del running[i]
                    done.append(i)
        return sorted(done) if order == "arrival" else done
    return serve


MISTAKES += [
    ("decode_step", manager("attend_first"), "attend to itself"),
    ("decode_step", manager("all_tables"), "order of seq_ids"),
    ("decode_step", manager("2d"), "k[i:i+1]"),
    ("decode_step", manager("no_all_or_nothing"), "all or nothing"),
    ("serve", serve_factory(frees=False), "never frees"),
    ("serve", serve_factory(admits_all=True), "admit a request only when"),
    ("serve", serve_factory(early=True), "free a sequence once it holds"),
]


# -- copy on write of the tail, exact fits, the finish order (issue 9) ----------------------

def next_first_page(cache, sid):
    n = cache.seq_len(sid)
    if n % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(sid)[0]) > 1)


def next_any_shared(cache, sid):
    if cache.seq_len(sid) % cache.page_size == 0:
        return 1
    return int(any(cache.allocator.ref_count(p) > 1 for p in cache.block_table(sid)))


def next_tail_first(cache, sid):
    if cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1:
        return 1
    return int(cache.seq_len(sid) % cache.page_size == 0)


def next_at_least_one_owner(cache, sid):
    if cache.seq_len(sid) % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(sid)[-1]) >= 1)


def next_reserving_the_page(cache, sid):   # right count, and "reserves" the page it counts
    n = cache.seq_len(sid)
    shared = n % cache.page_size and cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1
    needed = int(n % cache.page_size == 0 or bool(shared))
    if needed and cache.allocator.num_free:
        cache.allocator.allocate(1)
    return needed


MISTAKES += [
    ("pages_for_next_token", next_reserving_the_page, "pages_for_next_token changed the cache"),
    ("pages_for_next_token", next_first_page, "only the page the token is written into"),
    ("pages_for_next_token", next_any_shared, "only the page the token is written into"),
    ("pages_for_next_token", next_tail_first, "does not exist"),
    ("pages_for_next_token", next_at_least_one_owner, "free slot", ["copy on write"]),
    ("decode_step", manager("kk"), "value went in as its key"),
    ("decode_step", manager("one_page_each"), "not one page per sequence"),
    ("decode_step", manager("first_seq"), "append exactly one token"),
    ("serve", serve_factory(order="arrival"), "arrival order"),
    ("serve", serve_factory(fifo=False), "first come, first served"),
    ("serve", serve_factory(ties="reversed"), "in the order they were admitted"),
    ("serve", serve_factory(strict=True), "refuses a request that fits"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


# -- an empty pool, forks in a decode step, seq ids, finishing before the decode (attack 0607) --

def next_only_if_free(cache, sid):
    if cache.allocator.num_free == 0:
        return 0                       # "no page can be taken": mixes need and supply
    n = cache.seq_len(sid)
    if n % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1)


def next_copy_even_if_full(cache, sid):
    n = cache.seq_len(sid)
    shared = n > 0 and cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1
    return int(n % cache.page_size == 0) + int(shared)


def step_manager(needed, power=1, q_scaled_in_place=False):
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids, alloc = list(seq_ids), self.cache.allocator
            count = sum(needed(self.cache, s) for s in seq_ids)
            if count > alloc.num_free:
                raise pl.OutOfPagesError(count, alloc.num_free, alloc.num_pages)
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i:i + 1], v[i:i + 1])
            tables, lens = self.cache.block_tables(seq_ids)
            scale = self.scale ** power
            if q_scaled_in_place:   # the output is right, the caller's q is changed
                q *= scale
                scale = 1.0
            return pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens,
                                       scale)
    return Manager


def serve_variant(*, record_seq_ids=False, finish_first=False, twice=False, skip_new=False,
                  stale_promise=False):
    """The lesson's serve loop with one mistake: the sequence's id recorded instead of the
    request's index; a finished sequence looked for before this step's decode (and freed
    twice); no token appended to the sequences admitted in this step; the pages promised to
    the running sequences counted once per step, before its first admission."""
    def serve(cache, requests, kv_for):
        pages = lambda n: -(-n // cache.page_size)  # noqa: E731
        waiting, running, done = deque(range(len(requests))), {}, []

        def finish(i, s):
            cache.free_sequence(s)
            if twice:
                cache.free_sequence(s)
            del running[i]
            done.append(s if record_seq_ids else i)

        while waiting or running:
            admitted = set()
            promised = sum(pages(sum(requests[j])) - pages(cache.seq_len(s))
                           for j, s in running.items())
            while waiting:
                i = waiting[0]
                room = cache.allocator.num_free - (promised if stale_promise else sum(
                    pages(sum(requests[j])) - pages(cache.seq_len(s)) for j, s in running.items()))
                if pages(sum(requests[i])) > room:
                    break
                waiting.popleft()
                running[i] = cache.add_sequence()
                cache.append(running[i], *kv_for(i, 0, requests[i][0]))
                admitted.add(i)
            for i, s in list(running.items()):
                if finish_first and cache.seq_len(s) == sum(requests[i]):
                    finish(i, s)                        # done? checked before appending
                    continue
                if cache.seq_len(s) < sum(requests[i]) and not (skip_new and i in admitted):
                    cache.append(s, *kv_for(i, cache.seq_len(s), 1))
                if not finish_first and cache.seq_len(s) == sum(requests[i]):
                    finish(i, s)
        return done
    return serve


NEW_MISTAKES = [
    ("pages_for_next_token", next_only_if_free, "whatever the pool holds"),
    ("pages_for_next_token", next_copy_even_if_full, "sharing it takes no copy"),
    ("decode_step", step_manager(lambda c, s: int(c.seq_len(s) % c.page_size == 0)),
     "copy on write", ["not one page per sequence"]),
    ("decode_step", step_manager(lambda c, s: c.pages_needed(s, 2)),
     "not when it is page_size - 1", ["not one page per sequence"]),
    ("decode_step", step_manager(lambda c, s: c.pages_needed(s, 1), power=2), "applied twice"),
    ("decode_step", step_manager(lambda c, s: c.pages_needed(s, 1), q_scaled_in_place=True),
     "decode_step changed its input q", ["not scaled"]),
    ("serve", serve_variant(record_seq_ids=True), "those are seq ids"),
    ("serve", serve_variant(finish_first=True), "after this step's decode",
     ["recorded in the order they were admitted"]),
    ("serve", serve_variant(finish_first=True, twice=True), "was freed already"),
    ("serve", serve_variant(stale_promise=True), "admitted earlier in this same step"),
    # the same finish order as finish_first: the hint names both mistakes
    ("serve", serve_variant(skip_new=True), "those just admitted included",
     ["recorded in the order they were admitted"]),
]


class PoppingIdsManager(pl.PagedAttentionManager):
    """Right outputs, but the append loop empties the caller's seq_ids as it goes."""

    def decode_step(self, seq_ids, q, k, v):
        order, alloc = list(seq_ids), self.cache.allocator
        count = sum(self.cache.pages_needed(s, 1) for s in order)
        if count > alloc.num_free:
            raise pl.OutOfPagesError(count, alloc.num_free, alloc.num_pages)
        i = 0
        while seq_ids:
            self.cache.append(seq_ids.pop(0), k[i:i + 1], v[i:i + 1])
            i += 1
        tables, lens = self.cache.block_tables(order)
        return pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens,
                                   self.scale)


def serve_draining(cache, requests, kv_for):   # the right order, then the caller's list emptied
    done = serve_factory()(cache, requests, kv_for)
    requests.clear()
    return done


NEW_MISTAKES += [
    ("decode_step", PoppingIdsManager, "decode_step changed its input seq_ids"),
    ("serve", serve_draining, "serve changed its input requests"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(NEW_MISTAKES))
def test_new_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


class TransactionManager(pl.PagedAttentionManager):
    """Right, written differently: no page count, the cache's transaction undoes a failed step."""

    def decode_step(self, seq_ids, q, k, v):
        seq_ids = list(seq_ids)
        with self.cache.transaction():
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i:i + 1], v[i:i + 1])
        tables, lens = self.cache.block_tables(seq_ids)
        return pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens,
                                   self.scale)


def test_decode_step_passes_a_transaction_instead_of_a_count():
    from tests.check_helpers import run_check  # noqa: PLC0415
    result, printed = run_check("decode_step", TransactionManager)
    assert result.passed, printed


def test_serve_names_both_mistakes_that_give_the_order_in_one_wording():
    case = assert_several_fit("serve", serve_variant(skip_new=True),
                              {"requests": [(3, 1), (2, 1), (4, 0), (8, 4)],
                               "num_pages": 3, "page_size": 4},
                              "finish order", ["after this step's decode",
                                               "those just admitted included"])
    assert case.hint.startswith("every request finished a step late")


def test_serve_that_frees_a_step_late_is_told_so_by_the_cache_in_the_first_case():
    """(Hunt 63) The cache it leaves behind shows it before any finish order does: the
    request was freed when another admitted with it had had its next token already, which
    no token for the just admitted (a lag behind those admitted earlier only) cannot do."""
    result, _ = assert_caught("serve", serve_variant(finish_first=True),
                              "after this step's decode",
                              not_phrases=["those just admitted included"])
    first = next(c for c in result.cases if not c.passed)
    assert first.name == "room for everyone" and "finished a step late" in first.hint
