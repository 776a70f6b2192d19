"""Workbook 12's checks fail the classic wrong answers, with a hint that names the mistake.

Each wrong version is written the way a learner gets it wrong; each case asserts that the
check fails (not "not attempted") and that the printed hint contains the phrase that points
at the mistake. The right answers pass (the solutions notebook runs them too).
"""
import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import block_hashes as engine_block_hashes
from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import assert_caught, assert_several_fit, run_check


# -- task 1 -------------------------------------------------------------------------------------

def _hashes(chain=True, partial=False, parent0=None):
    def fn(tokens, page_size):
        out, parent = [], parent0
        stop = len(tokens) if partial else len(tokens) - page_size + 1
        for start in range(0, max(stop, 0), page_size):
            h = hash_block(parent if chain else parent0, tokens[start:start + page_size])
            out.append(h)
            parent = h
        return out
    return fn


def _hash_then_join(tokens, page_size):   # the parent chained in, but the tokens of block 0
    out, parent = [], None
    for start in range(0, len(tokens) - page_size + 1, page_size):
        parent = hash_block(parent, tokens[:start + page_size])   # every token so far
        out.append(parent)
    return out


def _one_short(tokens, page_size):
    return engine_block_hashes(tokens, page_size)[:-1] if len(tokens) > page_size else []


def _range_short(tokens, page_size):   # range stops one block early on page multiples
    return engine_block_hashes(tokens[:len(tokens) - 1], page_size) if len(tokens) else []


def _hex(tokens, page_size):
    return [h.hex() for h in engine_block_hashes(tokens, page_size)]


def _array(tokens, page_size):   # an array of bytes drops trailing zero bytes
    return np.array(engine_block_hashes(tokens, page_size))


def _truncating(tokens, page_size):   # right hashes; the trailing partial block deleted
    del tokens[len(tokens) // page_size * page_size:]
    return _hashes()(tokens, page_size)


HASH_MISTAKES = [
    ("partial block hashed", _hashes(partial=True), "hash full blocks only", ()),
    ("not chained", _hashes(chain=False), "chain", ()),
    ("both", _hashes(chain=False, partial=True), "two mistakes", ()),
    ("last full block dropped", _one_short, "one hash per full block", ()),
    ("range one short", _range_short, "one hash per full block", ("chain",)),
    ("every token so far", _hash_then_join, "hashed with all the tokens before it",
     ("full blocks only", "two mistakes")),
    # No known mistake produces these: the check fails them without naming one.
    ("hex strings", _hex, "the block hashes differ", ("chain", "full blocks only")),
    ("a numpy array", _array, "expected a list of hashes", ("read the error above",)),
    ("partial block cut off the caller's list", _truncating,
     "changed its input token_ids", ()),
]


# -- task 2 -------------------------------------------------------------------------------------

def _prefix(stop=True, cap=True, count_blocks=False):
    def fn(hashes, cached, num_tokens, page_size):
        pages = []
        for h in hashes:
            if h in cached:
                pages.append(cached[h])
            elif stop:
                break
        computed = len(pages) if count_blocks else len(pages) * page_size
        return pages, (min(computed, num_tokens - 1) if cap else computed)
    return fn


def _prefix_with_none(hashes, cached, num_tokens, page_size):
    pages = [cached.get(h) for h in hashes]
    return pages, min(sum(p is not None for p in pages) * page_size, num_tokens - 1)


def _prefix_pops(hashes, cached, num_tokens, page_size):
    pages = []
    for h in hashes:
        if h not in cached:
            break
        pages.append(cached.pop(h))
    return pages, min(len(pages) * page_size, num_tokens - 1)


def _always_minus_one(hashes, cached, num_tokens, page_size):
    pages, _ = _prefix()(hashes, cached, num_tokens, page_size)
    return pages, max(len(pages) * page_size - 1, 0)


def _truthy_page(hashes, cached, num_tokens, page_size):   # page 0 reads as a miss
    pages = []
    for h in hashes:
        page = cached.get(h)
        if not page:
            break
        pages.append(page)
    return pages, min(len(pages) * page_size, num_tokens - 1)


def _two_misses(hashes, cached, num_tokens, page_size):   # skips one missing block
    pages, missed = [], 0
    for h in hashes:
        if h not in cached:
            missed += 1
            if missed == 2:
                break
            continue
        pages.append(cached[h])
    return pages, min(len(pages) * page_size, num_tokens - 1)


def _swapped(hashes, cached, num_tokens, page_size):
    pages, computed = _prefix()(hashes, cached, num_tokens, page_size)
    return computed, pages


def _one_block_less(hashes, cached, num_tokens, page_size):   # "keep the last block"
    pages, _ = _prefix()(hashes, cached, num_tokens, page_size)
    pages = pages[:-1] if len(pages) == len(hashes) else pages
    return pages, len(pages) * page_size


def _prefix_pops_hashes(hashes, cached, num_tokens, page_size):   # right answer
    pages = []
    while hashes and hashes[0] in cached:
        pages.append(cached[hashes.pop(0)])
    return pages, min(len(pages) * page_size, num_tokens - 1)


PREFIX_MISTAKES = [
    ("past the first miss", _prefix(stop=False), "first miss", ()),
    ("full hit computes nothing", _prefix(cap=False), "num_tokens - 1", ()),
    ("blocks not tokens", _prefix(count_blocks=True), "counts tokens, not blocks", ()),
    ("None for misses", _prefix_with_none, "stop at the first miss", ()),
    ("takes the pages", _prefix_pops, "only reads", ()),
    ("always one token less", _always_minus_one, "the pages are right", ("first miss",)),
    ("drops the last block on a full hit", _one_block_less, "the prefix differs",
     ("first miss", "num_tokens - 1", "page 0")),
    ("page 0 is falsy", _truthy_page, "page 0 is a page like any other", ("first miss",)),
    ("one missing block skipped", _two_misses, "past the first block not in the cache",
     ("page 0",)),
    ("(num_computed, pages)", _swapped, "expected a pair", ("read the error above",)),
    ("pops the caller's hashes", _prefix_pops_hashes,
     "changed its input hashes", ()),
]


# -- task 3 -------------------------------------------------------------------------------------

def step_model(decodes_first=True, watermark_on=True, charge_running=True, chunk=True,
          use_budget=True, fcfs=True, strict=False, waiting_price="ceil", charge_waiting=True,
          budget_waiting=True, chunk_running=True, budget_running=True, stop_at=0, clamp=True,
          shifted=False, running_price="growth"):
    """The spec's schedule_step with switches, each a mistake when changed. running_price:
    "growth" (the pages this step's tokens add), "chunk" (ceil(n / page_size), as if it had
    none) or "whole" (its whole rest's pages); waiting_price: "ceil", "floor", "plus_one"
    (n // page_size + 1) or "whole" (the whole prompt's pages, the chunk forgotten)."""
    def fn(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
        batch, free = [], free_pages

        def pages(t):   # shifted: as if page_size were a power of two
            if shifted:
                return (t + page_size - 1) >> (page_size.bit_length() - 1)
            return -(-t // page_size)

        def size(req, is_running=False):
            n = req.num_tokens - req.num_computed
            budget_on = use_budget and (budget_running or not is_running)
            chunk_on = chunk and (chunk_running or not is_running)
            return min(n, budget if budget_on else n, max_chunk if chunk_on else n)

        def cost(req, n):
            return {"ceil": pages(n), "floor": n // page_size, "plus_one": n // page_size + 1,
                    "whole": pages(req.num_tokens)}[waiting_price]

        def run_running():
            nonlocal budget, free
            for req in running:
                if budget <= stop_at:
                    break
                n = size(req, is_running=True)
                grow = {"growth": pages(req.num_computed + n) - req.num_pages,
                        "whole": pages(req.num_tokens) - req.num_pages,
                        "chunk": pages(n)}[running_price]
                if charge_running:
                    free -= max(0, grow) if clamp else grow
                batch.append((req.rid, n))
                budget -= n

        def run_waiting():
            nonlocal budget, free
            for req in waiting:
                if budget <= stop_at:
                    break
                n = size(req)
                need = cost(req, n) + (watermark if watermark_on else 0)
                if need > free or (strict and need == free):
                    if fcfs:
                        break
                    continue
                free -= cost(req, n) if charge_waiting else 0
                batch.append((req.rid, n))
                budget -= n if budget_waiting else 0

        if decodes_first:
            run_running()
            run_waiting()
        else:
            run_waiting()
            run_running()
        return batch
    return fn


def _whole_prompts(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
    """Admits only prompts that fit the budget whole (no chunking, no budget overrun)."""
    batch = [(r.rid, min(r.num_tokens - r.num_computed, budget, max_chunk)) for r in running]
    budget -= sum(n for _, n in batch)
    for req in waiting:
        if req.num_tokens > budget:
            break
        batch.append((req.rid, req.num_tokens))
        budget -= req.num_tokens
    return batch


def _pops_admitted(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
    out = step_model()(running, waiting, budget, free_pages, watermark, page_size, max_chunk)
    admitted = {rid for rid, _ in out}
    waiting[:] = [r for r in waiting if r.rid not in admitted]   # "moved to running"
    return out


def _mutates(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
    out = step_model()(running, waiting, budget, free_pages, watermark, page_size, max_chunk)
    for req in running:
        req.num_computed = req.num_tokens
    return out


STEP_MISTAKES = [
    ("prefill first", step_model(decodes_first=False), "prefill before decodes", ()),
    ("watermark ignored", step_model(watermark_on=False), "watermark was ignored", ()),
    ("running pages not charged", step_model(charge_running=False), "were not counted", ()),
    ("no chunking", step_model(chunk=False), "chunked prefill", ()),
    ("budget exceeded", step_model(use_budget=False), "more tokens than the budget", ()),
    ("overtaking", step_model(fcfs=False), "first come, first served", ()),
    ("changes the requests", _mutates, "only plans", ()),
    ("admitted prompts popped", _pops_admitted, "changed its input waiting", ()),
    ("refuses an exact fit", step_model(strict=True), "fits exactly", ("watermark was ignored",)),
    ("cost rounded down", step_model(waiting_price="floor"), "rounded down", ("fits exactly",)),
    ("admitted pages kept", step_model(charge_waiting=False), "not taken from the pages left", ()),
    ("admitted tokens kept", step_model(budget_waiting=False), "not taken from the budget", ()),
    ("running not chunked", step_model(chunk_running=False), "running request got more than",
     ("watermark",)),
    ("running over the budget", step_model(budget_running=False), "more tokens than the budget",
     ("max_chunk",)),
    ("(rid, 0) once the budget is spent", step_model(stop_at=-1), "got 0 tokens", ()),
    ("spare pages counted as free", step_model(clamp=False), "max(0, ", ()),
    ("stops with one token left", step_model(stop_at=1), "the batch differs",
     ("more tokens than the budget", "0 tokens")),
    # No known mistake produces this one: the check fails it without naming one.
    ("running charged for the whole rest", step_model(running_price="whole"), "the batch differs",
     ("were not counted", "watermark was ignored", "longer than max_chunk",
      "more tokens than the budget")),
]


ALL = ([("block_hashes", *m) for m in HASH_MISTAKES] +
       [("cached_prefix", *m) for m in PREFIX_MISTAKES] +
       [("schedule_step", *m) for m in STEP_MISTAKES])


@pytest.mark.parametrize("task, name, impl, phrase, not_phrases", ALL,
                         ids=[f"{t}-{n}" for t, n, *_ in ALL])
def test_mistake_is_caught(task, name, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_every_task_has_six_mistakes():
    for task in ("block_hashes", "cached_prefix", "schedule_step"):
        assert sum(t == task for t, *_ in ALL) >= 6, task


def test_whole_prompts_fail_without_a_false_hint():
    result, printed = run_check("schedule_step", _whole_prompts)
    assert result.status == "failed", printed


@pytest.mark.parametrize("task, impl", [("block_hashes", engine_block_hashes),
                                        ("cached_prefix", _prefix()),
                                        ("schedule_step", step_model())])
def test_right_answer_passes(task, impl):
    result, printed = run_check(task, impl)
    assert result.status == "passed", printed


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError
    for task in ("block_hashes", "cached_prefix", "schedule_step"):
        assert run_check(task, stub)[0].status == "not attempted"


# -- the workbook's rule is the engine's --------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_schedule_step_reference_is_the_engines_scheduler(seed):
    """Without prefix hits, preemption or swapping (and with something running, where the
    engine applies the watermark), the engine's Scheduler picks exactly the batch the
    workbook's rule does: the lesson's claim that Task 3 is the engine's step."""
    import numpy as np

    from pagedattn_lab.engine.config import EngineConfig
    from pagedattn_lab.engine.kv_manager import KVCacheManager
    from pagedattn_lab.engine.request import Request, SamplingParams, Status
    from pagedattn_lab.engine.scheduler import Scheduler
    from pagedattn_lab.grading.checks_engine_step import _requests
    from pagedattn_lab.grading.engine_step_rules import reference_step

    rng = np.random.default_rng(seed)
    page_size = int(rng.choice([2, 4, 8]))
    budget = int(rng.integers(8, 80))
    max_chunk = int(rng.integers(4, budget + 1))
    running, waiting = _requests(rng, page_size)
    held = sum(r.num_pages for r in running)
    need = sum(max(0, -(-(r.num_computed + min(r.num_tokens - r.num_computed, max_chunk, budget))
                        // page_size) - r.num_pages) for r in running)
    num_pages = held + need + int(rng.integers(0, 16))   # tight: admission is priced
    config = EngineConfig(page_size=page_size, num_pages=num_pages, max_num_batched_tokens=budget,
                          max_prefill_chunk=max_chunk, max_num_seqs=64,
                          watermark=float(rng.integers(0, 4)) / num_pages + 1e-9,
                          enable_prefix_caching=False)
    kv = KVCacheManager(num_pages, page_size, enable_caching=False)
    sched = Scheduler(config, kv)
    token = iter(range(10**6))
    for r in running:
        prompt = [next(token) for _ in range(r.num_tokens)]
        req = Request(r.rid, prompt, SamplingParams(max_tokens=100))
        req.num_computed_tokens = r.num_computed
        req.pages = kv.pool.allocate(r.num_pages) if r.num_pages else []
        req.status = Status.RUNNING
        sched.running.append(req)
    for r in waiting:
        sched.add(Request(r.rid, [next(token) for _ in range(r.num_tokens)],
                          SamplingParams(max_tokens=100)))
    free = kv.pool.num_free
    step = sched.schedule()
    got = [(req.rid, n) for req, n in zip(step.requests, step.num_new)]
    assert got == reference_step(running, waiting, budget, free, config.watermark_pages,
                                  page_size, max_chunk)


def test_schedule_step_names_both_mistakes_that_give_the_batch_in_one_wording():
    # the first-come-first-served case: ignoring the watermark admits what leaving out the
    # running requests' new pages admits, here and on every probe
    assert_several_fit("schedule_step", step_model(watermark_on=False),
                       {"page_size": 4, "budget": 200, "max_chunk": 200, "watermark": 4},
                       "batch", ["watermark was ignored", "were not counted"])


def test_falsy_page_0_first_failure_names_page_0():
    """The learner reads the first failed case first: when page 0 holds block 0, a truthiness
    test returns no pages at all, and that case's hint must already name page 0."""
    result, printed = run_check("cached_prefix", _truthy_page)
    first = next(c for c in result.cases if not c.passed)
    assert "page 0" in first.hint, printed


def test_one_full_block_is_singular():
    """16 tokens in pages of 16 are "1 full block", not "1 full blocks"."""
    _, printed = run_check("block_hashes", _one_short)
    assert "16 tokens hold 1 full block of 16" in printed, printed
