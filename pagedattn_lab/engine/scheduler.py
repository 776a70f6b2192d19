"""Continuous batching: which requests run this step, and how many tokens each.

Every step has a budget of `max_num_batched_tokens` tokens. A decoding request needs one;
a prompt takes as many as the budget (and `max_prefill_chunk`) allows, so a long prompt is
prefilled in chunks over several steps while the others keep decoding in the same batches
(chunked prefill). The order, as in vLLM:

1. RUNNING requests, oldest first. Each gets pages for its next tokens; when the pool is
   dry, the newest running request is preempted, until the pages are there (or the request
   itself was the newest). Preemption by recompute frees the victim's pages (it returns to
   the front of the waiting queue and later prefills prompt + output again, cheaply when
   the prefix cache still holds its pages); by swap, its pages are copied to host memory
   first and copied back later.
2. SWAPPED requests come back (only in a step without preemption), oldest first, while
   their pages fit above the watermark.
3. WAITING requests are admitted, in arrival order, while the budget, `max_num_seqs` and
   the watermark allow: a request's cached prefix is looked up first, so only the rest of
   its prompt costs pages and tokens. But none is admitted while a request is swapped out:
   swapped requests go first (vLLM's rule), or newcomers could keep taking the pages one
   waits for. Nothing starves: with admissions stopped, the running and swapped requests
   finish and give their pages back; nothing deadlocks: with nothing running, a swapped
   request always fits (`add_request` refuses one the pool could not hold alone).

A step that fails (the forward raises, a copy is interrupted) is undone by `rollback`: every
queue, request, page count and cached hash goes back to what it was at `begin`, except that
requests it preempted stay preempted (the pages they gave up may already hold another
request's new K/V: their own K/V survive only on the host, after a swap-out) and pages it
handed out forget the prefix they cached (their contents may have been overwritten).

Output lengths are never known in advance: a request holds pages for the tokens it has
(on-demand), or, with `allocation="predictive"`, also for the output length it is expected
to reach (the mean of the outputs finished so far).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..validate import check_int, check_int_list
from .config import EngineConfig
from .kv_manager import KVCacheManager, refuse_held
from .prefix_cache import block_hashes, int64_token
from .request import Request, SamplingParams, Status, empty_prompt_error


@dataclass
class ScheduledStep:
    """One step's plan: requests with their number of new tokens, in batch order."""
    requests: list[Request] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    prefill_tokens: int = 0   # of num_tokens: prompt chunks, re-prefills (Request.prefill_len)
    recomputed_tokens: int = 0   # of num_tokens: dropped by a preemption by recompute before
    preempted: list[Request] = field(default_factory=list)   # by recompute, this step
    swapped_out: list[Request] = field(default_factory=list)
    swapped_in: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new)

    def add(self, req: Request, n: int) -> None:
        self.requests.append(req)
        self.num_new.append(n)
        start = req.num_computed_tokens
        self.recomputed_tokens += max(0, min(start + n, req.num_dropped_tokens) - start)
        if start < req.prefill_len:   # (else a decode: one token)
            self.prefill_tokens += n


FINISH_REASONS = ("stop", "length")


def _token_ids(req: Request, name: str) -> list[int]:
    """req.<name> as Python ints >= 0 that the prefix cache can hash (int64), else an error
    naming the entry."""
    ids = check_int_list(getattr(req, name), f"req.{name}", "token id", minimum=0)
    return [int64_token(t, f"req.{name}[{i}]") for i, t in enumerate(ids)]


def _refuse_stale_hashes(req: Request, tokens: list[int], page_size: int) -> None:
    """Refuse block hashes kept by a request that are not its own blocks' (a Request made
    with another prompt's): the blocks hashed after them would be cached under that other
    prefix, and served to a prompt that has it as K/V computed after this one's."""
    kept = req.block_hashes
    if not isinstance(kept, list) or len(kept) > len(tokens) // page_size:
        raise ValueError(f"req.block_hashes: expected at most the hashes of request "
                         f"{req.rid}'s {len(tokens) // page_size} full block(s) of {page_size} "
                         f"tokens, got {kept!r:.80}")
    own = block_hashes(tokens[:len(kept) * page_size], page_size)
    stale = next((i for i, (h, o) in enumerate(zip(kept, own)) if h != o), None)
    if stale is not None:
        raise ValueError(f"req.block_hashes[{stale}]: not the hash of request {req.rid}'s "
                         f"block {stale} (tokens {stale * page_size}.."
                         f"{(stale + 1) * page_size - 1}, chained on the blocks before); leave "
                         f"block_hashes empty: the cache manager computes them")


class Scheduler:
    def __init__(self, config: EngineConfig, kv: KVCacheManager,
                 max_model_len: int | None = None):
        """max_model_len: no request grows past it (the model's context), so a predictive
        reservation stops there too (None: no limit). config and kv must describe the same
        pool (the watermark is a share of config.num_pages)."""
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config: expected an EngineConfig, got {type(config).__name__}")
        if not isinstance(kv, KVCacheManager):
            raise TypeError(f"kv: expected a KVCacheManager, got {type(kv).__name__}")
        host = kv.host.num_pages if kv.host is not None else 0
        for name, have, want in (("num_pages", kv.pool.num_pages, config.num_pages),
                                 ("page_size", kv.page_size, config.page_size),
                                 ("num_host_pages", host, config.num_host_pages),
                                 ("enable_prefix_caching", kv.enable_caching,
                                  config.enable_prefix_caching)):
            if have != want:
                raise ValueError(f"kv: its {name} is {have}, config.{name} is {want}; build "
                                 f"both from one EngineConfig")
        if max_model_len is not None:
            max_model_len = check_int(max_model_len, "max_model_len", minimum=1)
        self.config, self.kv, self.max_model_len = config, kv, max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: deque[Request] = deque()
        self._queued: dict[int, Request] = {}   # rid -> request, for the three queues
        self.finished_output_lens: list[int] = []
        # tokens run again after a preemption by recompute dropped them (not those the
        # prefix cache served again: a count of the compute that preemption cost)
        self.recomputed_tokens = 0
        # Since `begin`: each request changed, as Request.save() had it before its first
        # change; the requests preempted; the queues and counters as they were.
        self._journal: dict[Request, tuple] | None = None
        self._victims: list[Request] = []
        self._queues: tuple = ()

    # -- undoing a failed step --------------------------------------------------------------

    def begin(self) -> None:
        """Record what the step about to run changes, for `rollback`."""
        self.kv.begin()
        self._journal, self._victims = {}, []
        self._queues = (deque(self.waiting), list(self.running), deque(self.swapped),
                        len(self.finished_output_lens), self.recomputed_tokens)

    def commit(self) -> None:
        self.kv.commit()
        self._journal = None

    def _save(self, req: Request) -> None:
        if self._journal is not None and req not in self._journal:
            self._journal[req] = req.save()

    def rollback(self) -> list[Request]:
        """Undo everything since `begin` but the preemptions (see the module docstring);
        returns the requests preempted, which stay in `waiting` or `swapped`."""
        journal, victims = self._journal, self._victims
        self._journal = None
        forget = self.kv.rollback()
        for req, saved in journal.items():
            if req not in victims:
                req.restore(saved)
        waiting, running, swapped, finished, self.recomputed_tokens = self._queues
        self.waiting, self.running, self.swapped = deque(waiting), list(running), deque(swapped)
        self._queued = {r.rid: r for queue in (waiting, running, swapped) for r in queue}
        del self.finished_output_lens[finished:]
        for req in victims:   # preempted again, as `_preempt` did, on the restored pool
            self.running.remove(req)
            self.kv.pool.free(reversed(journal[req][2]))
            if req.status is Status.SWAPPED:
                # the same host pages as then: the swap-outs of a step are its first host
                # allocations (one that fails raises, ending the step), made in this order
                self.kv.host.allocate(len(req.host_pages))
                self.swapped.appendleft(req)
            else:
                self.waiting.appendleft(req)
        self.kv.pool.forget(forget)
        return victims

    def add(self, req: Request) -> None:
        """Queue a new request. Refused, changing nothing: an id already queued (served
        twice, or two requests under one id, their outputs would be mixed up: an engine keys
        them by id), an id not an int (True or 1.0 would be request 1), a finished request,
        one holding pages (they would leak), or one keeping block hashes of other tokens."""
        if not isinstance(req, Request):
            raise TypeError(f"req: expected a Request, got {type(req).__name__}")
        rid = check_int(req.rid, "req.rid")
        same = self._queued.get(rid)
        if same is not None:
            what = "this request" if same is req else "another request"
            raise ValueError(f"req: request id {req.rid!r} is already queued ({what}, "
                             f"{same.status.value}); ids must be unique")
        if req.status is Status.FINISHED:
            raise ValueError(f"req: request {req.rid} is finished; queue a new Request")
        refuse_held(req, "add", "a new request", device=True, host=True)
        # (an empty prompt, or a token id past int64 (the prefix cache hashes token ids as
        # int64), made every schedule() after it raise; params were first read at its finish)
        prompt, outputs = (_token_ids(req, name) for name in ("prompt_ids", "output_ids"))
        if not prompt:
            raise empty_prompt_error(req.rid)
        if not isinstance(req.params, SamplingParams):
            raise TypeError(f"req.params: expected a SamplingParams, got "
                            f"{type(req.params).__name__}")
        _refuse_stale_hashes(req, prompt + outputs, self.kv.page_size)
        req.prompt_ids, req.output_ids = prompt, outputs
        req.rid, req.status = rid, Status.WAITING
        self.waiting.append(req)
        self._queued[rid] = req

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def expected_output_len(self) -> int:
        if self.config.expected_output_len is not None:
            return self.config.expected_output_len
        lens = self.finished_output_lens
        return round(sum(lens) / len(lens)) if lens else self.config.initial_output_guess

    def _chunk(self, req: Request, budget: int) -> int:
        return min(req.num_tokens - req.num_computed_tokens, budget, self.config.chunk_limit)

    def schedule(self) -> ScheduledStep:
        step = ScheduledStep()
        budget = self._schedule_running(step, self.config.max_num_batched_tokens)
        if not (step.preempted or step.swapped_out):
            budget = self._schedule_swapped(step, budget)
            if not self.swapped:   # swapped requests go first (the module docstring)
                self._schedule_waiting(step, budget)
        self.recomputed_tokens += step.recomputed_tokens
        return step

    def _schedule_running(self, step: ScheduledStep, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = self._chunk(req, budget)
            self._save(req)
            while not self.kv.grow(req, n):
                victim = self.running[-1]
                self._preempt(victim, step)
                if victim is req:
                    return budget
            step.add(req, n)
            budget -= n
            i += 1
        return budget

    def _preempt(self, req: Request, step: ScheduledStep) -> None:
        self._save(req)
        swap = self.config.preemption_mode == "swap" and self.kv.can_swap_out(req)
        if swap:   # copied while still running: a copy that fails (an interrupt) leaves it
            self.kv.swap_out(req)   # there with its pages, for `rollback` to find
        self.running.remove(req)
        req.num_preemptions += 1
        if swap:
            req.status = Status.SWAPPED
            self.swapped.appendleft(req)
            step.swapped_out.append(req)
        else:
            req.num_dropped_tokens = max(req.num_dropped_tokens, req.num_computed_tokens)
            self.kv.free(req)
            req.num_computed_tokens = 0
            req.status = Status.WAITING
            self.waiting.appendleft(req)
            step.preempted.append(req)
        if self._journal is not None:
            self._victims.append(req)

    def _room(self, cost: int) -> bool:
        """Can `cost` pages be taken and the watermark still be free? (With nothing running,
        any request that fits at all is let in: the watermark must not stall the engine.)"""
        free = self.kv.pool.num_free
        reserve = self.config.watermark_pages if self.running else 0
        return cost + reserve <= free

    def _schedule_swapped(self, step: ScheduledStep, budget: int) -> int:
        while self.swapped and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.swapped[0]
            # Its pages come back, then its next chunk may need more (many with small pages).
            n = self._chunk(req, budget)
            if not self._room(self.kv.swap_in_cost(req, n)):
                break
            self._save(req)
            self.kv.swap_in(req)   # before it leaves `swapped`: a copy that fails leaves it there
            self.swapped.popleft()
            req.status = Status.RUNNING
            self.running.append(req)
            if not self.kv.grow(req, n):   # cannot happen after the check; stay consistent
                raise RuntimeError(f"request {req.rid}: no page after swap-in")
            step.swapped_in.append(req)
            step.add(req, n)
            budget -= n
        return budget

    def _schedule_waiting(self, step: ScheduledStep, budget: int) -> None:
        predictive = self.config.allocation == "predictive"
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            self._save(req)   # (before its block hashes are computed)
            hits, computed = self.kv.cached_prefix(req)
            n = min(req.num_tokens - computed, budget, self.config.chunk_limit)
            lookahead = 0
            if predictive:
                remaining = max(0, self.expected_output_len() - len(req.output_ids))
                remaining = min(remaining, req.params.max_tokens - len(req.output_ids))
                if self.max_model_len is not None:   # pages past the context stay unused
                    remaining = max(0, min(remaining, self.max_model_len - req.num_tokens))
                lookahead = req.num_tokens - computed - n + remaining
                if not self.running and not self._room(
                        self.kv.admission_cost(hits, computed, n, lookahead)):
                    lookahead = 0   # a guess larger than the pool must not stall an idle engine
            if not self._room(self.kv.admission_cost(hits, computed, n, lookahead)):
                break
            self.kv.admit(req, hits, computed, n, lookahead)   # (if it fails, req still waits)
            self.waiting.popleft()
            if req.num_preemptions == 0:   # a resumed request finds its own chunks there:
                req.num_cached_tokens = computed   # they were computed once, not served
            req.prefill_len = req.num_tokens
            req.status = Status.RUNNING
            self.running.append(req)
            step.add(req, n)
            budget -= n

    def drop_unfinished(self) -> list[Request]:
        """Take every unfinished request out of the queues, its device and host pages given
        back (full computed pages stay in the prefix cache, as a finished request's); returns
        them (a generate() that failed halfway leaves nothing queued)."""
        for req in self.running:
            self.kv.free(req)
        for req in self.swapped:
            self.kv.free_host(req)
        dropped = [*self.waiting, *self.running, *self.swapped]
        self._queued.clear()
        self.waiting.clear()
        self.running.clear()
        self.swapped.clear()
        return dropped

    def abort(self, rid: int) -> Request:
        """Take request `rid` out of its queue between steps (its client is gone: vLLM's
        abort_request), its device or host pages given back (full computed pages stay in the
        prefix cache, as a finished request's); it is finished with reason "abort". Returns
        it. Refused, changing nothing: an id not an int or not queued, or a call inside a
        step."""
        if self._journal is not None:
            raise RuntimeError("abort: a step is running (between begin and commit); abort "
                               "a request between steps")
        rid = check_int(rid, "rid")   # (a NumPy int is an id too; True aborted request 1)
        req = self._queued.get(rid)
        if req is None:
            raise ValueError(f"rid: no queued request has id {rid} (never added, already "
                             f"finished or aborted)")
        if req.status is Status.RUNNING:
            self.kv.free(req)
            self.running.remove(req)
        elif req.status is Status.SWAPPED:
            self.kv.free_host(req)
            self.swapped.remove(req)
        else:
            self.waiting.remove(req)
        del self._queued[rid]
        req.finish_reason = "abort"
        req.status = Status.FINISHED
        return req

    def finish(self, req: Request, reason: str) -> None:
        """`reason`: "stop" (an end token) or "length" (max_tokens or the model's context),
        vLLM's finish reasons; the request's output reports it."""
        if reason not in FINISH_REASONS:   # (before anything changes)
            raise ValueError(f"reason: expected one of {FINISH_REASONS}, got {reason!r}")
        if req not in self.running:   # (before it is marked finished)
            raise ValueError(f"req: request {req.rid} is {req.status.value}, not running; "
                             f"only a running request finishes")
        self._save(req)
        req.finish_reason = reason
        req.status = Status.FINISHED
        self.running.remove(req)
        self._queued.pop(req.rid, None)   # (None: put in `running` by hand, as tests do)
        self.kv.free(req)
        self.finished_output_lens.append(len(req.output_ids))
