"""Helper 266: an outsider's seeded grid over the serving side's bookkeeping.

The scheduler and the KV cache manager run with the model replaced by a reader of the pages:
each step writes every new token's id into its slot (`FakeStore`), and a request's next token
is a hash of the token ids READ BACK through its block table. A wrong prefix hit, a copy on
write that copies the wrong page, a swap that brings back other pages or a page written by
two requests all change what is read, hence every later token. Each case's workload is drawn
from the edges an engineer tries: prompts of 1, page-1, page, page+1, two pages and long;
prefixes shared over 1 token, page-1, a whole page, a page plus one, two pages, the whole
prompt (duplicates); max_tokens 1; stop tokens; staggered arrivals; more requests than the
pool holds (preemption by recompute or swap, host pages from none to plenty); pools from
exactly the largest request's need; budgets and chunks from one token; max_num_seqs 1;
watermarks; predictive allocation. After every step: every page free or held, ref counts
equal to the block tables holding each page, held + free = total, every cached hash naming a
page that holds its block's tokens (and the block the hash chains), each running request's
computed tokens read back from its pages, swapped requests' tokens from their host pages,
waiting ones holding nothing. At the end every page is free and each request's tokens equal
the same request's in a roomy engine without prefix caching, chunking or preemption.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from pagedattn_lab.engine import EngineConfig
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.prefix_cache import block_hashes
from pagedattn_lab.engine.request import Request, SamplingParams, Status
from pagedattn_lab.engine.scheduler import Scheduler

from .engine_fakes import FakeStore

VOCAB = 61
STOP = 0          # the stop token some requests ask for
MAX_STEPS = 4000


class ForwardFailed(Exception):
    """The fake forward's failure, halfway through a batch's writes."""


def next_token(seen: list[int]) -> int:
    """The fake model: a function of every token read back from the pages."""
    digest = hashlib.blake2b(np.asarray(seen, np.int64).tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % VOCAB


# -- workloads ------------------------------------------------------------------------------

def draw_workload(rng: np.random.Generator, page_size: int) -> list[dict]:
    """Requests: prompt, max_tokens, stop ids, arrival step; prefixes shared on page edges."""
    ps = page_size
    lengths = sorted({1, max(1, ps - 1), ps, ps + 1, 2 * ps, 2 * ps + 1, 4 * ps + 3})
    shared = sorted({1, max(1, ps - 1), ps, ps + 1, 2 * ps})
    base = [int(t) for t in rng.integers(1, VOCAB, 6 * ps)]
    requests = []
    for _ in range(int(rng.integers(2, 9))):
        length = int(rng.choice(lengths))
        kind = rng.integers(4)
        if kind == 0 and requests:          # a duplicate of an earlier prompt
            prompt = list(requests[int(rng.integers(len(requests)))]["prompt"])
        elif kind == 1:                     # a shared prefix, then its own tokens
            keep = min(int(rng.choice(shared)), length)
            prompt = base[:keep] + [int(t) for t in rng.integers(1, VOCAB, length - keep)]
        elif kind == 2:                     # a prefix of the common base
            prompt = base[:length]
        else:
            prompt = [int(t) for t in rng.integers(1, VOCAB, length)]
        requests.append(dict(
            prompt=prompt, max_tokens=int(rng.choice([1, 1, 2, ps, 3 * ps + 1])),
            stop=(STOP,) if rng.random() < 0.3 else (),
            arrival=int(rng.choice([0, 0, 0, 1, 3, 7]))))
    return requests


def need(config: EngineConfig, request: dict) -> int:
    return config.pages_to_finish(len(request["prompt"]) + request["max_tokens"])


def draw_config(rng: np.random.Generator, page_size: int, workload: list[dict]) -> EngineConfig:
    caching = bool(rng.random() < 0.7)
    probe = EngineConfig(page_size=page_size, num_pages=1, enable_prefix_caching=caching)
    least = max(need(probe, r) for r in workload)
    num_pages = least + int(rng.choice([0, 0, 1, 2, 5, 20]))   # often exactly full
    swap = bool(rng.random() < 0.5)
    return EngineConfig(
        page_size=page_size, num_pages=num_pages, enable_prefix_caching=caching,
        max_num_batched_tokens=int(rng.choice([1, 2, page_size, page_size + 1, 16, 64])),
        max_prefill_chunk=rng.choice([None, None, 1, page_size, page_size + 1]),
        max_num_seqs=int(rng.choice([1, 2, 3, 64])),
        watermark=float(rng.choice([0.0, 0.0, 0.1, 0.3])),
        preemption_mode="swap" if swap else "recompute",
        num_host_pages=int(rng.choice([0, 1, least, 4 * least])) if swap else 0,
        allocation="predictive" if rng.random() < 0.3 else "on_demand",
        initial_output_guess=int(rng.choice([0, 3, 50])))


def roomy(config: EngineConfig, workload: list[dict]) -> EngineConfig:
    """The reference: every request at once, no cache, no chunk, no preemption."""
    total = sum(need(config, r) for r in workload) + 1
    return EngineConfig(page_size=config.page_size, num_pages=total, enable_prefix_caching=False,
                        max_num_batched_tokens=100_000, max_num_seqs=64, watermark=0.0)


# -- the serving loop with the page-reading model -------------------------------------------

class Books:
    """A scheduler, its KV manager and the fake store, with the checks run after each step."""

    def __init__(self, config: EngineConfig, max_model_len: int | None = None):
        self.config = config
        self.store = FakeStore(config.num_pages, config.page_size, config.num_host_pages)
        self.kv = KVCacheManager(config.num_pages, config.page_size,
                                 enable_caching=config.enable_prefix_caching,
                                 num_host_pages=config.num_host_pages, store=self.store)
        self.sched = Scheduler(config, self.kv, max_model_len)
        self.max_model_len = max_model_len
        self.blocks: dict[bytes, tuple] = {}   # every block hash seen -> the prefix it chains
        self.preemptions = self.hits = 0

    def add(self, rid: int, request: dict) -> Request:
        req = Request(rid, list(request["prompt"]), SamplingParams(
            max_tokens=request["max_tokens"], stop_token_ids=request["stop"]))
        self.sched.add(req)
        return req

    def step(self, fail_after: int | None = None) -> None:
        """One step; with fail_after, the forward fails after writing that many of the
        batch's requests, and the step is rolled back as the engine does."""
        self.sched.begin()
        try:
            self._step(fail_after)
        except ForwardFailed:
            self.sched.rollback()
        else:
            self.sched.commit()
        self.check()

    def _step(self, fail_after: int | None) -> None:
        step = self.sched.schedule()
        assert step.requests, f"nothing scheduled although requests wait: {self.kv.pool}"
        assert step.num_tokens <= self.config.max_num_batched_tokens
        assert len(self.sched.running) <= self.config.max_num_seqs
        self.preemptions += len(step.preempted) + len(step.swapped_out)
        for i, (req, n) in enumerate(zip(step.requests, step.num_new)):
            if i == fail_after:
                raise ForwardFailed
            start = req.num_computed_tokens
            assert 1 <= n and start + n <= req.num_tokens
            for i in range(start // self.config.page_size,
                           -(-(start + n) // self.config.page_size)):
                page = req.pages[i]   # copy on write: written only by its one holder
                assert self.kv.pool.ref_cnt[page] == 1, f"writing into shared page {page}"
                assert self.kv.pool.page_hash[page] is None, f"writing into cached page {page}"
            self.store.write(req, start, start + n)
        for req, n in zip(step.requests, step.num_new):
            req.num_computed_tokens += n
            self.kv.register_computed(req)
        for req in list(step.requests):
            if req.num_computed_tokens == req.num_tokens:
                self.hits += req.num_cached_tokens > 0
                token = next_token(self.store.read(req))
                req.output_ids.append(token)
                if token in req.params.stop_token_ids:
                    self.sched.finish(req, "stop")
                elif len(req.output_ids) >= req.params.max_tokens or (
                        self.max_model_len and req.num_tokens >= self.max_model_len):
                    self.sched.finish(req, "length")

    def check(self) -> None:
        pool, ps, sched = self.kv.pool, self.config.page_size, self.sched
        pool.check_invariants()
        holders = [0] * pool.num_pages
        for req in sched.running:
            assert req.status is Status.RUNNING and not req.host_pages
            assert len(set(req.pages)) == len(req.pages), f"a page twice in {req.pages}"
            assert len(req.pages) * ps >= req.num_computed_tokens
            assert self.store.read(req) == req.tokens(0, req.num_computed_tokens)
            for page in req.pages:
                holders[page] += 1
        assert holders == pool.ref_cnt, "ref counts differ from the block tables"
        assert pool.num_free + sum(h > 0 for h in holders) == pool.num_pages
        assert len(pool.free_queue) == len(set(pool.free_queue))
        for req in sched.waiting:
            assert req.status is Status.WAITING and not req.pages and not req.host_pages
        host_held = []
        for req in sched.swapped:
            assert req.status is Status.SWAPPED and not req.pages
            assert len(req.host_pages) == -(-req.num_computed_tokens // ps)
            read = [int(self.store.host[req.host_pages[pos // ps], pos % ps])
                    for pos in range(req.num_computed_tokens)]
            assert read == req.tokens(0, req.num_computed_tokens), "host pages lost tokens"
            host_held += req.host_pages
        if self.kv.host is not None:
            self.kv.host.check_invariants()
            assert len(set(host_held)) == len(host_held) == self.kv.host.num_used
        for req in [*sched.running, *sched.waiting, *sched.swapped]:
            tokens = req.tokens(0, req.num_tokens)
            for i, h in enumerate(block_hashes(tokens, ps)):
                self.blocks.setdefault(h, tuple(tokens[:(i + 1) * ps]))
        for block_hash, page in pool.cached.items():
            held = [int(t) for t in self.store.slots[page]]
            assert list(pool.page_tokens[page]) == held, f"cached page {page} holds {held}"
            prefix = self.blocks.get(block_hash)
            assert prefix is None or list(prefix[-ps:]) == held, (
                f"page {page} is cached under the hash of block {prefix[-ps:]}")


def serve(config: EngineConfig, workload: list[dict],
          max_model_len: int | None = None) -> tuple[dict, Books]:
    """Every request's (tokens, finish reason), arrivals at their steps; checked each step."""
    books = Books(config, max_model_len)
    pending = sorted(range(len(workload)), key=lambda i: workload[i]["arrival"])
    reqs = {}
    for clock in range(MAX_STEPS):
        while pending and workload[pending[0]]["arrival"] <= clock:
            rid = pending.pop(0)
            reqs[rid] = books.add(rid, workload[rid])
        if books.sched.has_unfinished():
            books.step()
        elif not pending:
            break
    else:
        pytest.fail(f"not finished after {MAX_STEPS} steps: {config}")
    assert books.kv.pool.num_used == 0, "pages held after every request finished"
    assert books.kv.host is None or books.kv.host.num_used == 0, "host pages held at the end"
    return {rid: (r.output_ids, r.finish_reason) for rid, r in reqs.items()}, books


# -- the grid -------------------------------------------------------------------------------

SEEDS = range(120)


def case(seed: int):
    rng = np.random.default_rng(seed)
    page_size = int(rng.choice([1, 2, 3, 4, 8]))
    workload = draw_workload(rng, page_size)
    return workload, draw_config(rng, page_size, workload)


@pytest.mark.parametrize("chunk", [range(i, i + 30) for i in range(0, len(SEEDS), 30)],
                         ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_tokens_and_books_match_the_roomy_engine(chunk):
    for seed in chunk:
        workload, config = case(seed)
        got, _ = serve(config, workload)
        want, _ = serve(roomy(config, workload), workload)
        assert got == want, f"seed {seed}: {config}"


def test_the_grid_preempts_swaps_hits_and_fills_the_pool_exactly():
    """The grid reaches the cases it is for (else a passing grid proves little)."""
    seen = dict(preempted=0, swapped=0, hits=0, exactly_full=0, one_token=0)
    for seed in SEEDS:
        workload, config = case(seed)
        _, books = serve(config, workload)
        seen["preempted"] += books.preemptions > 0
        seen["swapped"] += books.store.host[:, 0].max() >= 0 and config.num_host_pages > 0
        seen["hits"] += books.hits > 0
        seen["exactly_full"] += config.num_pages == max(need(config, r) for r in workload)
        seen["one_token"] += any(r["max_tokens"] == 1 for r in workload)
    assert min(seen.values()) >= 5, seen


@pytest.mark.parametrize("seed", range(0, 120, 7))
def test_prefix_caching_swap_and_a_bigger_pool_change_no_token(seed):
    workload, config = case(seed)
    want, _ = serve(config, workload)
    caching = replace(config, enable_prefix_caching=not config.enable_prefix_caching)
    if max(need(caching, r) for r in workload) > caching.num_pages:
        caching = replace(caching, num_pages=caching.num_pages + 1)
    variants = [caching, replace(config, num_pages=4 * config.num_pages),
                replace(config, preemption_mode="recompute", num_host_pages=0),
                replace(config, preemption_mode="swap", num_host_pages=config.num_pages)]
    for variant in variants:
        assert serve(variant, workload)[0] == want, f"seed {seed}: {variant}"


def test_failed_steps_and_aborts_keep_the_books_and_the_tokens():
    """The forward fails halfway through a batch (the step rolled back, as LLMEngine.step
    does) and requests are aborted between steps: the books hold after each, and every
    request not aborted gets the roomy engine's tokens (an aborted one, a prefix of them)."""
    for seed in range(0, 120, 3):
        workload, config = case(seed)
        rng = np.random.default_rng(seed)
        want, _ = serve(roomy(config, workload), workload)
        books, reqs, aborted = Books(config), {}, set()
        for rid, request in enumerate(workload):
            reqs[rid] = books.add(rid, request)
        for _ in range(MAX_STEPS):
            if not books.sched.has_unfinished():
                break
            if rng.random() < 0.05:
                sched = books.sched
                rid = int(rng.choice([r.rid for queue in (sched.running, sched.waiting,
                                                           sched.swapped) for r in queue]))
                books.sched.abort(rid)
                aborted.add(rid)
                books.check()
            else:
                books.step(int(rng.integers(0, 3)) if rng.random() < 0.25 else None)
        assert books.kv.pool.num_used == 0 and (books.kv.host is None or
                                                books.kv.host.num_used == 0)
        for rid, req in reqs.items():
            tokens, reason = want[rid]
            if rid in aborted:
                assert tokens[:len(req.output_ids)] == req.output_ids, f"seed {seed}"
            else:
                assert (req.output_ids, req.finish_reason) == (tokens, reason), f"seed {seed}"


# -- refusals on a live engine: by name, changing nothing ------------------------------------

def books_mid_run(seed: int) -> Books:
    workload, config = case(seed)
    books = Books(config)
    for rid, request in enumerate(workload):
        books.add(rid, request)
    for _ in range(3):
        if books.sched.has_unfinished():
            books.step()
    return books


def snapshot(books: Books) -> tuple:
    pool, kv, sched = books.kv.pool, books.kv, books.sched
    reqs = [(r.rid, r.status, r.num_computed_tokens, list(r.pages), list(r.host_pages),
             r.num_registered_blocks, list(r.output_ids), list(r.block_hashes))
            for queue in (sched.running, sched.waiting, sched.swapped) for r in queue]
    return (list(pool.ref_cnt), list(pool.page_hash), list(pool.free_queue.items()),
            dict(pool.cached), pool.evictions, kv.host and kv.host.state(), reqs,
            kv.query_tokens, kv.hit_tokens, kv.cow_copies, books.store.slots.tolist())


BAD_VALUES = [-1, 10**6, 1.5, True, np.int64(-2), "3", None, [0, 0], [-1], [1.0], 2**63]


def bad_calls(books: Books, bad) -> dict:
    pool, kv, sched = books.kv.pool, books.kv, books.sched
    req = next(iter([*sched.running, *sched.swapped, *sched.waiting]))
    many = bad if isinstance(bad, list) else [bad]
    block = [1] * books.config.page_size
    return {
        "pool.allocate": lambda: pool.allocate(bad), "pool.free": lambda: pool.free(many),
        "pool.touch": lambda: pool.touch(many), "pool.forget": lambda: pool.forget(many),
        "pool.register": lambda: pool.register(bad, b"h" * 32, block),
        "pool.is_shared_or_cached": lambda: pool.is_shared_or_cached(bad),
        "pool.lookup": lambda: pool.lookup(b"h" * 32, many),
        "kv.grow": lambda: kv.grow(req, bad), "kv.growth_cost": lambda: kv.growth_cost(req, bad),
        "kv.swap_in_cost": lambda: kv.swap_in_cost(req, bad),
        "kv.admission_cost": lambda: kv.admission_cost(many, 0, 1),
        "kv.admit hits": lambda: kv.admit(req, many, 0, 1),
        "kv.admit computed": lambda: kv.admit(req, [], bad, 1),
        "sched.abort": lambda: sched.abort(bad), "sched.finish": lambda: sched.finish(req, bad),
        "sched.add rid": lambda: sched.add(Request(bad, [1, 2], SamplingParams())),
        "sched.add prompt": lambda: sched.add(Request(10**5, many, SamplingParams())),
    }


@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
def test_a_refused_call_on_a_live_engine_changes_nothing(bad):
    """Each call with a bad argument, mid-run (requests running, swapped, waiting, pages
    cached): refused as a ValueError/TypeError/KeyError naming what it refuses, or taken
    with the pool's invariants kept; a refusal changes no count, hash, queue or request."""
    for seed in (2, 9, 28, 58):   # requests running and waiting, pages cached
        for name in bad_calls(books_mid_run(seed), bad):
            books = books_mid_run(seed)
            before = snapshot(books)
            try:
                bad_calls(books, bad)[name]()
            except (ValueError, TypeError, KeyError, RuntimeError) as error:
                assert str(error), f"{name}({bad!r}): an error without a message"
                assert snapshot(books) == before, f"{name}({bad!r}) refused but changed state"
            else:
                books.kv.pool.check_invariants()
