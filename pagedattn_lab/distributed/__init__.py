"""Tensor-parallel paged attention: the heads split over processes (ranks), one per GPU.

Rank r of R owns KV heads [r*Hkv/R, (r+1)*Hkv/R), their query heads, and those heads' part of
every page; rank 0's allocator makes the block tables, which every rank uses as they are.
Each decode step broadcasts the tables once, runs the course's `BatchDecodeWrapper` on each
rank's heads, and all-gathers the outputs (lesson 13).

The bookkeeping (`head_range`, `shard_cache`, `pack_tables`, `reassemble`, `step_bytes`)
is NumPy; `TPDecode` and `TPPrefill` are one rank's share of a step (decode, packed
prefill). The processes talk through `torch.distributed` (gloo on CPUs, NCCL on GPUs), which
is optional: `pip install 'pagedattn-lab[dist]'`; `launch` says so when torch is missing, and
nothing here imports torch until a rank needs it.
"""
from .decode import TPDecode
from .launch import INSTALL_HINT, launch, require_torch, torch_missing
from .prefill import TPPrefill
from .shard import (HeadRange, StepBytes, check_split, head_range, pack_tables, reassemble,
                    shard_cache, step_bytes, table_capacity, unpack_tables)

__all__ = ["HeadRange", "INSTALL_HINT", "StepBytes", "TPDecode", "TPPrefill", "check_split",
           "head_range", "launch", "pack_tables", "reassemble", "require_torch", "shard_cache",
           "step_bytes", "table_capacity", "torch_missing", "unpack_tables"]
