"""Hunt 77: the serving engine's summary figures against what the steps really did.

- `recomputed_tokens` counted every token a preemption by recompute dropped, although the
  prefix cache served most of them back when the victim returned: lesson 12 priced 385
  "recomputed" tokens where 77 ran through the model again. It now counts the tokens run
  again (below what the request had computed before it was preempted).
- add_request refused a request needing exactly the whole pool ("could never finish"): it
  asked one page more for a copy on write that the never-written last token's slot already
  covers. Such requests now run, alone in the pool, to the roomy engine's tokens.
- A step that swapped pages in and then failed was rolled back (the request swapped out
  again, the step not counted) but its swap-in stayed in `swapped_pages` / `swap_bytes`: the
  next step's swap-in counted the same pages twice.
"""
import numpy as np
import pytest

from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel, SamplingParams,
                                  random_weights, tiny_config)

CONFIG = tiny_config(num_hidden_layers=1)
SYSTEM = [int(t) for t in np.random.default_rng(77).integers(0, 128, 12)]
PROMPTS = [SYSTEM + [i, 2 * i] for i in range(1, 6)] + [[3, 1, 4, 1, 5, 9, 2, 6]]
PARAMS = SamplingParams(max_tokens=8, ignore_eos=True)
SMALL = dict(page_size=4, num_pages=9, max_num_batched_tokens=12, watermark=0.0)


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CONFIG, random_weights(CONFIG, seed=77), device="cpu")


class Boom(Exception):
    pass


def test_recomputed_tokens_are_the_tokens_run_again(model):
    """Tokens a request runs at positions it had computed before (a preemption by recompute
    dropped them) are the recomputed ones; the prefix cache serves the rest back."""
    engine = LLMEngine(model, EngineConfig(**SMALL))
    for prompt in PROMPTS:
        engine.add_request(prompt, PARAMS)
    done, again, dropped, schedule = {}, [0], [0], engine.scheduler.schedule

    def watched():
        step = schedule()
        for req, n in zip(step.requests, step.num_new):
            start, most = req.num_computed_tokens, done.get(req.rid, 0)
            again[0] += max(0, min(start + n, most) - start)
            done[req.rid] = max(most, start + n)
        dropped[0] += sum(done[r.rid] for r in step.preempted)
        return step

    engine.scheduler.schedule = watched
    while engine.has_unfinished():
        engine.step()
    s = engine.summary()
    assert s["preempted_recompute"] > 0, "the small pool must preempt"
    assert s["recomputed_tokens"] == again[0]
    assert again[0] < dropped[0], "the victims' full pages were cached when they came back"


def test_a_failed_step_that_swapped_pages_in_does_not_count_them(model, monkeypatch):
    """Every step that swaps pages in or out fails once, then runs again: the swap figures
    are those of the run without failures (a swap-out stands: its victim stays swapped)."""
    config = EngineConfig(**SMALL, preemption_mode="swap", num_host_pages=32)

    def run(fail):
        engine = LLMEngine(model, config)
        for prompt in PROMPTS:
            engine.add_request(prompt, PARAMS)
        store, forward, failed = engine.store, engine.model.forward, []

        def flaky(*args, **kwargs):
            moved = store.swapped_out_pages + store.swapped_in_pages
            if fail and moved != seen[0] and not retry[0]:
                failed.append(store.swapped_in_pages > seen[1])
                retry[0] = True
                raise Boom
            return forward(*args, **kwargs)

        seen, retry = [0, 0], [False]
        monkeypatch.setattr(engine.model, "forward", flaky)
        while engine.has_unfinished():
            seen[:] = store.swapped_out_pages + store.swapped_in_pages, store.swapped_in_pages
            try:
                engine.step()
                retry[0] = False
            except Boom:
                pass
        monkeypatch.undo()
        keys = ("steps", "preempted_swap", "swapped_pages", "swap_bytes", "output_tokens")
        return {k: engine.summary()[k] for k in keys}, failed

    want, _ = run(False)
    got, failed = run(True)
    assert any(failed), "a step that swapped pages in must have failed"
    assert want["swapped_pages"] > 0 and got == want


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_requests_that_need_the_whole_pool_are_served(model, mode):
    """Two pages of 4: a 4-token prompt with 4 outputs (7 K/V slots), then the same prompt
    entirely cached with 1 output (its page copied on write: 2 pages for a moment), then two
    other such requests at once (one preempts the other)."""
    prompts = [[5, 7, 11, 13], [5, 7, 11, 13], [2, 4, 6, 8], [9, 9, 9]]
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (4, 1, 4, 5)]
    plain = LLMEngine(model, EngineConfig(page_size=4, num_pages=64))
    want = [o.output_ids for o in plain.generate(prompts, params)]
    engine = LLMEngine(model, EngineConfig(page_size=4, num_pages=2, watermark=0.0,
                                           preemption_mode=mode, num_host_pages=4))
    got = [o.output_ids for part in (slice(0, 1), slice(1, 2), slice(2, 4))
           for o in engine.generate(prompts[part], params[part])]
    assert got == want
    s = engine.summary()
    assert s["cow_copies"] > 0 and s["peak_pages_used"] == 2
    assert s["preempted_recompute"] + s["preempted_swap"] > 0
    engine.kv.pool.check_invariants()
    with pytest.raises(ValueError, match=r"^prompt_ids: 4 prompt tokens \+ max_tokens 5 may "
                                         r"need 3 pages, more than the whole pool of 2"):
        engine.add_request(prompts[0], SamplingParams(max_tokens=5))
