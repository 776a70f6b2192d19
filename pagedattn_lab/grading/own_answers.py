"""Per task, the package's objects that ARE that task's answer (read by own_work.py).

`ANSWERS`: task -> "module:name" (module under `pagedattn_lab`), or "module:Class.method"
for a method (own_work then also refuses a learner's class that keeps the package's method
instead of writing it, and watches the method where the class holds it). Listed: what
computes the task's answer whole from the task's inputs, with a few lines of glue at most
(tests/test_grade_own_answers.py: glue that passed every case), and the engine's scheduler,
whose rule schedule_step's check restates. Not listed: helpers a workbook tells the learner
to use (validation, hash_block, the decode wrapper and the cache's block_tables in lesson
07's decode step, plotting) and building blocks that leave the task's work to the learner.

Python tasks with no entry, and why:
- reserved_waste, decode_floor_ms: a line of arithmetic that no package function computes
  from these inputs (the simulator and the benchmark report compute other quantities);
- append_tokens, serve: the package's own versions (PagedKVCache.append,
  KVCacheManager.grow, sim.simulate, the engine) run on their own sequences, pools and
  policies, not on a caller's list and allocator or this loop's admission rule;
- tile_pages, tiled_launch: the package's tiled kernel tiles and launches otherwise
  (attention_prefill.plan_prefill), so none of its code gives these answers;
- group_rows, mask_tile: the package does them only inside its CUDA kernels.
Where a check has a Python reference of its own (checks_tc_rows.reference_group_rows,
checks_tiling.expected_launch...), a call of it is refused as the grader's own code.
The CUDA C tasks need no entry: own_work.kernel_findings refuses a source holding a
package kernel's text or #including its file; the lesson 03 puzzles have no finished
version in the package (puzzles.py holds their specs only).
"""
from __future__ import annotations

import importlib
import inspect
from functools import reduce

PACKAGE = "pagedattn_lab"

_REFERENCES = tuple(f"reference:{n}" for n in ("reference_decode", "reference_prefill",
                                               "reference_prefill_packed", "_softmax_attend"))
_GATHER = ("addressing:gather_kv_reference", "gather:gather_kv")
_MASKS = ("prefill_masks:causal_mask", "prefill_masks:packed_masks")

ANSWERS: dict[str, tuple[str, ...]] = {
    "pages_needed": ("engine.kv_manager:_pages_for",),
    "paged_waste": ("engine.adaptive:tail_waste",),   # (outputs of length 0: paged waste)
    "allocator": ("paging:BlockAllocator",),
    "refcounts": ("paging:BlockAllocator",),
    "block_tables": ("engine.attention:_padded_table", "cache:PagedKVCache.block_tables"),
    "slot_of": ("addressing:physical_slot", "addressing:translate", "addressing:token_slots"),
    "kv_offset": ("addressing:element_offset", "addressing:translate"),
    "gather_numpy": (*_GATHER, "addressing:token_slots", *_REFERENCES),
    "online_softmax": _REFERENCES,
    "attend_one": _REFERENCES,
    "merge_partitions": ("split_k:merge_partials", "split_k:reference_partials",
                         *_REFERENCES),
    "pages_for_next_token": ("cache:PagedKVCache.pages_needed",
                             "cache:PagedKVCache.decode_pages_needed"),
    "decode_step": ("manager:PagedAttentionManager.decode_step",),
    "kv_bytes": ("bench.workloads:DecodeWorkload.kv_bytes",),
    "choose_page_size": ("engine.adaptive:choose_page_size",),
    "chunk_mask": _MASKS,
    "visible_keys": _MASKS,   # (a mask's row sums are the keys each row sees)
    "tile_work": ("prefill_wrapper:work_list",),
    "kv_scales": ("quant:per_token_scales", "quant:static_scales"),
    "block_hashes": ("engine.prefix_cache:block_hashes",),
    "cached_prefix": ("engine.kv_manager:KVCacheManager.cached_prefix",),
    "schedule_step": ("engine.scheduler:Scheduler.schedule",
                      "engine.scheduler:Scheduler._schedule_running",
                      "engine.scheduler:Scheduler._schedule_waiting"),
    "gather_heads": ("distributed.shard:reassemble",),
    "head_split": ("distributed.shard:head_range",),
    "wire_bytes": ("distributed.shard:step_bytes",),
}


def _entries(task: str) -> list[tuple[str, object, str]]:
    """(dotted name, holder, attribute) of the task's answers: the holder is the module, or
    the class of a method ("module:Class.method")."""
    out = []
    for entry in ANSWERS.get(task, ()):
        module, name = entry.split(":")
        *path, attr = name.split(".")
        holder = reduce(getattr, path, importlib.import_module(f"{PACKAGE}.{module}"))
        out.append((f"{PACKAGE}.{module}.{name}", holder, attr))
    return out


def answers(task: str) -> dict[int, tuple[str, object]]:
    """id -> (dotted name, object) of the task's answers (a method: its function)."""
    return {id(obj): (dotted, obj) for dotted, holder, attr in _entries(task) for obj in
            [inspect.getattr_static(holder, attr) if isinstance(holder, type) else
             getattr(holder, attr)]}
