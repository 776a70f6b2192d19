"""The common call of `BatchDecodeWrapper.run`, checked in a few dozen comparisons.

run() is called once per layer per step, so its host time adds up (issue 10: at most 20
microseconds). Its checks stay those the issue asks for: the plan's array library, shapes and
dtypes, the planned largest page id against the cache's page count, C-contiguous data starting
on a 16-byte boundary, an `out` that overlaps no input, the scales of compressed pages. What
makes them cheap is that a plan knows what the arrays of a good call look like: `RunLayout`
holds that, computed once in plan, and `fast` compares each argument against it directly
(attribute reads and tuple comparisons; no torch import check, no generic helpers, no byte
range walk over the strides: a C-contiguous array spans exactly [pointer, pointer + nbytes)).

`fast` accepts only calls that the wrapper's general check accepts too, and answers None for
everything else (torch tensors, bfloat16 bits beside ml_dtypes arrays, a static NumPy scale,
anything wrong): run() then takes the general path, which converts, checks in full and names
the argument at fault. tests/test_decode_run.py holds both to that.
"""
from __future__ import annotations

from operator import attrgetter

import numpy as np


F32 = np.dtype(np.float32)


class RunLayout:
    """The arguments of a good run() of a plan; see the module docstring. `out` is the plan's
    own output buffer (run's out=None); `seen` the CuPy static scales already read back
    and checked (quant.check_run_scales)."""

    def __init__(self, *, array_type, on_gpu, batch, num_heads, num_kv_heads, head_dim,
                 page_size, max_page, out, cache_dtype, scale_scheme, no_scale, seen):
        self.array_type, self.on_gpu, self.max_page = array_type, on_gpu, max_page
        self.dtype, self.cache_dtype = out.dtype, np.dtype(cache_dtype)
        self.qshape = (batch, num_heads, head_dim)
        self.q_bytes = out.nbytes
        self.page = (page_size, num_kv_heads, head_dim)
        self.page_bytes = page_size * num_kv_heads * head_dim * self.cache_dtype.itemsize
        self.pointer = attrgetter("data.ptr" if on_gpu else "ctypes.data")
        self.out, self.out_pointer = out, self.pointer(out)
        self.scale_scheme = scale_scheme   # None: an uncompressed cache, no scales
        self.static_shape = (num_kv_heads,)
        self.token_scales = (page_size, num_kv_heads)
        self.no_scale_pointer = self.pointer(no_scale)
        self.seen = seen

    def fast(self, q, k, v, out, k_scale, v_scale):
        """(out, then the data pointers of q, k, v, out, k_scale and v_scale) for a call
        this layout accepts as it is; None sends the call to the general check. out=None:
        the plan's buffer; the scales of an uncompressed cache: the kernels' unused one."""
        t, d, kd = self.array_type, self.dtype, self.cache_dtype
        if not (type(q) is t and type(k) is t and type(v) is t and q.dtype is d
                and k.dtype is kd and v.dtype is kd and q.shape == self.qshape):
            return None
        kshape = k.shape
        if not (kshape[1:] == self.page and v.shape == kshape and kshape[0] > self.max_page
                and q.flags.c_contiguous and k.flags.c_contiguous and v.flags.c_contiguous):
            return None
        ptr = self.pointer
        p_q, p_k, p_v = ptr(q), ptr(k), ptr(v)
        if out is None:   # the plan's buffer, which an earlier run returned: q may be it
            out, p_out = self.out, self.out_pointer
        elif not (type(out) is t and out.dtype is d and out.shape == self.qshape
                  and out.flags.c_contiguous and (self.on_gpu or out.flags.writeable)):
            return None
        else:
            p_out = ptr(out)
        q_end, k_end = self.q_bytes, kshape[0] * self.page_bytes
        o_end = p_out + q_end
        if ((p_out < p_q + q_end and p_q < o_end) or (p_out < p_k + k_end and p_k < o_end)
                or (p_out < p_v + k_end and p_v < o_end)):
            return None   # out overlaps an input: check_out names it
        if (p_q | p_k | p_v | p_out) % 16:
            return None
        if self.scale_scheme is None:
            if k_scale is not None or v_scale is not None:
                return None
            return out, p_q, p_k, p_v, p_out, self.no_scale_pointer, self.no_scale_pointer
        p_ks, p_vs = self._scales(k_scale, kshape[0]), self._scales(v_scale, kshape[0])
        if p_ks is None or p_vs is None:
            return None
        s_end = k_scale.nbytes
        if (p_out < p_ks + s_end and p_ks < o_end) or (p_out < p_vs + s_end and p_vs < o_end):
            return None   # out overlaps a scale array: check_out names it
        return out, p_q, p_k, p_v, p_out, p_ks, p_vs

    def _scales(self, s, num_pages):
        """The data pointer of a compressed cache's scale array that needs no more checks:
        float32, C-contiguous, 4-byte aligned, of the scheme's shape; a static one only on
        the GPU once read back and checked (a NumPy one is checked on every call:
        quant.check_run_scales)."""
        if not (type(s) is self.array_type and s.dtype is F32 and s.flags.c_contiguous):
            return None
        p = self.pointer(s)
        if p % 4:
            return None
        if self.scale_scheme == "static":
            if not (self.on_gpu and s.shape == self.static_shape):
                return None
            return p if (id(s), p) in self.seen else None
        return p if s.shape == (num_pages, *self.token_scales) else None


class DecodeRun:
    """The fast side of `wrappers.BatchDecodeWrapper.run` (this is its base class): run(),
    the layout it checks against, the launches. Reads what the wrapper's plan sets (the
    plan's sizes, `kv_format`, `scale_scheme`, `on_gpu`, `xp`, `_out`, `_no_scale`,
    `_array_type`, `_launches`, `_seen_scales`, `_default_scale_log2`; plan calls
    `_prepare_run` at its end) and uses the wrapper's general path (`_run_general`: every call
    the fast check does not accept, checked in full by `_check_run`) and `_scale`.
    """

    def _prepare_run(self):
        """What run() compares and passes on every call, computed once per plan."""
        fmt = self.kv_format
        self._layout = RunLayout(
            array_type=self._array_type, on_gpu=self.on_gpu, batch=self.batch,
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            page_size=self.page_size, max_page=self.max_page, out=self._out,
            cache_dtype=self._out.dtype if fmt is None else fmt.storage,
            scale_scheme=self.scale_scheme, no_scale=self._no_scale, seen=self._seen_scales)
        s = self._default_scale_log2
        self._default_scale, self._last_scale = (s, int(s.view(np.uint32))), None
        if self.on_gpu:
            self._current_device = self.xp.cuda.runtime.getDevice
            self._device = self._current_device()

    def run(self, q, k_cache, v_cache, out=None, scale=None, k_scale=None, v_scale=None):
        """Attention of the planned step for one layer: q [batch, num_heads, head_dim],
        caches [num_pages, page_size, num_kv_heads, head_dim]. Returns out (the plan's own
        buffer when out is None). k_scale, v_scale: the scales of a compressed cache (see
        the module docstring); None for an uncompressed one."""
        if self.kernel is None:
            raise RuntimeError("run: call plan() first")
        checked = self._layout.fast(q, k_cache, v_cache, out, k_scale, v_scale)
        if checked is None:   # anything but the common call: converted and checked in full
            return self._run_general(q, k_cache, v_cache, out, scale, k_scale, v_scale)
        self._launch(q, k_cache, v_cache, checked[0], scale, k_scale, v_scale, checked[1:])
        return checked[0]

    def _launch(self, q, k_cache, v_cache, out, scale, k_scale, v_scale, pointers):
        """The plan's launches, the arguments checked; pointers: the data addresses of q,
        k_cache, v_cache, out and the two scale arrays (all the GPU's launches take)."""
        s, bits = self._scale(scale)
        if self.on_gpu:
            if self._current_device() != self._device:
                raise RuntimeError(f"run: the plan was made on GPU {self._device}, but GPU "
                                   f"{self._current_device()} is the current device (make "
                                   f"GPU {self._device} current, or plan on this one)")
            values = (*pointers[:4], bits, *pointers[4:])   # make_args' order
            for launch in self._launches:
                launch[0].launch(values)
            return
        if self.kv_format is None:
            k_scale = v_scale = self._no_scale
        else:   # the kernels take the codes as bytes
            k_cache, v_cache = k_cache.view(np.uint8), v_cache.view(np.uint8)
        for kern, grid, block, make_args, shared in self._launches:
            kern(grid, block, make_args(q, k_cache, v_cache, out, s, k_scale, v_scale),
                 shared_mem=shared)
