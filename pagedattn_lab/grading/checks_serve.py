"""Check for lesson 07's serving loop: admit, decode, finish and free.

The check watches the learner's loop through the cache it hands over: which request each
new sequence serves, what each holds when it is freed, and in which order the requests
finish. The order is the spec's: admit waiting requests first come, first served while the
pool has room for a request's whole length (counting the pages the running sequences will
still take), append one token to every running sequence, then finish (record and free)
every sequence that holds its whole request, in the order they were admitted. The order
returned is not taken on trust (the cases' requests are fixed, and finish_order is
importable): when a request is freed, the requests running beside it must be those of the
spec's step that finishes it, holding the tokens that step gives them.
"""
from __future__ import annotations

import re

import numpy as np

from ..cache import PagedKVCache
from ..paging import OutOfPagesError
from ..validate import check_int_list
from .compare import changed_input
from .report import Case, CheckResult, Mismatch, run_cases
from .seeds import case_rng
from .serve_hints import (ADMIT_HINT, admission_hint, misplaced_tokens, past_end, prefill_hint,
                          unlike_spec)
from .serve_order import finish_order, order_hint, short_prefills
from .time_limits import CaseTimeout, time_limit
from .wire import ProtocolError


class _StepBudget(Exception):
    pass


def _serve_case(fn, seed: int, requests, num_pages: int, page_size: int,
                first_id: int = 0) -> None:
    """`first_id`: the cache served that many sequences before (so seq ids start there)."""
    num_kv_heads, head_dim = 2, 4
    cache = PagedKVCache(num_pages, page_size, num_kv_heads, head_dim, device="cpu")
    cache.token_dtypes   # (its first call imports ml_dtypes: seconds, not the loop's time)
    for _ in range(first_id):
        cache.free_sequence(cache.add_sequence())
    rng = case_rng(seed)
    tokens = [rng.standard_normal((p + n, num_kv_heads, head_dim)).astype(np.float32)
              for p, n in requests]
    calls = {"n": 0}
    freed: list[int] = []  # request indices, in the order they were freed
    bulk: list[int] = []   # requests given several decode tokens by one kv_for call
    past: list[tuple[int, int, int]] = []   # the first call for tokens a request does not have
    misplaced: list[Mismatch] = []   # the first block appended where its tokens do not go
    last: dict = {}   # the latest kv_for call and the keys it gave

    def kv_for(i: int, start: int, n: int):
        calls["n"] += 1
        if calls["n"] > 20 * sum(n_new for _, n_new in requests) + 100:
            raise _StepBudget()
        # (answered, with the tokens there are, and told after the loop: an exception here
        # would reach the learner's loop first, which may catch it)
        if start + n > len(tokens[i]) and not past:
            past.append((i, start, n))
        block = tokens[i][start:start + n]
        if start > 0 and n > 1 and i not in bulk:   # (a prompt comes whole, at start 0)
            bulk.append(i)
        if start > 0 and n == 1:
            watch_step(i)
        last["call"], last["keys"] = (i, start, n), block
        return block.copy(), (-block).copy()

    def request_of(keys) -> int | None:
        """The request a sequence serves, known by its first token (random, so unique)."""
        return next((i for i, t in enumerate(tokens) if len(keys) and
                     np.array_equal(keys[0], t[0])), None)

    spec: dict = {}   # request -> the others running in its last step (finish_order)
    expected = finish_order(requests, num_pages, page_size, beside=spec)
    # the prefill_hint of the first request admitted with part of its prompt, and how many
    # of its tokens it held back
    short: list[tuple[str, int]] = []
    short_specs: list[dict] = []   # spec's company, of the loops that admit so (finish_order)
    unlike: list[Mismatch] = []   # the first free the spec's loop would not make so
    original_free, original_append = cache.free_sequence, cache.append
    freed_ids: set[int] = set()
    admission: list[str] = []   # the hint of the first admission unlike the spec's
    overfull: list[str] = []    # the same, where that admission took a request that did not fit
    dry: list[bool] = []   # whether the latest append the cache refused was an admission's
    admitted: set[int] = set()
    decoded: set[int] = set()   # the requests given a token in this step so far

    def running_beside(sid) -> dict[int, int]:
        found = {s: request_of(cache.gather(s)[0]) for s in cache.seq_ids if s != sid}
        return {i: cache.seq_len(s) for s, i in found.items() if i is not None}

    # the hooks take PagedKVCache's own parameter names: a loop may pass them by keyword
    def free_sequence(seq_id):
        k, _ = cache.gather(seq_id)
        i = request_of(k)
        if i is not None:
            if k.shape[0] != len(tokens[i]):
                raise Mismatch(f"request {i} was freed with {k.shape[0]} cached tokens",
                               "free a sequence once it holds prompt_len + new_tokens tokens.",
                               str(len(tokens[i])), str(k.shape[0]))
            if not np.array_equal(k, tokens[i]):
                raise misplaced[0] if misplaced else Mismatch(
                    f"request {i} holds the wrong keys when it is freed", "append each "
                    "request's tokens to its own sequence, in order: kv_for(i, start, n) "
                    "gives tokens start..start+n-1.")
            freed.append(i)
            if not unlike:
                beside = running_beside(seq_id)
                unlike.extend(unlike_spec(i, beside, spec[i], tokens,
                                          admission[0] if admission else "",
                                          overfull[0] if overfull else ""))
                if unlike and short and any(i in company and not unlike_spec(
                        i, beside, company[i], tokens) for company in short_company()):
                    unlike[0].hint = short[0][0]   # (the company such a loop has here)
        original_free(seq_id)
        freed_ids.add(seq_id)

    def short_company() -> list[dict]:
        if not short_specs:
            for model in short_prefills(short[0][1]):
                short_specs.append({})
                finish_order(requests, num_pages, page_size, beside=short_specs[-1], **model)
        return short_specs

    def complete_but_kept() -> list[int]:
        held = [(s, request_of(cache.gather(s)[0])) for s in cache.seq_ids]
        return [i for s, i in held if i is not None and cache.seq_len(s) == len(tokens[i])]

    def judge_admission(i: int, sid, was_admitted: bool) -> None:
        if not admission:
            hint = admission_hint(i, requests, running_beside(sid), cache.allocator.num_free,
                                  lambda n: -(-n // page_size), was_admitted)
            admission.extend([hint] if hint else [])
            overfull.extend([hint] if hint and was_admitted else [])

    def append(seq_id, k, v):
        # the block kv_for gave last, appended to its own request's sequence (or a new one)
        # at another position (by value: under the grader k comes back as a copy)
        if not misplaced and last and np.array_equal(k, last["keys"]) and \
                seq_id in cache.seq_ids and last["call"][1] != cache.seq_len(seq_id) and \
                (cache.seq_len(seq_id) == 0 or
                 request_of(cache.gather(seq_id)[0]) == last["call"][0]):
            misplaced.append(misplaced_tokens(last["call"], cache.seq_len(seq_id)))
        # (rows [n, heads, head_dim] only: anything else is the cache's to refuse, by name)
        i = request_of(k) if isinstance(k, np.ndarray) and k.ndim == 3 and \
            seq_id in cache.seq_ids and cache.seq_len(seq_id) == 0 else None
        fresh = i is not None and i not in admitted   # its prompt goes into a new sequence
        if fresh:
            judge_admission(i, seq_id, True)   # (before the append: its pages not yet taken)
            if len(k) < requests[i][0] and not short:
                short.append((prefill_hint(i, len(k), requests[i][0]),
                              requests[i][0] - len(k)))
        try:
            result = original_append(seq_id, k, v)
        except OutOfPagesError:
            dry[:] = [fresh]
            raise
        if fresh:   # (not where the append was refused: a loop may catch that, and wait)
            admitted.add(i)
        return result

    def watch_step(i: int) -> None:
        """At a step's first decode token (its admissions done), the head of the queue."""
        if decoded and i not in decoded:
            decoded.add(i)
            return
        decoded.clear()
        decoded.add(i)
        head = next((j for j in range(len(requests)) if j not in admitted), None)
        if head is not None:
            judge_admission(head, None, False)

    cache.free_sequence, cache.append = free_sequence, append
    passed = list(requests)
    try:
        finished = _run_loop(fn, cache, passed, kv_for, past, tokens, misplaced)
    except (_StepBudget, CaseTimeout):
        kept = complete_but_kept()
        if kept:
            hint = (f"requests {kept} hold all their tokens (prompt_len + new_tokens) but "
                    "still hold their pages: such a sequence is finished, so record it and "
                    "free it (cache.free_sequence) in the step that completes it, so that "
                    "waiting requests can be admitted (the guide's page counter never frees).")
        elif not cache.seq_ids and len(freed) < len(requests):
            hint = ("the pool is empty and requests still wait: your admission test refuses "
                    "a request that fits (it needs ceil((prompt_len + new_tokens) / "
                    "page_size) pages).")
        else:
            hint = ("the loop does not make progress: every step must append one token to "
                    "every running sequence, and the loop ends when nothing waits or runs.")
        raise Mismatch(f"serve did not finish: {calls['n']} calls to kv_for and "
                       f"{cache.allocator.num_free} of {num_pages} pages free", hint) from None
    except OutOfPagesError as exc:
        # a decode that ran dry after an admission of a request that did not fit: that
        # admission took the pages the running sequences were promised (and one of them may
        # have just completed, in this very decode, before the loop's finish could free it)
        kept = complete_but_kept()
        hint = overfull[0] if overfull and dry == [False] else (
            f"requests {kept} were complete but still held their pages: free every finished "
            "sequence, so the next ones fit." if kept else ADMIT_HINT)
        raise Mismatch(f"the cache ran out of pages: {exc}", hint) from None
    except KeyError as exc:
        gone = re.search(r"no live sequence (\d+)", str(exc))
        if not gone or int(gone.group(1)) not in freed_ids:
            raise
        raise Mismatch(f"raised KeyError: {exc}", f"sequence {gone.group(1)} was freed "
                       "already: once cache.free_sequence(seq_id) has run, drop the sequence "
                       "from the running ones and never use or free it again.") from None
    if past:
        raise misplaced[0] if misplaced else past_end(past[0], tokens)
    changed = changed_input("serve", {"requests": list(requests)}, {"requests": passed}, {
        "requests": "serve reads requests[i] and keeps its own waiting and running "
                    "collections (a deque of indices); it does not pop, sort or overwrite the "
                    "caller's list"})
    if changed:
        raise changed
    if finished is not None:   # any sequence of ints (a list, a deque, an array)
        try:
            finished = check_int_list(finished, "serve's result", "request index")
        except TypeError:
            raise Mismatch("serve must return a list of request indices (ints)",
                           "append each finished request's index i (an int) to a list.",
                           f"a permutation of 0..{len(requests) - 1}",
                           repr(finished)[:80]) from None
    if finished is None or sorted(finished) != list(range(len(requests))):
        seq_ids = first_id and finished is not None and \
            sorted(finished) == list(range(first_id, first_id + len(requests)))
        raise Mismatch("serve must return the indices of the requests in the order they "
                       "finished", f"those are seq ids (this cache served {first_id} sequences "
                       "before, so its ids start at " + str(first_id) + "): record the request's "
                       "index i, not cache.add_sequence()'s id." if seq_ids else
                       "append i to a list when request i is done; every request must finish.",
                       f"a permutation of 0..{len(requests) - 1}", repr(finished))
    if cache.allocator.num_free != num_pages:
        leaked = num_pages - cache.allocator.num_free
        raise Mismatch(f"{leaked} pages still in use after every request finished",
                       "free each sequence when it finishes: cache.free_sequence(seq_id) "
                       "returns its pages (forgetting it leaks memory until the server stalls).",
                       f"{num_pages} free", f"{cache.allocator.num_free} free")
    if sorted(freed) != list(range(len(requests))):
        raise misplaced[0] if misplaced else Mismatch(
            "not every request's sequence was freed exactly once",
            "free each finished sequence once.", "each request once", repr(freed))
    if finished != expected:
        raise Mismatch("the order the requests finished in",
                       order_hint(finished, requests, num_pages, page_size, freed, bulk,
                                   admission[0] if admission else "",
                                   *(short[0] if short else ())),
                       repr(expected), repr(finished))
    if unlike:   # the right order returned, by a loop that did not run the spec's steps
        raise unlike[0]


def _run_loop(fn, cache, requests, kv_for, past: list, tokens, misplaced: list):
    """What the learner's loop returns. Where it stops early (raises, or runs past its time
    or its calls) after a call for tokens past a request's end (`past`), that call is the
    mistake named (or, before it, a block appended at the wrong position, `misplaced`): it
    came first, and the loop went on from the empty block kv_for gave it (ran out of pages,
    used a sequence it had freed) where a model would have made a token."""
    try:
        with time_limit(2):  # a right loop takes milliseconds here
            return fn(cache, requests, kv_for)
    except Exception as exc:
        if past and not isinstance(exc, (Mismatch, ProtocolError)):   # (not the learner's)
            raise (misplaced or [past_end(past[0], tokens)])[0] from None
        raise


def serve(fn) -> CheckResult:
    """Check `fn(cache, requests, kv_for)` runs every (prompt_len, new_tokens) request."""
    small = [(5, 3), (9, 2), (2, 6), (4, 4), (7, 1)]
    blocked = [(6, 2), (10, 3), (3, 1)]
    after_one = [(3, 1), (2, 1), (4, 0), (8, 4)]
    odd = [(5, 3), (9, 4), (4, 2), (7, 5)]
    # (but for (n + 5) >> 2, each mix of shifts and masks gives an order no other mistake does)
    mixes = [(13, 10), (10, 1), (7, 1), (10, 7), (5, 1)]
    cases = [
        Case("room for everyone", {"requests": small, "num_pages": 32, "page_size": 4},
             lambda: _serve_case(fn, 31, small, 32, 4)),
        Case("a pool too small for all at once", {"requests": small, "num_pages": 6,
                                                  "page_size": 4},
             lambda: _serve_case(fn, 32, small, 6, 4)),
        Case("page_size 2, long outputs, a cache that served 3 sequences before",
             {"requests": [(3, 9), (1, 12), (6, 5)], "num_pages": 10, "page_size": 2},
             lambda: _serve_case(fn, 33, [(3, 9), (1, 12), (6, 5)], 10, 2, first_id=3)),
        Case("a small request behind one that does not fit yet",
             {"requests": blocked, "num_pages": 5, "page_size": 4},
             lambda: _serve_case(fn, 34, blocked, 5, 4)),
        Case("a request with no new tokens, exact fits", {"requests": [(4, 0), (3, 1), (8, 4)],
                                                          "num_pages": 3, "page_size": 4},
             lambda: _serve_case(fn, 35, [(4, 0), (3, 1), (8, 4)], 3, 4)),
        Case("no new tokens, behind requests with one", {"requests": after_one,
                                                          "num_pages": 3, "page_size": 4},
             lambda: _serve_case(fn, 37, after_one, 3, 4)),
        Case("no requests", {"requests": [], "num_pages": 4, "page_size": 4},
             lambda: _serve_case(fn, 36, [], 4, 4)),
        # (the page sizes above are powers of two, where a shift for // passes)
        Case("page_size 6, not a power of two", {"requests": odd, "num_pages": 4,
                                                  "page_size": 6},
             lambda: _serve_case(fn, 38, odd, 4, 6)),
        Case("page_size 6, 8 pages", {"requests": mixes, "num_pages": 8, "page_size": 6},
             lambda: _serve_case(fn, 39, mixes, 8, 6)),
    ]
    return run_cases("serve", "serve: admit, decode, finish and free", cases)

