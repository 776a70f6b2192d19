"""PagedAttention Lab: the paged KV cache behind vLLM, from the page table to fast kernels.

The public names below are stable; notebooks, exercises and tests rely on them. Names
backed by kernels load on first use, so `import pagedattn_lab` stays quick and never
imports CuPy by itself.
"""
import importlib

from . import loaded_code as _loaded_code

_loaded_code.install()   # first: the own-work check knows the package's code by it

from .addressing import (Translation, element_offset, gather_kv_reference, page_offset,
                         physical_page, physical_slot, token_slots, translate, virtual_page)
from .backend import gpu_available, gpu_status
from .cache import PagedKVCache
from .gather import gather_kv
from .paging import BlockAllocator, OutOfPagesError
from .reference import reference_decode, reference_prefill, reference_prefill_packed

__version__ = "0.1.0"

_LAZY = {
    "BatchDecodeWrapper": "wrappers",
    "BatchPrefillWrapper": "prefill_wrapper",
    "slot_mapping": "cache_write",
    "write_kv": "cache_write",
    "from_csr": "wrappers",
    "to_csr": "wrappers",
    "paged_attention_decode": "attention",
    "paged_attention_prefill": "attention",
    "PagedAttentionManager": "manager",
    "RawKernel": "rawkernel",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pagedattn_lab' has no attribute {name!r}")


__all__ = [
    "BatchDecodeWrapper", "BatchPrefillWrapper", "BlockAllocator", "OutOfPagesError", "PagedAttentionManager",
    "PagedKVCache", "RawKernel", "Translation", "element_offset", "from_csr", "gather_kv",
    "gather_kv_reference", "gpu_available", "gpu_status", "page_offset", "paged_attention_decode",
    "paged_attention_prefill", "physical_page", "physical_slot", "reference_decode",
    "reference_prefill", "reference_prefill_packed", "slot_mapping", "to_csr", "token_slots",
    "translate", "virtual_page", "write_kv",
]
