"""Adaptive page management: the page size from the length distribution, and predictive
against on-demand allocation, measured on the engine's own scheduler.

Page size. A sequence of length L holds ceil(L / page) pages, so its last page wastes
page - (L mod page) slots (half a page on average). Small pages waste little; large pages
make shorter block tables, fewer allocations and longer contiguous reads for the kernels
(vLLM found 16-128 best on ShareGPT). `choose_page_size` takes the largest candidate whose
waste, averaged over every step of every request's life (its length grows from the prompt
to the final length), stays under a target.

Allocation. On demand, a request takes a page when its last one is full: no waste, but a
busy pool runs dry in the middle of a decode and someone is preempted. Predictive
allocation reserves, at admission, pages for the output length the request is expected to
reach (learned from the requests that finished): fewer mid-run shortages, but reserved
pages hold nothing yet, so fewer requests fit. `dry_run` replays a workload through the
real `Scheduler` and `KVCacheManager` without a model (one step = one forward pass), so
the two policies are compared on exactly what the engine would do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validate import check_int, check_int_list
from ..validate_kinds import is_number
from .config import EngineConfig
from .kv_manager import KVCacheManager
from .request import Request, SamplingParams
from .scheduler import Scheduler

PAGE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def tail_waste(prompt_lens, output_lens, page_size: int) -> float:
    """Share of the slots held by growing sequences that hold no token, averaged over every
    step of every request (length prompt .. prompt + output)."""
    page_size = check_int(page_size, "page_size", minimum=1)
    held = tokens = 0
    # In closed form, in Python ints: an int64 array of every length summed past 2**63
    # (a wrong share, silently) and took 8 bytes per step (an output of 2**40: 8 TiB).
    for p, o in zip(*_check_lengths(prompt_lens, output_lens, min_output=0)):
        held += page_size * (_pages_summed(p + o, page_size) - _pages_summed(p - 1, page_size))
        tokens += (o + 1) * (2 * p + o) // 2
    return (held - tokens) / held   # (exact to the last bit, however large)


def _pages_summed(n: int, page_size: int) -> int:
    """The pages held by lengths 1, 2, ..., n: sum of ceil(L / page_size)."""
    q, r = divmod(n, page_size)
    return page_size * q * (q + 1) // 2 + r * (q + 1)


def choose_page_size(prompt_lens, output_lens, candidates=PAGE_SIZES,
                     max_waste: float = 0.05) -> tuple[int, dict[int, float]]:
    """(the largest page size whose `tail_waste` is at most max_waste, {page size: waste})."""
    candidates = check_int_list(candidates, "candidates", "page size", minimum=1)
    if not candidates:
        raise ValueError("candidates: expected at least one page size, got []")
    if not is_number(max_waste) or not 0 <= max_waste <= 1:
        raise ValueError(f"max_waste: expected a share of the slots in [0, 1], got {max_waste!r}")
    waste = {p: tail_waste(prompt_lens, output_lens, p) for p in sorted(candidates)}
    fitting = [p for p, w in waste.items() if w <= max_waste]
    return (max(fitting) if fitting else min(waste)), waste


def _check_lengths(prompt_lens, output_lens, *, min_output: int) -> tuple[list, list]:
    """Prompt (>= 1) and output (>= min_output) lengths, one of each per request, as ints."""
    prompts = check_int_list(prompt_lens, "prompt_lens", "length", minimum=1)
    outputs = check_int_list(output_lens, "output_lens", "length", minimum=min_output)
    if len(prompts) != len(outputs) or not prompts:
        raise ValueError(f"prompt_lens, output_lens: expected one of each per request (at "
                         f"least one), got {len(prompts)} and {len(outputs)}")
    return prompts, outputs


@dataclass
class DryRun:
    """One workload through the scheduler (memory in token slots; one step = one forward)."""
    config: EngineConfig
    steps: int
    output_tokens: int
    preemptions: int
    recomputed_tokens: int
    series: dict   # per step: running, waiting, held (slots in pages), tokens (cached)

    def _saturated(self) -> np.ndarray:
        mask = self.series["waiting"] > 0
        return mask if mask.any() else np.ones_like(mask, dtype=bool)

    @property
    def waste_fraction(self) -> float:
        """Slots held but holding no token, over the steps where requests wait."""
        mask = self._saturated()
        held = self.series["held"][mask].sum()
        return float(1 - self.series["tokens"][mask].sum() / held) if held else 0.0

    @property
    def mean_running(self) -> float:
        return float(self.series["running"][self._saturated()].mean())

    @property
    def tokens_per_step(self) -> float:
        return self.output_tokens / self.steps if self.steps else 0.0

    def summary(self) -> dict:
        return {"page_size": self.config.page_size, "allocation": self.config.allocation,
                "steps": self.steps, "tokens_per_step": round(self.tokens_per_step, 2),
                "mean_running": round(self.mean_running, 2),
                "waste_fraction": round(self.waste_fraction, 4),
                "preemptions": self.preemptions, "recomputed_tokens": self.recomputed_tokens}


def dry_run(config: EngineConfig, prompt_lens, output_lens, max_steps: int = 100_000) -> DryRun:
    """Serve requests with these prompt and output lengths through the engine's scheduler,
    without a model: each request stops after its output length, which the scheduler only
    learns then. Prompts are all different (no prefix hits)."""
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config: expected an EngineConfig, got {type(config).__name__}")
    prompt_lens, outputs = _check_lengths(prompt_lens, output_lens, min_output=1)
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    for i, (p, o) in enumerate(zip(prompt_lens, outputs)):
        pages = config.pages_to_finish(p + o)   # as LLMEngine's admission check
        if pages > config.num_pages:   # else it never fits, and every step runs nothing
            raise ValueError(f"prompt_lens[{i}], output_lens[{i}]: {p} + {o} tokens may need "
                             f"{pages} pages, more than the pool of {config.num_pages}")
    kv = KVCacheManager(config.num_pages, config.page_size,
                        enable_caching=config.enable_prefix_caching,
                        num_host_pages=config.num_host_pages)
    sched = Scheduler(config, kv)
    for rid, p in enumerate(prompt_lens):
        prompt = list(range(rid * 1_000_000, rid * 1_000_000 + p))
        sched.add(Request(rid, prompt, SamplingParams(max_tokens=outputs[rid])))
    series = {k: [] for k in ("running", "waiting", "held", "tokens")}
    steps = produced = preemptions = 0
    while sched.has_unfinished() and steps < max_steps:
        step = sched.schedule()
        preemptions += len(step.preempted) + len(step.swapped_out)
        for req, n in zip(step.requests, step.num_new):
            req.num_computed_tokens += n
            kv.register_computed(req)
            if req.num_computed_tokens == req.num_tokens:
                req.output_ids.append(0)
                produced += 1
                if len(req.output_ids) >= outputs[req.rid]:
                    sched.finish(req, "length")
        steps += 1
        series["running"].append(len(sched.running))
        series["waiting"].append(len(sched.waiting) + len(sched.swapped))
        series["held"].append(sum(len(r.pages) for r in sched.running) * config.page_size)
        series["tokens"].append(sum(r.num_computed_tokens for r in sched.running))
    return DryRun(config, steps, produced, preemptions, sched.recomputed_tokens,
                  {k: np.asarray(v) for k, v in series.items()})
