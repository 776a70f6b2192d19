"""Checks for lesson 12: block hashing, prefix lookup and one scheduler step of the engine.

The references are the engine's own rules (`pagedattn_lab.engine.prefix_cache` and
`scheduler`), restated here small enough to compare against. Every case is seeded and
random: prompt lengths that are, and are not, page multiples; caches with gaps; batches
whose budget, chunk limit and watermark each bind. A hint is given only when the learner's
answer IS what a known mistake produces.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..engine.prefix_cache import hash_block
from .report import Case, CheckResult, Mismatch, run_cases
from .seeds import case_rng


def _short(h) -> str:
    return h.hex()[:8] if isinstance(h, bytes) else repr(h)


def _show(hashes) -> str:
    return "[" + ", ".join(_short(h) for h in hashes) + "]" if isinstance(hashes, list) \
        else repr(hashes)


# -- task 1: block hashes ------------------------------------------------------------------

def _reference_hashes(tokens, page_size, chain=True, partial=False):
    out, parent = [], None
    stop = len(tokens) if partial else len(tokens) - page_size + 1
    for start in range(0, max(stop, 0), page_size):
        h = hash_block(parent if chain else None, tokens[start:start + page_size])
        out.append(h)
        parent = h
    return out


def _hash_case(fn, seed: int, page_size: int, num_tokens: int) -> None:
    rng = case_rng(seed)
    tokens = [int(t) for t in rng.integers(0, 1000, num_tokens)]
    expected = _reference_hashes(tokens, page_size)
    got = fn(list(tokens), page_size)
    got = list(got) if isinstance(got, (list, tuple)) else got
    if got == expected:
        return
    what = f"{num_tokens} tokens, page_size {page_size}"
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
    elif isinstance(got, list) and len(got) != len(expected):
        hint = (f"{num_tokens} tokens hold {num_tokens // page_size} full blocks of "
                f"{page_size}: one hash per full block.")
    else:   # no known mistake gives this: restate the spec
        hint = ("block i's hash is hash_block(parent, token_ids[i*page_size:(i+1)*page_size]) "
                "as returned (bytes), parent None for block 0 and block i-1's hash after.")
    raise Mismatch(f"{what}: the block hashes differ", hint, _show(expected), _show(got))


def block_hashes(fn) -> CheckResult:
    """Check `fn(token_ids, page_size)`: the chained hashes of the full blocks."""
    sizes = [(4, 12), (4, 13), (16, 15), (16, 16), (8, 41), (1, 5), (32, 100)]
    cases = [Case("random tokens", {"page_size": p, "num_tokens": n},
                  lambda i=i, p=p, n=n: _hash_case(fn, 1200 + i, p, n))
             for i, (p, n) in enumerate(sizes)]
    return run_cases("block_hashes", "block_hashes: chained hashes of full blocks", cases)


# -- task 2: the cached prefix ---------------------------------------------------------------

def _reference_prefix(hashes, cached, num_tokens, page_size, stop_at_miss=True, cap=True):
    pages = []
    for h in hashes:
        if h in cached:
            pages.append(cached[h])
        elif stop_at_miss:
            break
    computed = len(pages) * page_size
    return pages, (min(computed, num_tokens - 1) if cap else computed)


def _prefix_case(fn, seed: int, page_size: int, num_tokens: int, pattern: str) -> None:
    rng = case_rng(seed)
    hashes = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in
              range(num_tokens // page_size)]
    hit = {"all": len(hashes), "none": 0}.get(pattern, int(rng.integers(1, len(hashes))))
    cached = {h: int(p) for h, p in zip(hashes[:hit], rng.choice(200, hit, replace=False))}
    if pattern == "gap":   # a later block is cached too, past the first miss
        cached[hashes[-1]] = 500
    for _ in range(5):   # other prompts' blocks
        cached[bytes(rng.integers(0, 256, 32, dtype=np.uint8))] = int(rng.integers(200, 400))
    expected = _reference_prefix(hashes, cached, num_tokens, page_size)
    snapshot = dict(cached)
    got = fn(list(hashes), cached, num_tokens, page_size)
    what = (f"a {num_tokens}-token prompt ({len(hashes)} full blocks of {page_size}), "
            f"{pattern} cached")
    if cached != snapshot:
        raise Mismatch(f"{what}: the cache was changed", "a lookup only reads `cached`; the "
                       "engine takes the pages (touch) after it decides to admit.")
    if not (isinstance(got, tuple) and len(got) == 2):
        raise Mismatch(f"{what}: expected a pair (pages, num_computed)", "return pages, "
                       "num_computed.", "(list, int)", repr(got))
    got = (list(got[0]), got[1])
    if got[0] == expected[0] and got[1] == expected[1]:
        return
    hint = ""
    if got == _reference_prefix(hashes, cached, num_tokens, page_size, stop_at_miss=False):
        hint = ("the lookup went on past the first block not in the cache: a block's K/V are "
                "only valid after ALL the blocks before it, so the prefix stops at the first "
                "miss.")
    elif got == _reference_prefix(hashes, cached, num_tokens, page_size, cap=False):
        hint = ("every token of this prompt is cached, but the last one must still be computed: "
                "its logits give the first output token. num_computed is at most "
                "num_tokens - 1.")
    elif got[0] == expected[0] and got[1] == len(got[0]):
        hint = "num_computed counts tokens, not blocks: len(pages) * page_size (capped)."
    elif got[0] == expected[0]:
        hint = "the pages are right; num_computed = min(len(pages) * page_size, num_tokens - 1)."
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
             (16, 70, "gap"), (4, 20, "part"), (2, 12, "all")]
    cases = [Case("random hashes", {"page_size": p, "num_tokens": n, "cached": pat},
                  lambda i=i, p=p, n=n, pat=pat: _prefix_case(fn, 1210 + i, p, n, pat))
             for i, (p, n, pat) in enumerate(specs)]
    return run_cases("cached_prefix", "cached_prefix: the longest cached run of full blocks",
                     cases)


# -- task 3: one scheduler step ---------------------------------------------------------------

def _pages(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


def _reference_step(running, waiting, budget, free_pages, watermark, page_size, max_chunk,
                    *, decodes_first=True, use_watermark=True, charge_running=True,
                    chunk=True, use_budget=True, fcfs=True):
    """The engine's order with one rule switchable off (each switch is a known mistake)."""
    out, free = [], free_pages
    big = 10 ** 9

    def size(req):
        n = req.num_tokens - req.num_computed
        return min(n, budget if use_budget else big, max_chunk if chunk else big)

    def run_running():
        nonlocal budget, free
        for req in running:
            if budget <= 0:
                break
            n = size(req)
            out.append((req.rid, n))
            budget -= n
            if charge_running:
                free -= max(0, _pages(req.num_computed + n, page_size) - req.num_pages)

    def run_waiting():
        nonlocal budget, free
        for req in waiting:
            if budget <= 0:
                break
            n = size(req)
            cost = _pages(n, page_size)
            if cost + (watermark if use_watermark else 0) > free:
                if fcfs:
                    break
                continue
            out.append((req.rid, n))
            budget -= n
            free -= cost

    if decodes_first:
        run_running()
        run_waiting()
    else:
        run_waiting()
        run_running()
    return out


_RULES = ("decodes_first", "use_budget", "chunk", "use_watermark", "charge_running", "fcfs")


def _requests(rng, page_size):
    running = []
    for rid in range(int(rng.integers(1, 5))):
        prompt = int(rng.integers(3, 40))
        if rng.random() < 0.7:   # decoding: everything but the newest token is cached
            tokens = prompt + int(rng.integers(1, 20))
            computed = tokens - 1
        else:                    # a prompt in the middle of its chunked prefill
            tokens, computed = prompt, int(rng.integers(1, prompt))
        running.append(SimpleNamespace(rid=rid, num_tokens=tokens, num_computed=computed,
                                       num_pages=_pages(computed, page_size)))
    waiting = [SimpleNamespace(rid=10 + i, num_tokens=int(rng.integers(2, 60)), num_computed=0,
                               num_pages=0) for i in range(int(rng.integers(2, 6)))]
    return running, waiting


def _draw_step(seed: int, page_size: int, budget: int, max_chunk: int, watermark: int,
               exposes: str):
    """Random requests and free pages from `seed`, drawn again until switching the rule
    `exposes` off changes the batch: the case then fails an answer that forgets that rule."""
    rng = case_rng(seed)
    for _ in range(1000):
        running, waiting = _requests(rng, page_size)
        need = sum(_pages(r.num_computed + min(r.num_tokens - r.num_computed, max_chunk),
                          page_size) - r.num_pages for r in running)
        free = need + watermark + int(rng.integers(0, 12))
        args = (running, waiting, budget, free, watermark, page_size, max_chunk)
        expected = _reference_step(*args)
        wrong = _reference_step(*args, **{exposes: False})
        others = [_reference_step(*args, **{rule: False}) for rule in _RULES if rule != exposes]
        if wrong != expected and wrong not in others:
            return running, waiting, free, expected
    raise RuntimeError(f"no case exposes {exposes} (seed {seed})")   # a bug in this module


def _step_case(fn, seed: int, page_size: int, budget: int, max_chunk: int, watermark: int,
               exposes: str) -> None:
    running, waiting, free, expected = _draw_step(seed, page_size, budget, max_chunk,
                                                  watermark, exposes)
    args = (running, waiting, budget, free, watermark, page_size, max_chunk)
    before = [vars(r).copy() for r in running + waiting]
    got = fn(list(running), list(waiting), budget, free, watermark, page_size, max_chunk)
    desc = (f"{len(running)} running {[(r.rid, r.num_tokens, r.num_computed) for r in running]}"
            f", {len(waiting)} waiting {[(r.rid, r.num_tokens) for r in waiting]} "
            f"(rid, tokens[, computed]); {free} free pages")
    if [vars(r) for r in running + waiting] != before:
        raise Mismatch(f"{desc}: the requests were changed", "the step only plans: return the "
                       "(rid, num_new) pairs; the engine updates the requests after the forward "
                       "pass.")
    try:
        got = [(int(rid), int(n)) for rid, n in got]
    except (TypeError, ValueError):
        raise Mismatch(f"{desc}: expected a list of (rid, num_new) pairs", "return a list "
                       "of (rid, num_new) tuples in batch order.", repr(expected),
                       repr(got)) from None
    if got == expected:
        return
    variants = [
        ("prefill before decodes: the running requests come first (a decode is one token and "
         "keeps its request's latency low); the waiting prompts get what is left.",
         dict(decodes_first=False)),
        ("the step took more tokens than the budget: each request gets at most what is left "
         "of max_num_batched_tokens.", dict(use_budget=False)),
        ("a prompt chunk was longer than max_chunk: prefill a long prompt in chunks of at most "
         "max_chunk tokens (chunked prefill).", dict(chunk=False)),
        ("the watermark was ignored: admit a prompt only if cost + watermark <= the pages "
         "still free, to leave the running requests room to grow.", dict(use_watermark=False)),
        ("the running requests' new pages were not counted: they come out of the free pages "
         "before any waiting prompt is priced.", dict(charge_running=False)),
        ("a later prompt overtook one that did not fit: admission is first come, first served; "
         "stop at the first waiting request that does not fit.", dict(fcfs=False)),
    ]
    matching = [h for h, kw in variants if _reference_step(*args, **kw) == got]
    hint = matching[0] if len(matching) == 1 else (
        "this batch is what either of these mistakes gives: " + " OR ".join(matching)
        if matching else "")
    if not hint and sum(n for _, n in got) > budget:
        hint = (f"the step holds {sum(n for _, n in got)} tokens, more than the budget "
                f"{budget}.")
    elif not hint:   # no known mistake gives this: restate the spec
        hint = ("running requests first, each min(wanted, budget left, max_chunk) tokens; then "
                "waiting prompts while cost + watermark <= pages left; compare with the "
                "expected batch above.")
    raise Mismatch(f"{desc}: the batch differs", hint, repr(expected), repr(got))


def schedule_step(fn) -> CheckResult:
    """Check `fn(running, waiting, budget, free_pages, watermark, page_size, max_chunk)`."""
    specs = [  # page_size, budget, max_chunk, watermark; the rule the case cannot do without
        (4, 64, 64, 0, "decodes_first"), (4, 32, 16, 0, "chunk"), (8, 48, 12, 2, "use_watermark"),
        (4, 20, 20, 3, "use_budget"), (16, 128, 32, 1, "charge_running"),
        (4, 200, 200, 4, "fcfs"), (2, 24, 8, 2, "use_watermark"), (8, 16, 16, 0, "use_budget")]
    cases = [Case("random batch", {"page_size": p, "budget": b, "max_chunk": c,
                                   "watermark": w},
                  lambda i=i, p=p, b=b, c=c, w=w, e=e: _step_case(fn, 1220 + i, p, b, c, w, e))
             for i, (p, b, c, w, e) in enumerate(specs)]
    return run_cases("schedule_step", "schedule_step: one step of continuous batching", cases)
