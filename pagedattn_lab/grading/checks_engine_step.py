"""Check for lesson 12's Task 3: one step of continuous batching under a token budget.

The reference (engine_step_rules.py) is the engine's rule (`pagedattn_lab.engine.scheduler`
without prefix hits, preemption or swapping) with each of its parts switchable off: every
switch is a known mistake. Each case is drawn (seeded) until switching its rule off changes
the batch in a way no other switch does, so an answer that forgets that rule fails there
with the hint that names it; a final case compares many random batches, for the mistakes no
switch names. A hint is given only when the learner's batch IS what the mistake produces,
here and on the same inputs a little changed (more pages, no watermark, a budget one off),
and shows its mark (a chunk over max_chunk, more tokens than the budget, a prompt that
overtook...); a known pair of mistakes made at once is named when no single one fits.
"""
from __future__ import annotations

from types import SimpleNamespace

from .compare import changed_input, pow2_ceil_forms
from .engine_step_rules import (COMBINED, MISTAKES, RULES, UNTARGETED, pages_for,
                                reference_step, running_over_budget)
from .report import Case, CheckResult, Mismatch, probe, run_cases, several_fit
from .seeds import case_rng


def _batch(fn, args):
    """The learner's batch for `args` (fresh copies of the requests), None if it fails."""
    def batch():
        copies = [[SimpleNamespace(**vars(r)) for r in reqs] for reqs in args[:2]]
        return [(int(rid), int(n)) for rid, n in fn(*copies, *args[2:])]
    return probe(batch)


def _probes(args):
    """The case's inputs with more pages, no watermark, a budget one smaller or larger: the
    running requests' new pages still fit (they never need more than min(wanted, max_chunk))."""
    running, waiting, budget, free, watermark, page_size, max_chunk = args
    return [(running, waiting, budget, 10 ** 6, watermark, page_size, max_chunk),
            (running, waiting, budget, free + 1, watermark, page_size, max_chunk),
            (running, waiting, budget, free, 0, page_size, max_chunk),
            (running, waiting, budget - 1, free, watermark, page_size, max_chunk),
            (running, waiting, budget + 1, free, watermark, page_size, max_chunk)]


def _new_pages(req, n: int, page_size: int) -> int:
    """The pages a running request takes for n more tokens: none where those it holds (some
    taken ahead) already have room."""
    return max(0, pages_for(req.num_computed + n, page_size) - req.num_pages)


def _tight_probe(args):
    """The case's inputs with free_pages one short of what the running requests' new pages,
    the watermark and the first prompt's chunk need (it is refused): a prompt priced against
    the original free_pages is admitted. Empty when the running requests need no new page or
    the first prompt gets no tokens: then it tells nothing."""
    running, waiting, budget, _, watermark, page_size, max_chunk = args
    batch = dict(reference_step(running, waiting, budget, 10 ** 6, watermark, page_size,
                                max_chunk))
    need = sum(_new_pages(r, batch[r.rid], page_size) for r in running if r.rid in batch)
    if not need or not waiting or waiting[0].rid not in batch:
        return []
    free = need + watermark + pages_for(batch[waiting[0].rid], page_size) - 1
    return [(running, waiting, budget, free, watermark, page_size, max_chunk)]


def _one_short(got, expected, args) -> str | None:
    """The hint when the first pair that differs gives its request one token less than
    max_chunk or than the budget left, the limit the expected chunk reached."""
    i = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
    if i is None or got[i][0] != expected[i][0] or got[i][1] != expected[i][1] - 1:
        return None
    (rid, n), left = expected[i], args[2] - sum(n for _, n in expected[:i])
    if n == args[6]:
        limit = "max_chunk"
    elif n == left:
        limit = "the budget left"
    else:
        return None   # (it wanted n: another mistake's count)
    return (f"request {rid} got {n - 1} tokens where {limit} allowed {n}: a chunk is "
            "min(wanted, budget left, max_chunk), up to each limit itself (an off by one).")


def _decode_sized(got, expected, running) -> str | None:
    """The hint when every running request got 1 token, as a decode does, and one of them,
    mid-prefill, is given more in the expected batch (a single 1 may be a budget's end)."""
    wanted = {r.rid: r.num_tokens - r.num_computed for r in running}
    given, ran = dict(expected), [(rid, n) for rid, n in got if rid in wanted]
    rid = next((rid for rid, _ in ran if given.get(rid, 1) > 1), None)
    if rid is None or any(n != 1 for _, n in ran):
        return None
    return (f"running request {rid} is mid-prefill: it wants num_tokens - num_computed = "
            f"{wanted[rid]} tokens, not 1 as a decode does; each running request gets "
            "min(wanted, budget left, max_chunk).")


def _forms(rule: str, page_size: int) -> list[dict]:
    """The ways a learner makes the mistake `rule` names, as reference_step's keywords: a
    page count with shifts and masks in any mix (divide; the shift alone first, the form
    the cases are drawn for), every other rule in its one way."""
    if rule != "divide" or not page_size & (page_size - 1):
        return [{}]
    return [{}] + [{"pow2_ceil": ceil} for ceil, _ in pow2_ceil_forms(page_size)]


def _hint(fn, got, expected, args) -> str:
    """The hint of the mistakes that give `got` here AND on every probe (the same inputs a
    little changed; every one of them, when several do): a batch that a mistake gives by
    coincidence is not named."""
    probes = [(p, _batch(fn, p)) for p in _probes(args)]
    # a prompt priced whole admits fewer, as does a running request priced whole: with no
    # running request only the first does
    alone = ([], *args[1:])
    # the admitted prompts' pages kept alone admit what keeping the running requests' too
    # admits, where the running requests need few pages: free pages one short tell them apart
    tight = [(p, _batch(fn, p)) for p in _tight_probe(args)]
    probes_of = {("chunk_cost",): probes + [(alone, _batch(fn, alone))],
                 ("charge_waiting",): probes + tight,
                 **{rules: probes + tight for rules, _, _ in COMBINED}}

    def gives_got(rules, mark, **form):   # the learner's batch, here and on every probe
        off = dict.fromkeys(rules, False) | form
        return mark(got, expected, args) and reference_step(*args, **off) == got and \
            all(reference_step(*p, **off) == b for p, b in probes_of.get(rules, probes))

    matching = ([hint for rule, hint, mark in MISTAKES
                 if any(gives_got((rule,), mark, **form) for form in _forms(rule, args[5]))] or
                [hint for rules, hint, mark in COMBINED if gives_got(rules, mark)]) + \
        [hint for rule, hint, mark in UNTARGETED if gives_got((rule,), mark)]
    if matching:
        return several_fit(matching, "batch")
    if sum(n for _, n in got) > args[2]:   # what the batch shows, whatever the cause
        return f"the step holds {sum(n for _, n in got)} tokens, more than the budget {args[2]}."
    over = [rid for rid, n in got if n > args[6]]
    if over:
        return f"request {over[0]} got more than max_chunk = {args[6]} tokens."
    short = _one_short(got, expected, args) or _decode_sized(got, expected, args[0])
    if short:
        return short
    wants = {r.rid: r.num_tokens - r.num_computed for r in args[0] + args[1]}
    greedy = [(rid, n) for rid, n in got if n > wants.get(rid, n)]
    if greedy:
        rid, n = greedy[0]
        return (f"request {rid} got {n} tokens but wants only num_tokens - num_computed = "
                f"{wants[rid]} (a decode wants 1): its num_computed tokens are cached "
                "already.")
    if any(n <= 0 for _, n in got):
        return ("a request got 0 tokens: stop when the budget is spent (budget left <= 0) "
                "instead of adding (rid, 0).")
    return ("running requests first, each min(wanted, budget left, max_chunk) tokens; then "
            "waiting prompts while cost + watermark <= pages left; compare with the expected "
            "batch above.")   # no known mistake gives this: restate the spec


def _requests(rng, page_size):
    running = []
    for rid in range(int(rng.integers(1, 5))):
        prompt = int(rng.integers(3, 40))
        if rng.random() < 0.7:   # decoding: everything but the newest token is cached
            tokens = prompt + int(rng.integers(1, 20))
            computed = tokens - 1
        else:                    # a prompt in the middle of its chunked prefill
            tokens, computed = prompt, int(rng.integers(1, prompt))
        # some hold pages taken ahead (the engine's lookahead): more than their tokens need
        ahead = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0
        running.append(SimpleNamespace(rid=rid, num_tokens=tokens, num_computed=computed,
                                       num_pages=pages_for(computed, page_size) + ahead))
    waiting = [SimpleNamespace(rid=10 + i, num_tokens=int(rng.integers(2, 60)), num_computed=0,
                               num_pages=0) for i in range(int(rng.integers(2, 6)))]
    return running, waiting


def _draw(rng, page_size, budget, max_chunk, watermark, under_watermark=False):
    """`under_watermark`: fewer free pages than the running requests' new pages and the
    watermark need together (they still fit: the watermark only prices waiting prompts)."""
    running, waiting = _requests(rng, page_size)
    need = sum(_new_pages(r, min(r.num_tokens - r.num_computed, max_chunk), page_size)
               for r in running)
    free = need + (int(rng.integers(0, watermark)) if under_watermark else
                   watermark + int(rng.integers(0, 12)))
    return running, waiting, budget, free, watermark, page_size, max_chunk


def _draw_step(seed: int, page_size: int, budget: int, max_chunk: int, watermark: int,
               exposes: str, running_only: bool = False):
    """Random requests and free pages from `seed`, drawn again until switching the rule
    `exposes` off changes the batch, as no other switch does and with the mistake's mark:
    the case then fails an answer that forgets that rule, with the hint that names it.
    `running_only`: the running requests alone take more than the budget (the rule forgotten
    for them only gives the same batch)."""
    rng = case_rng(seed)
    mark = next(m for rule, _, m in MISTAKES if rule == exposes)
    for _ in range(3000):
        args = _draw(rng, page_size, budget, max_chunk, watermark,
                     exposes == "watermark_for_waiting_only")
        expected = reference_step(*args)
        wrong = reference_step(*args, **{exposes: False})
        others = [reference_step(*args, **{rule: False}) for rule in RULES if rule != exposes]
        if wrong != expected and wrong not in others and mark(wrong, expected, args) and \
                (not running_only or running_over_budget(wrong, args[0], budget)):
            return args, expected
    raise RuntimeError(f"no case exposes {exposes} (seed {seed})")   # a bug in this module


_LISTS_HINT = ("the step only plans: return the (rid, num_new) pairs; the engine moves an "
               "admitted request from waiting to running after the forward pass (do not pop, "
               "remove, sort or append)")


def _changes(before, reqs) -> list[str]:
    """Each field an answer changed in the requests: which request, which field, the value it
    was given and the value it left."""
    def value(fields, key):
        return fields.get(key, "unset")
    return [f"request {old['rid']}'s {key} went from {value(old, key)} to {value(vars(r), key)}"
            for old, r in zip(before, reqs)
            for key in list(old) + [k for k in vars(r) if k not in old]
            if value(old, key) != value(vars(r), key)]


def _compare(fn, args, expected, where: str = "") -> None:
    running, waiting, budget, free = args[:4]
    before = [vars(r).copy() for r in running + waiting]
    passed = {"running": list(running), "waiting": list(waiting)}
    # num_pages too: some running requests hold pages taken ahead, which their new pages count
    desc = (f"{where}{len(running)} running (rid, tokens, computed, pages held) "
            f"{[(r.rid, r.num_tokens, r.num_computed, r.num_pages) for r in running]}, "
            f"{len(waiting)} waiting (rid, tokens) {[(r.rid, r.num_tokens) for r in waiting]}; "
            f"{free} free pages")
    got = fn(*passed.values(), *args[2:])   # after `desc`: it shows the inputs as given
    changes = _changes(before, running + waiting)
    if changes:
        raise Mismatch(f"{desc}: the requests were changed ({changes[0]})", "the step only "
                       "plans: return the (rid, num_new) pairs; the engine updates the requests "
                       "after the forward pass.")
    for name, given in (("running", running), ("waiting", waiting)):
        changed = changed_input("schedule_step", {name: given}, passed, {name: _LISTS_HINT})
        if changed:
            raise Mismatch(f"{desc}: {changed.message}", changed.hint,
                           f"{name} rids {[r.rid for r in given]}",
                           f"{name} rids {[getattr(r, 'rid', r) for r in passed[name]]}")
    try:
        got = [(int(rid), int(n)) for rid, n in got]
    except (TypeError, ValueError):
        raise Mismatch(f"{desc}: expected a list of (rid, num_new) pairs", "return a list "
                       "of (rid, num_new) tuples in batch order.", repr(expected),
                       repr(got)) from None
    if got != expected:
        raise Mismatch(f"{desc}: the batch differs", _hint(fn, got, expected, args),
                       repr(expected), repr(got))


def _step_case(fn, seed: int, page_size: int, budget: int, max_chunk: int, watermark: int,
               exposes: str, running_only: bool = False) -> None:
    args, expected = _draw_step(seed, page_size, budget, max_chunk, watermark, exposes,
                                running_only)
    _compare(fn, args, expected)


def _sweep_case(fn, seed: int, count: int) -> None:
    """`count` random batches, sizes drawn too; the first one that differs fails."""
    rng = case_rng(seed)
    for _ in range(count):
        page_size = int(rng.choice([2, 4, 8, 16]))
        budget = int(rng.integers(4, 80))
        max_chunk, watermark = int(rng.integers(2, budget + 8)), int(rng.integers(0, 5))
        args = _draw(rng, page_size, budget, max_chunk, watermark)
        _compare(fn, args, reference_step(*args), f"page_size {page_size}, budget {budget}, "
                 f"max_chunk {max_chunk}, watermark {watermark}: ")


# What each targeted case is drawn to expose (the rule an answer cannot do without there),
# printed as the case's name: a learner who fails a case reads which rule it tests.
TARGETS = {
    "decodes_first": "running requests before waiting prompts",
    "chunk": "a prompt chunk of at most max_chunk",
    "use_watermark": "the watermark left free",
    "use_budget": "the step's token budget",
    "charge_running": "the running requests' new pages taken first",
    "fcfs": "first come, first served",
    "chunk_running": "a running prefill's chunk of at most max_chunk",
    "partial": "a partial chunk where the budget runs out",
    "stop_when_spent": "no request once the budget is spent",
    "at_most": "a prompt that fits the pages left exactly",
    "ceil_cost": "a chunk's pages rounded up",
    "charge_waiting": "each admitted prompt's pages taken",
    "budget_waiting": "each admitted prompt's tokens taken from the budget",
    "clamp": "pages taken ahead, none given back",
    "chunk_cost": "a prompt priced by its chunk",
    "divide": "a page size that is not a power of two",
    "charge_growth": "new tokens that fill a running request's last page",
    "exact_ceil": "a chunk of a whole number of pages",
    "watermark_for_waiting_only": "running requests' new pages below the watermark",
}


def schedule_step(fn) -> CheckResult:
    """Check `fn(running, waiting, budget, free_pages, watermark, page_size, max_chunk)`."""
    specs = [  # page_size, budget, max_chunk, watermark; the rule the case cannot do without
        (4, 64, 64, 0, "decodes_first"), (4, 32, 16, 0, "chunk"), (8, 48, 12, 2, "use_watermark"),
        (4, 20, 20, 3, "use_budget"), (16, 128, 32, 1, "charge_running"),
        (4, 200, 200, 4, "fcfs"), (2, 24, 8, 2, "use_watermark"), (8, 16, 16, 0, "use_budget"),
        (4, 48, 10, 1, "chunk_running"), (4, 24, 24, 1, "use_budget", True),
        (4, 30, 16, 1, "partial"), (4, 20, 20, 0, "stop_when_spent"), (4, 64, 24, 2, "at_most"),
        (8, 64, 20, 1, "ceil_cost"), (4, 80, 24, 1, "charge_waiting"),
        (4, 40, 16, 0, "budget_waiting"), (4, 64, 16, 1, "clamp"), (4, 64, 8, 1, "chunk_cost"),
        (6, 64, 20, 1, "divide"),   # (every page_size but this one is a power of two)
        (4, 64, 16, 1, "charge_growth"), (4, 64, 16, 1, "exact_ceil"),
        (4, 64, 16, 3, "watermark_for_waiting_only")]
    cases = [Case("targets " + TARGETS[e] + (", running requests alone over it" if r else ""),
                  {"page_size": p, "budget": b, "max_chunk": c, "watermark": w},
                  lambda i=i, p=p, b=b, c=c, w=w, e=e, r=r: _step_case(fn, 1220 + i, p, b, c,
                                                                       w, e, *r))
             for i, (p, b, c, w, e, *r) in enumerate(specs)]
    cases.append(Case("300 random batches, sizes drawn too", {},
                      lambda: _sweep_case(fn, 1240, 300)))
    return run_cases("schedule_step", "schedule_step: one step of continuous batching", cases)
