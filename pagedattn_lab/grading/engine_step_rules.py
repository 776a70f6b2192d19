"""Lesson 12 Task 3's reference: one step of continuous batching as the engine plans it
(`pagedattn_lab.engine.scheduler` without prefix hits, preemption or swapping), each of its
rules switchable off. Every switch is a known mistake, listed in `MISTAKES` with its hint and
the mark a learner's batch shows when it is that mistake (checks_engine_step.py uses them).
"""
from __future__ import annotations

from .compare import pow2_div


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


def reference_step(running, waiting, budget, free_pages, watermark, page_size, max_chunk,
                    *, decodes_first=True, use_watermark=True, charge_running=True,
                    chunk=True, use_budget=True, fcfs=True, chunk_running=True,
                    partial=True, stop_when_spent=True, at_most=True, ceil_cost=True,
                    charge_waiting=True, budget_waiting=True, clamp=True, chunk_cost=True,
                    divide=True, charge_growth=True, exact_ceil=True, count_held=True,
                    subtract_held=True, in_pages=True, ceil_growth=True,
                    watermark_for_waiting_only=True, chunk_long=True, budget_in_tokens=True,
                    check_pages=True, whole_pages=True, charge_budget_once=True,
                    watermark_reserved_once=True, running_in_order=True,
                    waiting_in_order=True, pow2_ceil=None):
    """The engine's order with one rule switchable off (each switch is a known mistake;
    ceil_growth, a running request's new pages rounded down, only with ceil_cost, in
    COMBINED).
    `pow2_ceil`: the page count of divide=False, a ceil with shifts and masks (one of
    compare.pow2_ceil_forms; None: (tokens + page_size - 1) >> log2(page_size))."""
    out, free = [], free_pages

    def pages(tokens):   # (divide off: right for a power-of-two page_size only)
        if not whole_pages:
            return tokens / page_size
        if divide:
            return pages_for(tokens, page_size)
        return int(pow2_ceil(tokens)) if pow2_ceil else \
            pow2_div(tokens + page_size - 1, page_size)

    def size(req, is_running):
        n = req.num_tokens - req.num_computed
        if not chunk_long and not is_running and n > max_chunk:
            return None   # max_chunk taken for a limit on the prompt: a long one never runs
        if chunk and (chunk_running or not is_running):
            n = min(n, max_chunk)
        if use_budget:
            if not partial and n > budget:
                return None   # waits for a step with room for all of it
            n = min(n, budget)
        return n

    def spent():
        return budget <= 0 if stop_when_spent else budget < 0

    def run_running():
        nonlocal budget, free
        for req in running if running_in_order else running[::-1]:
            n = None if spent() else size(req, True)
            if n is None:
                break
            held = req.num_pages if count_held else pages(req.num_computed)
            filled = pages(req.num_computed + n) if ceil_growth else \
                (req.num_computed + n) // page_size
            grow = filled - (held if subtract_held else 0) if charge_growth else pages(n)
            if not watermark_for_waiting_only and max(0, grow) + watermark > free:
                break
            out.append((req.rid, n))
            budget -= (n if budget_in_tokens else 1) * (1 if charge_budget_once else 2)
            if charge_running:
                free -= max(0, grow) if clamp else grow
            if not watermark_reserved_once:
                free -= watermark

    def run_waiting():
        nonlocal budget, free
        for req in waiting if waiting_in_order else waiting[::-1]:
            n = None if spent() else size(req, False)
            if n is None:
                break
            priced = n if chunk_cost else req.num_tokens - req.num_computed
            if not in_pages:           # tokens taken for pages: one page per token
                cost = priced
            elif not ceil_cost:        # rounded down
                cost = priced // page_size
            elif not exact_ceil:       # one too many on a whole number of pages
                cost = priced // page_size + 1
            else:
                cost = pages(priced)
            need = cost + (watermark if use_watermark else 0)
            if check_pages and (need > free or (not at_most and need == free)):
                if fcfs:
                    break
                continue
            out.append((req.rid, n))
            budget -= (n if budget_in_tokens else 1) if budget_waiting else 0
            free -= cost if charge_waiting else 0

    if decodes_first:
        run_running()
        run_waiting()
    else:
        run_waiting()
        run_running()
    return out


def _admitted(batch, waiting):
    rids = {r.rid for r in waiting}
    return [rid for rid, _ in batch if rid in rids]


def _over_chunk(batch, reqs, max_chunk):
    rids = {r.rid for r in reqs}
    return any(n > max_chunk for rid, n in batch if rid in rids)


def _after_waiting(batch, running, waiting):
    """A running request comes after a waiting one in `batch`."""
    kinds = [rid in {r.rid for r in waiting} for rid, _ in batch
             if rid in {r.rid for r in running + waiting}]
    return any(kinds[i] and not kinds[j] for i in range(len(kinds))
               for j in range(i + 1, len(kinds)))


def _overtook(batch, waiting):
    """The prompts admitted in `batch` are not the first ones in arrival order."""
    admitted = _admitted(batch, waiting)
    return admitted != [r.rid for r in waiting][:len(admitted)]


def _out_of_order(batch, reqs):
    """`reqs`' pairs in `batch` are not in the order `reqs` lists them."""
    place = {r.rid: i for i, r in enumerate(reqs)}
    order = [place[rid] for rid, _ in batch if rid in place]
    return order != sorted(order)


def running_over_budget(batch, running, budget):
    rids = {r.rid for r in running}
    return sum(n for rid, n in batch if rid in rids) > budget


def _running_in(batch, running) -> int:
    rids = {r.rid for r in running}
    return sum(rid in rids for rid, _ in batch)


def _admits_more(got, expected, args):
    """More waiting prompts admitted in `got` than in `expected` (args[1]: the waiting)."""
    return len(_admitted(got, args[1])) > len(_admitted(expected, args[1]))


def _strict_prefix(got, expected):
    return len(got) < len(expected) and got == expected[:len(got)]


def _admits_fewer(got, expected, args):
    return len(_admitted(got, args[1])) < len(_admitted(expected, args[1]))


# (the rule, the hint, the mark the learner's batch shows when it is that mistake)
MISTAKES = [
    ("decodes_first", "prefill before decodes: the running requests come first (a decode is "
     "one token and keeps its request's latency low); the waiting prompts get what is left.",
     lambda got, exp, a: _after_waiting(got, a[0], a[1])),
    ("use_budget", "the step took more tokens than the budget: each request gets at most what "
     "is left of max_num_batched_tokens.", lambda got, exp, a: sum(n for _, n in got) > a[2]),
    ("chunk", "a prompt chunk was longer than max_chunk: prefill a long prompt in chunks of at "
     "most max_chunk tokens (chunked prefill).", lambda got, exp, a: _over_chunk(got, a[1], a[6])),
    ("chunk", "a prompt was sized without max_chunk: at min(wanted, budget left) tokens it "
     "cost more pages than are left and was refused, where a chunk of at most max_chunk "
     "tokens fits: prefill a long prompt in chunks (chunked prefill).",
     lambda got, exp, a: _admits_fewer(got, exp, a) and not _over_chunk(got, a[1], a[6])),
    ("use_watermark", "the watermark was ignored: admit a prompt only if cost + watermark <= "
     "the pages still free, to leave the running requests room to grow.",
     _admits_more),
    ("charge_running", "the running requests' new pages were not counted: they come out of the "
     "free pages before any waiting prompt is priced.",
     _admits_more),
    ("fcfs", "a later prompt overtook one that did not fit: admission is first come, first "
     "served; stop at the first waiting request that does not fit.",
     lambda got, exp, a: _overtook(got, a[1])),
    ("chunk_running", "a running request got more than max_chunk tokens: a prompt in the middle "
     "of its prefill goes on in chunks of at most max_chunk, like a waiting one.",
     lambda got, exp, a: _over_chunk(got, a[0], a[6])),
    ("partial", "a request that did not fit the budget left was left out: it gets a partial "
     "chunk, min(wanted, budget left, max_chunk) tokens, and the rest in later steps.",
     lambda got, exp, a: _strict_prefix(got, exp)),
    ("stop_when_spent", "a request got 0 tokens: stop when the budget is spent (budget left "
     "<= 0) instead of adding (rid, 0).", lambda got, exp, a: any(n == 0 for _, n in got)),
    ("at_most", "a prompt that fits exactly (cost + watermark == the pages left) was "
     "refused: admit it when cost + watermark <= the pages left.",
     lambda got, exp, a: _strict_prefix(got, exp)),
    ("ceil_cost", "a prompt chunk was priced in whole pages rounded down: n tokens take "
     "ceil(n / page_size) pages, a partly filled last page included.",
     _admits_more),
    ("charge_waiting", "an admitted prompt's pages were not taken from the pages left: the "
     "next prompt is priced against what the earlier ones left.",
     _admits_more),
    ("budget_waiting", "an admitted prompt's tokens were not taken from the budget: every "
     "request's tokens count against the step's one budget.",
     lambda got, exp, a: sum(n for _, n in got) > a[2]),
    ("clamp", "a running request that holds more pages than its tokens need (pages taken "
     "ahead) needs no new page, and gives none back: its cost is max(0, ceil((num_computed "
     "+ n) / page_size) - num_pages); without the max its spare pages were counted as free.",
     _admits_more),
    ("chunk_cost", "a prompt was priced at its whole length: this step writes only its chunk "
     "of n tokens, so it takes ceil(n / page_size) pages now (the rest come with later "
     "chunks).", _admits_fewer),
    ("divide", "shifts and masks (>> log2(page_size), & (page_size - 1)) stand for // and % "
     "only when page_size is a power of two, and here it is not: pages = ceil(tokens / "
     "page_size) = -(-tokens // page_size).", lambda got, exp, a: a[5] & (a[5] - 1) != 0),
    ("charge_growth", "a running request was charged ceil(n / page_size) pages, as if its n "
     "new tokens started a page of their own: they go on filling its last page, so it needs "
     "max(0, ceil((num_computed + n) / page_size) - num_pages) new pages (0 for most decodes).",
     _admits_fewer),
    ("exact_ceil", "n tokens take ceil(n / page_size) = -(-n // page_size) pages: "
     "n // page_size + 1 is one page too many when n is a multiple of page_size.",
     _admits_fewer),
    ("count_held", "a running request's new pages were counted from the pages its computed "
     "tokens fill, ceil(num_computed / page_size): it holds num_pages, some taken ahead, so "
     "it needs max(0, ceil((num_computed + n) / page_size) - num_pages).", _admits_fewer),
    ("subtract_held", "a running request was charged every page its tokens fill, "
     "ceil((num_computed + n) / page_size): it already holds num_pages of them, so it needs "
     "only max(0, ceil((num_computed + n) / page_size) - num_pages) new ones.", _admits_fewer),
    ("watermark_for_waiting_only", "a running request was held to the watermark: it keeps "
     "pages free for the running requests, so it prices only the waiting prompts; a running "
     "request's new pages come out of the free pages as they are (the caller guarantees them).",
     lambda got, exp, a: _running_in(got, a[0]) < _running_in(exp, a[0])),
    ("chunk_long", "a prompt longer than max_chunk was left waiting: max_chunk is the size "
     "of a chunk, not a limit on the prompt (a longer prompt would never run); it gets "
     "min(wanted, budget left, max_chunk) tokens now and the rest in later steps.",
     _admits_fewer),
    ("budget_in_tokens", "the budget was counted in requests, one per pair: it is a number "
     "of tokens, so each request's n new tokens come out of it (a prefill chunk spends many).",
     lambda got, exp, a: sum(n for _, n in got) > a[2]),
    ("in_pages", "a prompt chunk of n tokens was priced at n pages, one per token: a page "
     "holds page_size tokens, so it takes ceil(n / page_size) pages.", _admits_fewer),
]
RULES = tuple(dict.fromkeys(rule for rule, _, _ in MISTAKES))   # (a rule may show two marks)

# Mistakes no case is drawn for (the random batches find them), named wherever they give the
# batch, beside any hint of MISTAKES or COMBINED that gives it too (checks_engine_step._hint):
# (the rule, the hint, the mark), as in MISTAKES.
UNTARGETED = [
    ("check_pages", "a prompt was admitted without pricing its pages: admit a waiting prompt "
     "only if ceil(n / page_size) + watermark <= the pages left, and stop at the first that "
     "does not fit.", _admits_more),
    ("running_in_order", "the running requests were served last to first: serve them in the "
     "order given (the oldest first), so when the budget runs out the newest wait, not the "
     "oldest.", lambda got, exp, a: _out_of_order(got, a[0])),
    ("waiting_in_order", "the waiting prompts were taken last to first (as from the back of a "
     "stack, waiting.pop()): admit them in arrival order, the oldest first (first come, "
     "first served).", lambda got, exp, a: _overtook(got, a[1])),
    ("whole_pages", "pages were counted as fractions (tokens / page_size): a page is whole, "
     "so tokens take ceil(tokens / page_size) = -(-tokens // page_size) pages.", _admits_more),
    ("charge_budget_once", "the running requests' tokens were taken from the budget twice: "
     "each request's n tokens come out of it once, as its pair joins the batch, so the "
     "prompts after them get what is left of max_num_batched_tokens.",
     lambda got, exp, a: sum(n for _, n in got) < sum(n for _, n in exp)),
    ("watermark_reserved_once", "the watermark was taken from the free pages for every "
     "running request: it is held back once, as a waiting prompt is priced (cost + "
     "watermark <= the pages left), and a running request's charge is only its new pages, "
     "max(0, ceil((num_computed + n) / page_size) - num_pages).", _admits_fewer),
]

# Mistakes that switch several rules off at once, named only when no single one gives the
# batch: (the rules, the hint, the mark), as in MISTAKES.
COMBINED = [
    (("charge_running", "charge_waiting"), "every waiting prompt was priced against the "
     "original free_pages: take the running requests' new pages from it first, then each "
     "admitted prompt's pages, and price the next prompt against what is left.", _admits_more),
    (("chunk_long", "partial"), "a prompt was admitted only whole: one longer than "
     "max_chunk or than the budget left waited (a long prompt would wait forever); it gets "
     "a chunk of min(wanted, budget left, max_chunk) tokens now and the rest in later steps.",
     _admits_fewer),
    (("ceil_cost", "ceil_growth"), "pages were counted rounded down (tokens // page_size), for "
     "the running requests and the prompts alike: a partly filled page is still a page, so "
     "tokens take ceil(tokens / page_size) = -(-tokens // page_size) pages.", _admits_more),
]
