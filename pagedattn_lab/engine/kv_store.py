"""Where the K/V pages live: one pair of paged arrays per layer, and host memory for swapping.

Every layer has its own `k_cache`/`v_cache` of shape [num_pages, page_size, num_kv_heads,
head_dim] (the course's NHD layout), and all layers share one block table per sequence: page
p of a sequence holds that sequence's tokens in every layer (vLLM does the same). So copying
a page (copy on write) or moving it to host memory (swap) touches all layers at once.
Compressed caches (int8 / fp8 codes) keep their per-token scales beside the pages.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..backend import to_numpy
from ..page_bytes import check_page_memory, page_bytes
from ..quant import check_scale, check_scheme, kv_dtype_name, kv_format
from ..validate_memory import check_memory
from .config import ModelConfig


class KVStore:
    """The device's KV pages for every layer, plus `num_host_pages` pages of host memory.

    kv_dtype "int8" / "fp8_e4m3" (quant.py): the pages hold one-byte codes; with
    scale_scheme "per_token" each layer also has k_scale / v_scale arrays laid out like the
    pages ([num_pages, page_size, num_kv_heads], written with each token, copied and swapped
    with their pages); with "static", `kv_scales` = (k, v), each [num_layers,
    num_kv_heads] (e.g. from `quant_accuracy.calibrate_kv_scales`)."""

    def __init__(self, config: ModelConfig, num_pages: int, page_size: int, dtype, xp,
                 num_host_pages: int = 0, kv_dtype: str | None = None,
                 scale_scheme: str = "per_token", kv_scales=None):
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.num_pages, self.page_size = num_pages, page_size
        layers, heads = config.num_hidden_layers, config.num_key_value_heads
        # one spelling from here on (quant.KV_DTYPE_ALIASES); a typo is refused by name
        self.kv_dtype = None if kv_dtype is None else kv_dtype_name(kv_dtype)
        self.scale_scheme = check_scheme(scale_scheme) if self.kv_dtype is not None else None
        if kv_scales is not None and self.scale_scheme != "static":   # else dropped unseen
            raise ValueError(f"kv_scales: only a compressed cache with static scales reads "
                             f"them; got kv_dtype={kv_dtype!r}, kv_scale_scheme="
                             f"{scale_scheme!r}: pass kv_scales=None")
        fmt = kv_format(self.kv_dtype) if self.kv_dtype is not None else None
        storage = fmt.storage if fmt else self.dtype
        shape = (num_pages, page_size, heads, config.head_dim)
        self.bytes_per_page = layers * page_bytes(page_size, heads, config.head_dim, self.dtype,
                                                  self.kv_dtype, self.scale_scheme or "static")
        self._check_memory(num_pages, num_host_pages, layers, xp is np)
        self.k = [xp.zeros(shape, storage) for _ in range(layers)]
        self.v = [xp.zeros(shape, storage) for _ in range(layers)]
        self.k_scale = self.v_scale = None
        self._paged = [self.k, self.v]       # per-layer arrays indexed by page
        if self.scale_scheme == "per_token":
            self.k_scale = [xp.ones(shape[:3], np.float32) for _ in range(layers)]
            self.v_scale = [xp.ones(shape[:3], np.float32) for _ in range(layers)]
            self._paged += [self.k_scale, self.v_scale]
        elif self.scale_scheme == "static":
            # a dict's or a set's items are its keys (a dict {"k": ..., "v": ...} was read as
            # the scales "k" and "v"); a string's are its characters
            not_a_pair = isinstance(kv_scales, (Mapping, set, frozenset, str, bytes))
            if not_a_pair or not hasattr(kv_scales, "__len__") or len(kv_scales) != 2:
                raise ValueError("kv_scales: static scales need (k_scales, v_scales), a tuple "
                                 f"or list of two float32 arrays [{layers}, {heads}] "
                                 f"(quant_accuracy.calibrate_kv_scales), got "
                                 f"{type(kv_scales).__name__}")
            k_s, v_s = (check_scale(s, name, (layers, heads), fmt.qmax)
                        for name, s in zip(("kv_scales[0]", "kv_scales[1]"), kv_scales))
            # copies: the caller's arrays may change after they were checked
            self.k_scale = [xp.array(k_s[i]) for i in range(layers)]
            self.v_scale = [xp.array(v_s[i]) for i in range(layers)]
        # Host pages are allocated lazily: a run that never swaps never pays for them.
        self._host_shapes = [(num_host_pages,) + a[0].shape[1:] for a in self._paged]
        self._host = None
        self.copied_pages = 0       # copy-on-write copies
        self.swapped_out_pages = 0
        self.swapped_in_pages = 0

    def _check_memory(self, num_pages: int, num_host_pages: int, layers: int,
                      on_cpu: bool) -> None:
        """Refuse pools larger than the memory they live in, before allocating: each layer's
        arrays may fit alone and be allocated lazily, and together get the process killed
        when their pages are written (the host pages: at the first swap, halfway through a
        step)."""
        check_page_memory(self.bytes_per_page, "cpu" if on_cpu else "gpu",
                          "page_size x num_key_value_heads x head_dim x num_hidden_layers",
                          f"one page of the {layers} layers (K and V, "
                          f"{self.kv_dtype or self.dtype.name})")
        pages, host = self.bytes_per_page * num_pages, self.bytes_per_page * num_host_pages
        what = f"the KV pages of {layers} layers"
        if on_cpu:   # the device pages are host memory too
            names = "num_pages, num_host_pages" if num_host_pages else "num_pages"
            check_memory(pages + host, "cpu", names, what + " (device and host pages)",
                         "; use fewer pages")
            return
        check_memory(pages, "gpu", "num_pages", what, "; use fewer pages")
        check_memory(host, "cpu", "num_host_pages", "the host pages for swapping",
                     "; use fewer host pages")

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def scales(self, layer: int) -> dict:
        """The k_scale / v_scale arguments of one layer's kernels ({} when uncompressed)."""
        if self.kv_dtype is None:
            return {}
        return {"k_scale": self.k_scale[layer], "v_scale": self.v_scale[layer]}

    def copy_page(self, src: int, dst: int) -> None:
        """Copy one page in every layer (copy on write), with its per-token scales."""
        for arrays in self._paged:
            for layer in range(self.num_layers):
                arrays[layer][dst] = arrays[layer][src]
        self.copied_pages += 1

    def swap_out(self, pages: list[int], host_pages: list[int]) -> None:
        """Copy device `pages` to `host_pages`, every layer."""
        if self._host is None:
            self._host = [[np.empty(shape, a[0].dtype) for _ in a]
                          for shape, a in zip(self._host_shapes, self._paged)]
        src, dst = self.xp.asarray(pages), np.asarray(host_pages)
        for arrays, host in zip(self._paged, self._host):
            for layer in range(self.num_layers):
                host[layer][dst] = to_numpy(arrays[layer][src])
        self.swapped_out_pages += len(pages)

    def swap_in(self, host_pages: list[int], pages: list[int]) -> None:
        """Copy `host_pages` back to device `pages`, every layer."""
        src, dst = np.asarray(host_pages), self.xp.asarray(pages)
        for arrays, host in zip(self._paged, self._host):
            for layer in range(self.num_layers):
                arrays[layer][dst] = self.xp.asarray(host[layer][src])
        self.swapped_in_pages += len(pages)
