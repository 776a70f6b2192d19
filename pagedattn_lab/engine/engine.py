"""The serving loop: schedule, run the model on the batch, sample, repeat.

    engine = LLMEngine(LlamaModel(config, weights), EngineConfig(num_pages=256))
    outputs = engine.generate([[1, 5, 7], [1, 2]], SamplingParams(max_tokens=32))

Each `step()`:
1. the scheduler picks the batch (continuous batching under a token budget: decodes, prompt
   chunks, preemptions, swaps, admissions with prefix hits);
2. the batch is packed (token ids, positions, the slot of every new token) and the attention
   metadata is planned once for all layers;
3. one forward pass writes the new tokens' K/V into their pages and returns the logits of
   every request that is caught up with its tokens (prefill chunks before the last sample
   nothing);
4. tokens are sampled and appended; requests that hit an end-of-sequence token (any of the
   model's `eos_token_ids`), one of their `stop_token_ids` or max_tokens finish, and their
   pages go back to the pool (cached ones stay reusable).

Between steps, `abort_request(rid)` stops a request whose client has gone (vLLM's
abort_request): its pages go back at once, and its output so far comes back with
finish_reason "abort".
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..rawkernel import in_process
from ..validate import check_bool, check_int, check_int_list
from .attention import StepAttention
from .config import EngineConfig
from .kv_manager import KVCacheManager
from .kv_store import KVStore
from .model import LlamaModel
from .request import Request, SamplingParams, Status
from .sampling import sample
from .scheduler import Scheduler, ScheduledStep
from .stats import EngineStats


@dataclass
class RequestOutput:
    rid: int
    prompt_ids: list[int]
    output_ids: list[int]
    finish_reason: str
    num_preemptions: int
    num_cached_tokens: int          # prompt tokens served by the prefix cache
    logits: np.ndarray | None       # float32 [len(output_ids), vocab] if asked for


class LLMEngine:
    def __init__(self, model: LlamaModel, config: EngineConfig | None = None, kv_scales=None):
        """kv_scales: (k_scales, v_scales), each float32 [num_layers, num_kv_heads], for a
        compressed cache with static scales (config.kv_scale_scheme == "static")."""
        if not isinstance(model, LlamaModel):
            raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
        if config is not None and not isinstance(config, EngineConfig):
            raise TypeError(f"config: expected an EngineConfig or None, got "
                            f"{type(config).__name__}")
        self.model = model
        self.config = config = config or EngineConfig()
        mc = model.config
        self.store = KVStore(mc, config.num_pages, config.page_size, model.dtype, model.xp,
                             config.num_host_pages, config.kv_dtype, config.kv_scale_scheme,
                             kv_scales)
        self.kv = KVCacheManager(config.num_pages, config.page_size,
                                 enable_caching=config.enable_prefix_caching,
                                 num_host_pages=config.num_host_pages, store=self.store)
        self.scheduler = Scheduler(config, self.kv, mc.max_position_embeddings)
        self.attention = StepAttention(mc.num_attention_heads, mc.num_key_value_heads,
                                       mc.head_dim, config.page_size, model.dtype, model.xp,
                                       kv_dtype=config.kv_dtype,
                                       scale_scheme=config.kv_scale_scheme)
        self.max_model_len = mc.max_position_embeddings
        self.stats = EngineStats()
        self._next_rid = 0

    # -- requests ---------------------------------------------------------------------------

    def add_request(self, prompt_ids, params: SamplingParams | None = None) -> int:
        """Queue a prompt (a sequence of token ids); returns its request id. The prompt and
        params.stop_token_ids are checked against the vocabulary first (a ValueError naming
        the entry, and nothing queued)."""
        return self._queue(*self._check_request(prompt_ids, params))

    def _check_request(self, prompt_ids, params, name: str = "prompt_ids",
                       params_name: str = "params") -> tuple[list[int], SamplingParams]:
        """(prompt as ints, params) or a ValueError/TypeError naming the argument."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"{params_name}: expected a SamplingParams, got {params!r} "
                            f"({type(params).__name__})")
        # ints only: int(1.7) or int("7") would silently serve another prompt
        prompt = check_int_list(prompt_ids, name, "token id")
        if not prompt:
            raise ValueError(f"{name}: expected at least one token, got none")
        self._refuse_outside_vocab(prompt, name)
        # (one past the vocabulary could never be sampled: a stop that never comes)
        self._refuse_outside_vocab(params.stop_token_ids, f"{params_name}.stop_token_ids")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"{name}: {len(prompt)} tokens leave no room to generate within "
                             f"max_position_embeddings={self.max_model_len}")
        # (a request that needs the whole pool runs alone in it)
        pages = self.config.pages_to_finish(min(len(prompt) + params.max_tokens,
                                                self.max_model_len))
        if pages > self.config.num_pages:
            raise ValueError(f"{name}: {len(prompt)} prompt tokens + max_tokens "
                             f"{params.max_tokens} may need {pages} pages, more than the whole "
                             f"pool of {self.config.num_pages}: the request could never finish")
        return prompt, params

    def _refuse_outside_vocab(self, ids, name: str) -> None:
        vocab = self.model.config.vocab_size
        bad = [i for i, t in enumerate(ids) if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{name}[{bad[0]}]: token id {ids[bad[0]]} is outside the "
                             f"vocabulary 0..{vocab - 1}")

    def _queue(self, prompt: list[int], params: SamplingParams) -> int:
        req = Request(self._next_rid, prompt, params)
        self.scheduler.add(req)
        self._next_rid += 1   # (once queued: a failure before takes no id)
        self.stats.prompt_tokens += len(prompt)
        return req.rid

    def abort_request(self, rid: int) -> RequestOutput:
        """Stop serving request `rid` between steps (vLLM's abort_request): its pages are
        given back at once; returns its output so far, finish_reason "abort"."""
        rid = check_int(rid, "rid", minimum=0)
        req = self.scheduler.abort(rid)
        self.stats.aborted += 1
        return self._output(req)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the loop ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one step; returns the requests that finished in it. A step that raises (a
        kernel error, KeyboardInterrupt) leaves every queue, request and page as they were
        before it, except requests it preempted, which stay preempted (Scheduler.rollback):
        step() can be called again."""
        mark = self.stats.mark()
        swaps = self.store.swapped_out_pages, self.store.swapped_in_pages
        self.scheduler.begin()
        try:
            finished = self._step()
        except BaseException:
            victims = self.scheduler.rollback()
            self.stats.rewind(mark)
            swapped = [r for r in victims if r.status is Status.SWAPPED]
            self.stats.preempted_swap += len(swapped)
            self.stats.preempted_recompute += len(victims) - len(swapped)
            # The copies it undid are no swaps (the next step copies again): only its
            # victims' swap-outs stand.
            self.store.swapped_out_pages = swaps[0] + sum(len(r.host_pages) for r in swapped)
            self.store.swapped_in_pages = swaps[1]
            raise
        self.scheduler.commit()
        return finished

    def _step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        step = self.scheduler.schedule()
        if not step.requests:
            if self.has_unfinished():
                raise RuntimeError("the scheduler found nothing to run although requests wait: "
                                   f"{self.kv.pool}")
            return []
        self.stats.preempted_recompute += len(step.preempted)
        self.stats.preempted_swap += len(step.swapped_out)
        token_ids, positions, samplers, sample_rows = self._pack(step)
        # One upload for the three index arrays (the forward gets views of it).
        ints = self.model.xp.asarray(np.concatenate([token_ids, positions, sample_rows]))
        n = token_ids.size
        with in_process():   # the package's kernels on the CPU: no fork per launch
            logits = self.model.forward(ints[:n], ints[n:2 * n], self.attention, self.store,
                                        ints[2 * n:])
        tokens = sample(logits, samplers, self.config.seed, self.model.xp)
        for req, n in zip(step.requests, step.num_new):
            req.num_computed_tokens += n
            self.kv.register_computed(req)
        finished = []
        for row, (req, token) in enumerate(zip(samplers, tokens)):
            if req.params.return_logits:
                req.logits.append(to_numpy(logits[row]))
            req.output_ids.append(token)
            self.stats.output_tokens += 1
            reason = self._finish_reason(req, token)
            if reason:
                self.scheduler.finish(req, reason)
                self.stats.finished_prompt_tokens += len(req.prompt_ids)
                self.stats.finished_cached_tokens += req.num_cached_tokens
                finished.append(self._output(req))
        self.stats.finished += len(finished)
        self._record(step, time.perf_counter() - t0)
        return finished

    def generate(self, prompts, params: SamplingParams | list | tuple | None = None,
                 progress: bool = False) -> list[RequestOutput]:
        """Serve every prompt to the end; outputs in the prompts' order. params: one
        SamplingParams for all, or a list (or tuple) of one per prompt. progress: a tqdm bar."""
        if self.has_unfinished():
            raise RuntimeError("generate: requests added with add_request are still unfinished; "
                               "serve them with step() first (their outputs come from step)")
        # a set has no order to give the outputs in; a 0-d array cannot be iterated
        if (isinstance(prompts, (str, bytes, set, frozenset, Mapping))
                or not hasattr(prompts, "__iter__") or getattr(prompts, "ndim", None) == 0):
            raise TypeError(f"prompts: expected a list of prompts (lists of token ids), got "
                            f"{type(prompts).__name__}")
        check_bool(progress, "progress")
        prompts = list(prompts)
        # one per prompt in a list or a tuple, as prompts themselves may come
        per_prompt = isinstance(params, (list, tuple))
        per = list(params) if per_prompt else [params] * len(prompts)
        if len(per) != len(prompts):
            raise ValueError(f"params: expected {len(prompts)} SamplingParams, got {len(per)}")
        # Every prompt is checked before any is queued: a bad third prompt must not leave the
        # first two waiting (the next generate() would then refuse to start).
        checked = [self._check_request(p, sp, f"prompts[{i}]",
                                       f"params[{i}]" if per_prompt else "params")
                   for i, (p, sp) in enumerate(zip(prompts, per))]
        rids: list[int] = []
        done: dict[int, RequestOutput] = {}
        bar = None
        try:
            for p, sp in checked:   # (inside: a failure queueing one drops those queued)
                rids.append(self._queue(p, sp))
            if progress:
                from tqdm.auto import tqdm  # noqa: PLC0415 - only when a bar is asked for
                bar = tqdm(total=len(rids), desc="requests", unit="req", mininterval=1.0)
            while self.has_unfinished():
                for out in self.step():
                    done[out.rid] = out
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    s = self.stats.series
                    bar.set_postfix(running=s["running"][-1], pages=s["pages_used"][-1],
                                    refresh=False)
        except BaseException:
            # A failure halfway (a kernel error, KeyboardInterrupt in a notebook) must not
            # leave this call's requests queued, holding pages: the next generate() would
            # refuse to start, blaming add_request.
            for req in self.scheduler.drop_unfinished():
                self.stats.prompt_tokens -= len(req.prompt_ids)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [done[r] for r in rids]

    def summary(self) -> dict:
        return self.stats.summary(self)

    # -- internals --------------------------------------------------------------------------

    def _pack(self, step: ScheduledStep):
        """The batch's token ids, positions and slots; plans the attention metadata."""
        ps = self.config.page_size
        ids, starts, tables, samplers, sample_rows = [], [], [], [], []
        row = 0
        for req, n in zip(step.requests, step.num_new):
            start = req.num_computed_tokens
            ids.extend(req.tokens(start, start + n))
            starts.append(start)
            tables.append(req.pages)
            row += n
            if start + n == req.num_tokens:
                samplers.append(req)
                sample_rows.append(row - 1)
        # Positions and slots of every new token at once (no per-request arrays).
        new = np.asarray(step.num_new, np.int64)
        starts = np.asarray(starts, np.int64)
        first_row = np.cumsum(new) - new
        positions = np.repeat(starts - first_row, new) + np.arange(row, dtype=np.int64)
        owner = np.repeat(np.arange(new.size), new)
        width = max(len(t) for t in tables)
        pages = np.zeros((new.size, width), np.int64)
        for i, table in enumerate(tables):
            pages[i, :len(table)] = table
        slots = pages[owner, positions // ps] * ps + positions % ps
        self.attention.plan(step.num_new, starts + new, tables, slots)
        return (np.asarray(ids, np.int64), positions, samplers,
                np.asarray(sample_rows, np.int64))

    def _finish_reason(self, req: Request, token: int) -> str | None:
        # Any of the end tokens stops (Llama 3.1 instruct has three), as in transformers'
        # generate; a stop token id whatever ignore_eos says (vLLM's). Stop before length, as
        # vLLM V0's StopChecker (V1's check_stop tests the length first).
        if token in req.params.stop_token_ids or (
                not req.params.ignore_eos and token in self.model.config.eos_token_ids):
            return "stop"
        if len(req.output_ids) >= req.params.max_tokens or req.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _output(self, req: Request) -> RequestOutput:
        logits = None
        if req.params.return_logits:   # (none yet for a request aborted before its first token)
            logits = (np.stack(req.logits) if req.logits else
                      np.zeros((0, self.model.config.vocab_size), np.float32))
        return RequestOutput(req.rid, req.prompt_ids, list(req.output_ids), req.finish_reason,
                             req.num_preemptions, req.num_cached_tokens, logits)

    def _slots_filled(self) -> int:
        """Slots of the held pages that hold a computed token; a page shared by several
        requests (a prefix hit) counts once, so this never exceeds the slots held."""
        ps, full, partial = self.config.page_size, set(), {}
        # Once per step over every running request: a page full for any request counts ps,
        # else the most any request filled of it (sets and slices, no loop over pages).
        for req in self.scheduler.running:
            pages, rest = divmod(req.num_computed_tokens, ps)
            full.update(req.pages[:pages])
            if rest:
                page = req.pages[pages]
                partial[page] = max(partial.get(page, 0), rest)
        return ps * len(full) + sum(n for page, n in partial.items() if page not in full)

    def _record(self, step: ScheduledStep, seconds: float) -> None:
        sched, pool = self.scheduler, self.kv.pool
        self.stats.record(
            running=len(sched.running), waiting=len(sched.waiting), swapped=len(sched.swapped),
            pages_used=pool.num_used, pages_cached=len(pool.cached),
            tokens_stored=self._slots_filled(),
            batch_tokens=step.num_tokens, prefill_tokens=step.prefill_tokens,
            decode_tokens=step.num_tokens - step.prefill_tokens, hit_rate=self.kv.hit_rate,
            seconds=seconds)
