"""A small serving simulator: why reserving KV memory for the maximum length wastes most of it.

A server keeps one KV-cache entry per token of every running sequence. How it carves that
memory up decides how many sequences run at once. This module replays a synthetic chat
workload, one decoding step at a time, under two families of policies:

* contiguous reservation (what servers did before vLLM): when a request is admitted it gets
  one contiguous run of token slots, big enough for the longest it could become:
    - "reserve_max":    the model's maximum context length (e.g. 2048 slots) for every request;
    - "reserve_pow2":   prompt + the output length rounded up to a power of two;
    - "reserve_oracle": prompt + exactly the output length (needs to know the future; a bound);
  the runs are placed first-fit in one address space, so freed runs leave holes.
* "paged": memory is a pool of fixed-size pages (a `BlockAllocator`); a sequence takes one
  page at a time, only when its last page is full, and gives them all back when it ends.

Every step is measured in token slots, split into five parts that add up to the capacity:

    tokens    slots holding a real token's K/V right now
    reserved  slots set aside for tokens the request will still generate (empty for now)
    internal  slots inside an allocation that will never hold a token: over-reservation
              (reservation policies) or the unused tail of each sequence's last page (paged)
    external  free slots that the waiting request cannot use: every hole is too small for it
              (external fragmentation; paging has none, since any free page will do)
    free      other free slots (nobody is waiting, or the pool has not filled up yet)

Numbers are averaged over the *saturated* steps, those where requests are still waiting:
that is when wasted memory costs throughput.

The workload (`Workload`) is synthetic but shaped like the ShareGPT conversations used in the
vLLM paper (prompt mean ~160 tokens, output mean ~340, long tails): both lengths are drawn
from log-normal distributions, rounded, and clipped; see `Workload` for the exact recipe.
"""
from __future__ import annotations

import inspect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .paging import BlockAllocator, OutOfPagesError
from .sim_memory import FirstFit, Request, reservation, watermark_pages
from .validate import MAX_PAGES, check_int
from .validate_kinds import is_finite_number, is_number, is_one_of

POLICIES = ("reserve_max", "reserve_pow2", "reserve_oracle", "paged")
CATEGORIES = ("tokens", "reserved", "internal", "external", "free")
MAX_REQUESTS = 1_000_000
MAX_SLOTS = int(np.iinfo(np.int64).max)
CAPACITY_TOKENS = 32768   # simulate's capacity when neither it nor the memory is given


@dataclass(frozen=True)
class Workload:
    """Synthetic chat traffic: `num_requests` requests, all waiting at step 0 (a busy server).

    prompt_len = clip(round(LogNormal(ln(prompt_median), prompt_sigma)), min_len, prompt_max)
    output_len = clip(round(LogNormal(ln(output_median), output_sigma)), min_len,
                      max_len - prompt_len)

    A log-normal with median m and shape s has mean m * exp(s^2 / 2): with the defaults the
    prompt mean is ~160 tokens and the output mean ~340 before clipping, close to the
    ShareGPT statistics reported in the vLLM paper (161 and 338). Every request fits in the
    model's context `max_len`.
    """
    num_requests: int = 600
    prompt_median: float = 110.0
    prompt_sigma: float = 0.85
    prompt_max: int = 1024
    output_median: float = 230.0
    output_sigma: float = 0.9
    min_len: int = 4
    max_len: int = 2048
    seed: int = 0

    def __post_init__(self):
        # Each size kept as a Python int: NumPy ones wrapped in the sums below (int8 100 +
        # int8 100 is -56), and a max_len past int64 failed in sample() naming nothing.
        keep = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        # sample() draws every request up front: 10**9 of them would take tens of GB
        keep("num_requests", check_int(self.num_requests, "num_requests", minimum=1,
                                       maximum=MAX_REQUESTS))
        for name in ("prompt_median", "prompt_sigma", "output_median", "output_sigma"):
            value, positive = getattr(self, name), name.endswith("median")
            if not (is_finite_number(value) and (value > 0 if positive else value >= 0)):
                raise ValueError(f"{name}: expected a finite number "
                                 f"{'> 0' if positive else '>= 0'}, got {value!r}")
        keep("min_len", check_int(self.min_len, "min_len", minimum=1))
        keep("prompt_max", check_int(self.prompt_max, "prompt_max", minimum=self.min_len))
        # every request must fit in max_len: the longest prompt and the shortest output (and
        # int64, in which sample() clips the outputs)
        keep("max_len", check_int(self.max_len, "max_len", minimum=self.prompt_max + self.min_len,
                                  maximum=MAX_SLOTS))
        keep("seed", check_int(self.seed, "seed", minimum=0))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(prompt_lens, output_lens) as int64 arrays, reproducible from `seed`."""
        rng = np.random.default_rng(self.seed)
        prompt = rng.lognormal(math.log(self.prompt_median), self.prompt_sigma, self.num_requests)
        output = rng.lognormal(math.log(self.output_median), self.output_sigma, self.num_requests)
        prompt = np.clip(np.rint(prompt), self.min_len, self.prompt_max).astype(np.int64)
        output = np.clip(np.rint(output), self.min_len, self.max_len - prompt).astype(np.int64)
        return prompt, output


def _check_paged_fits(workload: Workload, capacity_name: str, capacity_tokens: int,
                      page_size: int, watermark: float) -> None:
    """The pool can be made, the longest request fits in its whole pages, and the longest
    prompt is admitted with the watermark kept free (simulate's paged admission)."""
    pages = capacity_tokens // page_size
    if pages > MAX_PAGES:
        raise ValueError(f"{capacity_name}: {capacity_tokens} slots make {pages} pages of "
                         f"{page_size} tokens, more than the {MAX_PAGES} a pool holds")
    if pages * page_size < workload.max_len:
        raise ValueError(f"page_size: {capacity_tokens} slots hold {pages} whole pages of "
                         f"{page_size} tokens, too few for a request of "
                         f"max_len={workload.max_len}")
    if -(-workload.prompt_max // page_size) + watermark_pages(watermark, pages) > pages:
        raise ValueError(f"watermark: {watermark} of {pages} pages kept free leaves too few "
                         f"for a prompt of prompt_max={workload.prompt_max} tokens")


@dataclass
class SimResult:
    """Per-step measurements of one simulated run (all memory numbers in token slots)."""
    policy: str
    capacity: int
    page_size: int
    series: dict          # category -> int array over steps, plus "running" and "waiting"
    finished: int
    preemptions: int
    steps: int

    def _saturated(self) -> np.ndarray:
        mask = self.series["waiting"] > 0
        return mask if mask.any() else np.ones_like(mask, dtype=bool)

    def breakdown(self) -> dict[str, float]:
        """Mean fraction of the capacity in each category over the saturated steps (sums to 1)."""
        mask = self._saturated()
        return {c: float(self.series[c][mask].mean() / self.capacity) for c in CATEGORIES}

    @property
    def token_fraction(self) -> float:
        """Share of KV memory that holds real tokens (what the vLLM paper calls utilization)."""
        return self.breakdown()["tokens"]

    @property
    def waste_fraction(self) -> float:
        return 1.0 - self.token_fraction

    @property
    def mean_running(self) -> float:
        """Sequences decoding at once, averaged over the saturated steps: the batch size."""
        return float(self.series["running"][self._saturated()].mean())

    def summary(self) -> str:
        b = self.breakdown()
        return (f"{self.policy:>14}: tokens {b['tokens']:6.1%}  reserved {b['reserved']:6.1%}  "
                f"internal {b['internal']:6.1%}  external {b['external']:6.1%}  "
                f"free {b['free']:6.1%}  | batch {self.mean_running:6.1f} sequences")


def _checked(policy, workload, capacity_tokens, page_size, max_steps, watermark, memory_bytes,
             bytes_per_token) -> tuple[Workload, int, str, int, int]:
    """`simulate`'s arguments, each refused by name: (workload, capacity in tokens, the name
    the capacity goes by in messages, page_size, max_steps)."""
    if not is_one_of(policy, POLICIES):
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    if (memory_bytes is None) != (bytes_per_token is None):
        raise ValueError(f"memory_bytes, bytes_per_token: give both or neither, got "
                         f"{memory_bytes!r} and {bytes_per_token!r}")
    if memory_bytes is not None and capacity_tokens is not None:   # (else one was dropped)
        raise ValueError(f"capacity_tokens, memory_bytes: give the capacity in tokens or the "
                         f"memory with bytes_per_token, not both; got capacity_tokens="
                         f"{capacity_tokens!r} and memory_bytes={memory_bytes!r}")
    capacity_name = "capacity_tokens"
    if capacity_tokens is None and memory_bytes is None:
        capacity_tokens = CAPACITY_TOKENS
    if memory_bytes is not None:
        bytes_per_token = check_int(bytes_per_token, "bytes_per_token", minimum=1)
        capacity_tokens = check_int(memory_bytes, "memory_bytes", minimum=0) // bytes_per_token
        capacity_name = "memory_bytes // bytes_per_token"
    if workload is None:
        workload = Workload()
    elif not isinstance(workload, Workload):
        raise TypeError(f"workload: expected a Workload or None, got {type(workload).__name__}")
    # the series are int64 arrays of slot counts: a larger capacity overflowed them at the end
    capacity_tokens = check_int(capacity_tokens, capacity_name, maximum=MAX_SLOTS)
    if capacity_tokens < workload.max_len:
        raise ValueError(f"{capacity_name}: expected at least max_len={workload.max_len}, "
                         f"got {capacity_tokens}")
    page_size = check_int(page_size, "page_size", minimum=1)
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    if not is_number(watermark):
        raise TypeError(f"watermark: expected a share of the pages in [0, 1), got {watermark!r}"
                        f" ({type(watermark).__name__})")
    if not (is_finite_number(watermark) and 0 <= watermark < 1):
        raise ValueError(f"watermark: expected a share of the pages in [0, 1), got {watermark!r}")
    if policy == "paged":   # else a request that can never be admitted stalls every step
        _check_paged_fits(workload, capacity_name, capacity_tokens, page_size, watermark)
    return workload, capacity_tokens, capacity_name, page_size, max_steps


def simulate(policy: str, workload: Workload | None = None, *, capacity_tokens: int | None = None,
             page_size: int = 16, max_steps: int = 4000, watermark: float = 0.01,
             memory_bytes: int | None = None, bytes_per_token: int | None = None) -> SimResult:
    """Run `workload` on a KV cache of `capacity_tokens` slots (None: CAPACITY_TOKENS) under
    `policy`.

    Or give the memory and what a token takes (`cache.page_bytes(1, ...)`: compressed pages
    take half of fp16's), and no capacity_tokens: then `capacity_tokens = memory_bytes //
    bytes_per_token`.

    Each step: every running sequence produces one token (a paged sequence takes a new page
    when its last is full; if none is free, the most recently admitted sequence is preempted:
    its pages are freed and it goes back to the front of the queue to be recomputed, as vLLM
    does); finished sequences release their memory; then waiting requests are admitted in
    arrival order while the one at the front fits (paged admission keeps `watermark` of the
    pages, rounded down, free for growth, unless nothing runs). Then the memory is measured.
    Stops when every request is done or after `max_steps` steps.
    """
    workload, capacity_tokens, capacity_name, page_size, max_steps = _checked(
        policy, workload, capacity_tokens, page_size, max_steps, watermark, memory_bytes,
        bytes_per_token)
    prompts, outputs = workload.sample()
    queue = deque(Request(i, int(p), int(p + o)) for i, (p, o) in enumerate(zip(prompts, outputs)))
    paged = policy == "paged"
    if paged:
        pool = BlockAllocator(capacity_tokens // page_size)
        capacity = pool.num_pages * page_size
        reserve_pages = watermark_pages(watermark, pool.num_pages)
    else:
        space = FirstFit(capacity_tokens)
        capacity = capacity_tokens
    running: list[Request] = []
    series = {k: [] for k in CATEGORIES + ("running", "waiting")}
    finished = preemptions = 0

    def release(req: Request) -> None:
        if paged:
            pool.free(req.pages)
            req.pages = []
        else:
            space.free(req.start, req.size)

    for _ in range(max_steps):
        if not queue and not running:
            break
        # 1. decode one token per running sequence (oldest first, so the newest is preempted)
        for req in list(running):
            if req not in running:  # preempted earlier in this step
                continue
            if paged and req.length == len(req.pages) * page_size:
                while True:
                    try:
                        req.pages += pool.allocate(1)
                        break
                    except OutOfPagesError:
                        victim = running.pop()
                        release(victim)
                        preemptions += 1
                        queue.appendleft(Request(victim.rid, victim.length, victim.final))
                        if victim is req:
                            break
                if req not in running:
                    continue
            req.length += 1
        # 2. finished sequences give their memory back
        for req in [r for r in running if r.length >= r.final]:
            running.remove(req)
            release(req)
            finished += 1
        # 3. admit waiting requests in order while the first one fits (its prompt is prefilled)
        while queue:
            req = queue[0]
            if paged:
                need = -(-req.prompt // page_size)
                # with nothing running the watermark is not kept (the engine's rule): a
                # preempted request, longer than any prompt, must not wait for ever
                if need + (reserve_pages if running else 0) > pool.num_free:
                    break
                req.pages = pool.allocate(need)
            else:
                req.size = reservation(policy, req, workload.max_len)
                start = space.allocate(req.size)
                if start is None:
                    break
                req.start = start
            req.length = req.prompt
            running.append(queue.popleft())
        # 4. measure
        tokens = sum(r.length for r in running)
        if paged:
            held = sum(len(r.pages) for r in running) * page_size
            reserved, internal, free_slots = 0, held - tokens, pool.num_free * page_size
            external = 0
        else:
            reserved = sum(r.final - r.length for r in running)
            internal = sum(r.size - r.final for r in running)
            free_slots = space.free_slots
            external = free_slots if queue else 0
        series["tokens"].append(tokens)
        series["reserved"].append(reserved)
        series["internal"].append(internal)
        series["external"].append(external)
        series["free"].append(free_slots - external)
        series["running"].append(len(running))
        series["waiting"].append(len(queue))
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in series.items()}
    return SimResult(policy, capacity, page_size if paged else 1, arrays, finished, preemptions,
                     len(arrays["tokens"]))


_SIMULATE = inspect.signature(simulate)


def compare_policies(workload: Workload | None = None, policies=POLICIES,
                     **kwargs) -> dict[str, SimResult]:
    """`simulate` every policy on the same workload: {policy: SimResult}."""
    if isinstance(policies, str):   # its characters would be taken as policy names
        raise TypeError(f"policies: expected a list of policy names, got {policies!r}; for "
                        f"one policy write [{policies!r}]")
    if not hasattr(policies, "__iter__"):   # (list() would say "not iterable", naming nothing)
        raise TypeError(f"policies: expected a list of policy names, got {policies!r}")
    # every name before the first simulation (seconds each): a bad last one, or one given
    # twice (a dict keeps one result per name), is refused before any work is done
    policies = list(policies)
    for i, policy in enumerate(policies):
        if not is_one_of(policy, POLICIES):
            raise ValueError(f"policies[{i}]: expected one of {POLICIES}, got {policy!r}")
        if policy in policies[:i]:
            raise ValueError(f"policies[{i}]: {policy!r} is listed twice (the result is a "
                             f"dict, one entry per policy)")
    for policy in policies:   # and a setting one policy refuses (paged: page_size)
        call = _SIMULATE.bind(policy, workload, **kwargs)   # (a stray keyword: TypeError)
        call.apply_defaults()
        _checked(**call.arguments)
    return {p: simulate(p, workload, **kwargs) for p in policies}
