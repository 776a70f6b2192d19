"""Lesson 07's serving loop as the spec runs it, and as its known mistakes run it: the order
the requests finish in (`finish_order`, the check's expected order and the company each
request has when it is freed), and the hint a wrong order gets, naming each mistake whose
loop finishes the requests in that very order (`order_hint`). checks_serve runs the cases;
serve_hints words what the loop was seen doing.
"""
from __future__ import annotations

from collections import deque

from .compare import FIXED_PAGE_HINT, POW2_HINT, pow2_ceil_forms
from .report import several_fit
from .serve_hints import ADMIT_MISTAKES, LATE_HINTS, LIFO_HINT


def _ceil_pages(n_tokens: int, page_size: int) -> int:
    return -(-n_tokens // page_size)


def finish_order(requests, num_pages: int, page_size: int, *, fifo: bool = True,
                 lifo: bool = False, ties: str = "admitted", finish_first: bool = False,
                 count="ceil", admit: str = "spec", prefill: bool = True,
                 short_by: int = 0, beside: dict | None = None) -> list[int]:
    """The order the spec's loop finishes `requests` in; `fifo=False` admits any waiting
    request that fits (skipping the head), `lifo` admits from the back of the queue (the
    latest request first, as waiting.pop() takes it), `ties="reversed"` records a step's
    finishers last-admitted first, `finish_first` records and frees before the decode,
    `count` "floor" rounds pages down, "16" counts pages of 16 tokens whatever page_size is,
    a function of the tokens counts them with it (a ceil by shifts and masks,
    compare.pow2_ceil_forms), `admit` "whole" promises the running requests' whole totals
    (the pages they hold counted again), "left" promises the pages of the tokens still to
    come (the free slots of the last page held left out), "strict" admits only with a page
    to spare (<), "prompt" when the prompt's pages fit, `prefill=False` appends a prompt's
    first token at admission and the rest one a step, `short_by` holds that many of each
    prompt's tokens back (one at least is appended) for the decode to append one a step (all
    mistakes the hints name).
    `beside`: filled with request -> ({other: tokens before}, {other: tokens after}, {request:
    step admitted}) of the requests running in the step it finishes in (it included in the
    last), before and after that step's decode."""
    waiting, running, lens, done = deque(range(len(requests))), [], {}, []
    before, admitted, step = {}, {}, 0

    def _pages(n_tokens, page_size):   # (the module's, or a mistaken count's)
        if callable(count):
            return int(count(n_tokens))
        if count == "floor":
            return n_tokens // page_size
        return _ceil_pages(n_tokens, 16 if count == "16" else page_size)

    def finish():
        finished = [i for i in running if lens[i] == sum(requests[i])]
        for i in finished if beside is not None else ():
            beside[i] = ({j: n for j, n in before.items() if j != i},
                         {j: lens[j] for j in running if j != i},
                         {j: admitted[j] for j in before})
        done.extend(finished[::-1] if ties == "reversed" else finished)
        return [i for i in running if i not in finished]
    while waiting or running:
        step += 1
        def still(i):   # the pages request i is promised beyond what it holds
            if admit == "left":
                return _pages(sum(requests[i]) - lens[i], page_size)
            held = 0 if admit == "whole" else _pages(lens[i], page_size)
            return _pages(sum(requests[i]), page_size) - held
        promised = sum(still(i) for i in running)
        used = sum(_ceil_pages(lens[i], page_size) for i in running)   # (what num_free sees)
        for i in list(waiting)[::-1] if lifo else list(waiting):
            need = _pages(requests[i][0] if admit == "prompt" else sum(requests[i]), page_size)
            room = num_pages - used - promised
            if need < room or need == room and admit != "strict":
                waiting.remove(i)
                running.append(i)
                lens[i] = max(1, requests[i][0] - short_by) if prefill else 1
                admitted[i] = step
                used += _ceil_pages(lens[i], page_size)
                promised += still(i)
            elif fifo:
                break
        if not running:   # (a request that never fits: only a mistaken count makes one)
            return done + list(waiting)
        before = {i: lens[i] for i in running}
        if finish_first:
            running = finish()
        for i in running:
            lens[i] = min(lens[i] + 1, sum(requests[i]))
        if not finish_first:
            running = finish()
    return done


def short_prefills(short_by: int) -> list[dict]:
    """finish_order's options for loops that append part of a prompt at admission and the
    rest one token a step: its first token only, or all but the `short_by` tokens the first
    request admitted so held back."""
    return [{"prefill": False}, {"short_by": short_by}]


def order_hint(got: list[int], requests, num_pages: int, page_size: int, freed: list[int],
               bulk: list[int], admission: str = "", short: str = "",
               short_by: int = 0) -> str:
    """`freed`: the requests in the order the loop freed them; `bulk`: requests that got
    several new tokens from one kv_for call (not one per step); `admission`: the hint of the
    first admission the spec's loop makes otherwise (admission_hint), or ""; `short`: the
    prefill_hint of the first request admitted with part of its prompt (`short_by` of its
    tokens held back), or ""."""
    if bulk:
        return (f"request {bulk[0]} got several new tokens from one call to kv_for: each step "
                "appends ONE token to every running sequence (kv_for(i, position, 1)), so "
                "sequences share the steps and finish in the order their lengths dictate.")
    if short and any(got == finish_order(requests, num_pages, page_size, **model)
                     for model in short_prefills(short_by)):
        return short
    admits = [hint for hint, admit in ADMIT_MISTAKES
               if got == finish_order(requests, num_pages, page_size, admit=admit)]
    if page_size & (page_size - 1) and any(got == finish_order(
            requests, num_pages, page_size, count=c) for c, _ in pow2_ceil_forms(page_size)):
        admits.append(POW2_HINT.format(name="page_size", n=page_size))
    if got == finish_order(requests, num_pages, page_size, lifo=True):
        admits.append(LIFO_HINT)
    if got == finish_order(requests, num_pages, page_size, count="floor"):
        admits.append("a request's pages are ceil(tokens / page_size): yours rounds down, so "
                      "the last, partly filled page of each request goes uncounted.")
    if page_size != 16 and got == finish_order(requests, num_pages, page_size, count="16"):
        admits.append(FIXED_PAGE_HINT.format(n=page_size))
    if admits:   # (on a small pool, several give one order: the hint names each)
        return several_fit(admits, "finish order")
    if got == list(range(len(requests))) and freed != got:
        return ("that is the arrival order; return the requests in the order they finished "
                "(append i to the list when request i completes).")
    if got == finish_order(requests, num_pages, page_size, fifo=False):
        return ("admit first come, first served: when the request at the head of the queue "
                "does not fit, the ones behind it wait too (letting a small one pass can "
                "starve a big one).")
    if got == finish_order(requests, num_pages, page_size, ties="reversed"):
        return ("requests that finish in the same step are recorded in the order they were "
                "admitted.")
    if got == finish_order(requests, num_pages, page_size, finish_first=True):
        # (skipping the decode of the sequences just admitted gives this very order too)
        return ("every request finished a step late (a request with no new tokens is "
                "recorded ahead of one admitted before it); " +
                several_fit(LATE_HINTS, "finish order"))
    return admission or ("each step: admit (first come, first served, while the whole "
                         "request fits), append one token to every running sequence, then "
                         "record and free every sequence that holds prompt_len + new_tokens "
                         "tokens.")
