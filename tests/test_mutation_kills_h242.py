"""Tests that kill mutants of the scheduler under which every earlier engine test still
passed: the watermark on an idle engine, the predictive reservation, and where `rollback`
puts a swapped victim. Each test names the mutant it kills."""
from pagedattn_lab.engine import EngineConfig
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, SamplingParams, Status
from pagedattn_lab.engine.scheduler import Scheduler


def _scheduler(**overrides) -> Scheduler:
    config = EngineConfig(**{"enable_prefix_caching": False, "watermark": 0.0, **overrides})
    kv = KVCacheManager(config.num_pages, config.page_size,
                        enable_caching=config.enable_prefix_caching,
                        num_host_pages=config.num_host_pages)
    return Scheduler(config, kv)


def _queue(sched: Scheduler, *prompt_lens: int) -> list[Request]:
    reqs = [Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=64))
            for rid, n in enumerate(prompt_lens)]
    for req in reqs:
        sched.add(req)
    return reqs


def _forward(step) -> None:
    """What the model does with a step: its tokens are computed, and a request whose every
    token is computed samples one more."""
    for req, n in zip(step.requests, step.num_new):
        req.num_computed_tokens += n
        if req.num_computed_tokens == req.num_tokens:
            req.output_ids.append(7)


# -- the watermark ---------------------------------------------------------------------------

def test_an_idle_engine_admits_a_request_that_leaves_less_than_the_watermark_free():
    # mutant: `_room` reserves the watermark with nothing running: a request needing 9 of 10
    # free pages (watermark 2) waited for pages no one would ever give back, every step empty
    sched = _scheduler(page_size=4, num_pages=10, watermark=0.2, max_num_batched_tokens=64)
    (req,) = _queue(sched, 36)
    step = sched.schedule()
    assert step.requests == [req] and step.num_new == [36]
    assert len(req.pages) == 9 and sched.kv.pool.num_free == 1


def test_a_swapped_request_comes_back_to_an_idle_engine_past_the_watermark():
    # the same mutant on the swap-in path: the request swapped out needs 7 of the 10 pages
    # (watermark 4); once the one that preempted it finishes, nothing else runs
    sched = _scheduler(page_size=2, num_pages=10, watermark=0.4, max_num_batched_tokens=64,
                       max_prefill_chunk=2, preemption_mode="swap", num_host_pages=10)
    old, new = _queue(sched, 2, 17)
    for _ in range(6):   # old decodes, new prefills 2 tokens a step, until the pool is dry
        _forward(sched.schedule())
    step = sched.schedule()
    assert step.swapped_out == [new] and len(new.host_pages) == 6
    _forward(step)
    sched.finish(old, "stop")
    assert not sched.running and sched.kv.pool.num_free == 10
    assert sched.kv.swap_in_cost(new, 2) == 7
    step = sched.schedule()
    assert step.swapped_in == [new] and step.num_new == [2]


# -- the predictive reservation --------------------------------------------------------------

def test_a_predictive_reservation_covers_the_rest_of_a_chunked_prompt():
    # mutant: `lookahead = remaining`: a prompt prefilled in chunks reserved pages for its
    # first chunk and the expected output only, so its later chunks took pages as they ran
    # (the shortage mid-run the reservation is there to prevent)
    sched = _scheduler(page_size=4, num_pages=20, max_num_batched_tokens=4,
                       allocation="predictive", expected_output_len=4)
    (req,) = _queue(sched, 16)
    step = sched.schedule()
    assert step.num_new == [4]
    assert len(req.pages) == 5   # the prompt's 16 tokens and 4 of output
    for _ in range(3):   # the later chunks take no page
        _forward(step)
        step = sched.schedule()
        assert step.num_new == [4] and sched.kv.pool.num_free == 15


def test_a_request_whose_reservation_does_not_fit_waits_while_others_run():
    # mutant: the idle engine's fallback (the reservation dropped when it does not fit) also
    # taken while a request runs: the second request came in without its reservation, though
    # the first would finish and give its pages back
    sched = _scheduler(page_size=4, num_pages=8, max_num_batched_tokens=64,
                       allocation="predictive", expected_output_len=8)
    first, second = _queue(sched, 4, 16)   # 3 pages; 6 pages, 4 of them its prompt's
    step = sched.schedule()
    assert step.requests == [first] and len(first.pages) == 3
    assert list(sched.waiting) == [second] and sched.kv.pool.num_free == 5
    sched.finish(first, "stop")
    step = sched.schedule()
    assert step.requests == [second] and len(second.pages) == 6


# -- rollback --------------------------------------------------------------------------------

def test_a_failed_step_leaves_its_swapped_victim_at_the_front_as_the_step_put_it():
    # mutant: `rollback` re-queued a swapped victim at the back: it came back after a
    # request swapped out before it, not first as the preemption had put it
    sched = _scheduler(page_size=1, num_pages=6, max_num_batched_tokens=64,
                       preemption_mode="swap", num_host_pages=10)
    a, b, c = _queue(sched, 2, 2, 2)
    _forward(sched.schedule())   # the pool full
    step = sched.schedule()
    assert step.swapped_out == [c]
    _forward(step)
    sched.begin()
    step = sched.schedule()
    assert step.swapped_out == [b] and list(sched.swapped) == [b, c]
    host_pages = list(b.host_pages)
    assert sched.rollback() == [b]   # the forward failed
    assert list(sched.swapped) == [b, c] and b.host_pages == host_pages
    assert sched.running == [a] and a.num_computed_tokens == 3
