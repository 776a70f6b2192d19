"""How the serving simulator's requests hold memory (sim.py): a request's record, the
contiguous policies' first-fit address space and the size each reserves, and the pages paged
admission keeps free."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(eq=False)   # a request is itself, not its fields: `in running` compares identity
class Request:
    rid: int
    prompt: int        # tokens present when admitted (grows if the request is preempted)
    final: int         # prompt + output: the length at which the request finishes
    length: int = 0    # tokens cached now
    start: int = -1    # contiguous policies: first slot of the run
    size: int = 0      # contiguous policies: slots in the run
    pages: list = field(default_factory=list)  # paged policy: physical pages


class FirstFit:
    """Contiguous runs in [0, capacity), placed at the lowest hole that fits."""

    def __init__(self, capacity: int):
        self.holes = [(0, capacity)]  # sorted (start, size), merged

    def allocate(self, size: int) -> int | None:
        for i, (start, hole) in enumerate(self.holes):
            if hole >= size:
                if hole == size:
                    self.holes.pop(i)
                else:
                    self.holes[i] = (start + size, hole - size)
                return start
        return None

    def free(self, start: int, size: int) -> None:
        i = bisect.bisect(self.holes, (start, size))
        self.holes.insert(i, (start, size))
        merged = []
        for s, n in self.holes:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        self.holes = merged

    @property
    def free_slots(self) -> int:
        return sum(n for _, n in self.holes)


def reservation(policy: str, req: Request, max_len: int) -> int:
    if policy == "reserve_max":
        return max_len
    if policy == "reserve_pow2":
        output = req.final - req.prompt
        return min(max_len, req.prompt + (1 << max(0, output - 1).bit_length()))
    return req.final  # reserve_oracle


def watermark_pages(watermark: float, pages: int) -> int:
    """The pages paged admission keeps free while requests run: rounded down, as the engine
    and vLLM do (watermark 0 keeps none)."""
    return int(watermark * pages)
