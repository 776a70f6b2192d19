"""Where the K/V pages live: one pair of paged arrays per layer, and host memory for swapping.

Every layer has its own `k_cache`/`v_cache` of shape [num_pages, page_size, num_kv_heads,
head_dim] (the course's NHD layout), and all layers share one block table per sequence: page
p of a sequence holds that sequence's tokens in every layer (vLLM does the same). So copying
a page (copy on write) or moving it to host memory (swap) touches all layers at once.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from .config import ModelConfig


class KVStore:
    """The device's KV pages for every layer, plus `num_host_pages` pages of host memory."""

    def __init__(self, config: ModelConfig, num_pages: int, page_size: int, dtype, xp,
                 num_host_pages: int = 0):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.num_pages, self.page_size = num_pages, page_size
        shape = (num_pages, page_size, config.num_key_value_heads, config.head_dim)
        self.k = [xp.zeros(shape, self.dtype) for _ in range(config.num_hidden_layers)]
        self.v = [xp.zeros(shape, self.dtype) for _ in range(config.num_hidden_layers)]
        host_shape = (num_host_pages,) + shape[1:]
        # Host pages are allocated lazily: a run that never swaps never pays for them.
        self._host_shape = host_shape
        self._host_k = self._host_v = None
        self.bytes_per_page = 2 * len(self.k) * int(np.prod(shape[1:])) * self.dtype.itemsize
        self.copied_pages = 0       # copy-on-write copies
        self.swapped_out_pages = 0
        self.swapped_in_pages = 0

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def copy_page(self, src: int, dst: int) -> None:
        """Copy one page in every layer (copy on write)."""
        for layer in range(self.num_layers):
            self.k[layer][dst] = self.k[layer][src]
            self.v[layer][dst] = self.v[layer][src]
        self.copied_pages += 1

    def swap_out(self, pages: list[int], host_pages: list[int]) -> None:
        """Copy device `pages` to `host_pages`, every layer."""
        if self._host_k is None:
            self._host_k = [np.empty(self._host_shape, self.dtype) for _ in self.k]
            self._host_v = [np.empty(self._host_shape, self.dtype) for _ in self.k]
        src, dst = self.xp.asarray(pages), np.asarray(host_pages)
        for layer in range(self.num_layers):
            self._host_k[layer][dst] = to_numpy(self.k[layer][src])
            self._host_v[layer][dst] = to_numpy(self.v[layer][src])
        self.swapped_out_pages += len(pages)

    def swap_in(self, host_pages: list[int], pages: list[int]) -> None:
        """Copy `host_pages` back to device `pages`, every layer."""
        src, dst = np.asarray(host_pages), self.xp.asarray(pages)
        for layer in range(self.num_layers):
            self.k[layer][dst] = self.xp.asarray(self._host_k[layer][src])
            self.v[layer][dst] = self.xp.asarray(self._host_v[layer][src])
        self.swapped_in_pages += len(pages)
