"""What the engine measures: a row per step (for plots over time) and the run's totals."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# tokens_stored: slots of held pages that hold a computed token (shared pages once).
SERIES = ("running", "waiting", "swapped", "pages_used", "pages_cached", "tokens_stored",
          "batch_tokens", "prefill_tokens", "decode_tokens", "hit_rate", "seconds")


COUNTERS = ("preempted_recompute", "preempted_swap", "prompt_tokens", "output_tokens",
            "finished", "finished_prompt_tokens", "finished_cached_tokens", "aborted")


@dataclass
class EngineStats:
    """Per-step series (lists, one entry per step; see SERIES) and counters."""
    series: dict = field(default_factory=lambda: {k: [] for k in SERIES})
    preempted_recompute: int = 0
    preempted_swap: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    finished: int = 0
    finished_prompt_tokens: int = 0
    finished_cached_tokens: int = 0   # their prompt tokens served by the prefix cache
    aborted: int = 0                  # requests taken out by abort_request

    def mark(self) -> tuple:
        """The counters and the series' lengths now, for `rewind`."""
        return ({k: getattr(self, k) for k in COUNTERS},
                {k: len(v) for k, v in self.series.items()})

    def rewind(self, mark: tuple) -> None:
        """Back to `mark` (a step that failed is not counted)."""
        counters, lengths = mark
        for k, v in counters.items():
            setattr(self, k, v)
        for k, n in lengths.items():
            del self.series[k][n:]

    def record(self, **row) -> None:
        for key in SERIES:
            self.series[key].append(row[key])

    @property
    def steps(self) -> int:
        return len(self.series["seconds"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.series.items()}

    def waste_fraction(self, page_size: int) -> float:
        """Slots in held pages that hold no token (tails of last pages, predictive
        reservations), over the whole run."""
        s = self.arrays()
        held = int(s["pages_used"].sum()) * page_size if self.steps else 0
        return 1 - int(s["tokens_stored"].sum()) / held if held else 0.0

    def summary(self, engine) -> dict:
        """The run's totals: throughput, memory, batch size, preemption and cache figures."""
        s = self.arrays()
        seconds = float(s["seconds"].sum()) if self.steps else 0.0
        store, kv = engine.store, engine.kv
        return {
            "steps": self.steps,
            "seconds": round(seconds, 4),
            "requests_finished": self.finished,
            "requests_aborted": self.aborted,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": round(self.output_tokens / seconds, 2) if seconds else 0.0,
            "peak_pages_used": int(s["pages_used"].max()) if self.steps else 0,
            "peak_kv_bytes": (int(s["pages_used"].max()) * store.bytes_per_page
                              if self.steps else 0),
            "kv_waste_fraction": round(self.waste_fraction(engine.config.page_size), 4),
            "mean_running": round(float(s["running"].mean()), 2) if self.steps else 0.0,
            "max_running": int(s["running"].max()) if self.steps else 0,
            "preempted_recompute": self.preempted_recompute,
            "preempted_swap": self.preempted_swap,
            "recomputed_tokens": engine.scheduler.recomputed_tokens,
            "swapped_pages": store.swapped_out_pages + store.swapped_in_pages,
            "swap_bytes": (store.swapped_out_pages + store.swapped_in_pages) * store.bytes_per_page,
            "cow_copies": kv.cow_copies,
            "evictions": kv.pool.evictions,
            "prefix_hit_rate": round(kv.hit_rate, 4),
            "prompt_hit_rate": round(self.finished_cached_tokens / self.finished_prompt_tokens, 4)
            if self.finished_prompt_tokens else 0.0,
        }
