"""Plan/run wrappers in FlashInfer's shape (and, from csr.py, the two forms of a page table).

A serving step calls `plan` once (all host work: the tables checked once, vectorised; the
kernel chosen; the sequences cut into partitions; buffers allocated where the tables live),
then `run` once per layer with that layer's query and caches (only launches: no host
synchronisation, no allocation, checks limited to shapes, dtypes and the planned largest page
id against the cache's page count; the one exception: a compressed cache's static scales on the
GPU are read back once, the first time a run meets that array, quant.check_run_scales):

    w = BatchDecodeWrapper()
    w.plan(block_tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size, "float16")
    for layer in range(num_layers):
        out = w.run(q[layer], k_caches[layer], v_caches[layer], out=outs[layer])

`run(out=None)` returns the plan's own output buffer, which the next `run` overwrites: pass
`out=` to keep one result per layer. bfloat16 data: ml_dtypes.bfloat16 NumPy arrays on the
CPU; torch.bfloat16 tensors (any torch tensor, through DLPack, no copy) or CuPy uint16 arrays
holding the bits on the GPU (CuPy has no bfloat16); a NumPy uint16 array is refused (on the
CPU uint16 is integers, as paged_attention_decode and write_kv read it). A call with bfloat16
among its values (q, the caches, out) takes them all as torch tensors or all as arrays: beside
a torch.bfloat16 tensor, shared as its uint16 bits, a NumPy uint16 array of integers would pass
for bfloat16 too (float32 and float16 values, the tables and the scales may mix).

Compressed pages (`quant.py`): `plan(..., kv_dtype="int8" | "fp8_e4m3",
scale_scheme="static" | "per_token")`, then `run(q, k_cache, v_cache, k_scale=, v_scale=)`
with int8 / uint8 caches of codes and float32 scales ([num_kv_heads], or [num_pages,
page_size, num_kv_heads] per token); q and out keep the plan's `dtype`. The kernels read 16
codes per 16-byte load and fold the scales into the arithmetic (kernels/decode.cu).

`to_csr` / `from_csr` convert the course's padded block tables to FlashInfer's CSR page
table (indptr, indices, last_page_len) and back.
"""
from __future__ import annotations

import math

import numpy as np

from . import decode_plan as dp
from . import decode_work as dw
from .decode_tc_sizes import tc_max_parts, tc_resident_blocks
from .attention_common import (LOG2E, MAX_GRID_YZ, THREADS, allow_shared_memory, array_dtypes,
                               data_pointer, dtype_name, gpu_resident_blocks, page_shift,
                               result_for, shared_arrays, sm_count)
from .backend import cupy_module, is_cupy_array, is_torch_tensor, resolve_device
from .csr import from_csr, to_csr  # noqa: F401 - re-exported (__all__)
from .decode_choice import check_codes_head_dim, check_simt_page
from .decode_run import DecodeRun
from .rawkernel import PackedLaunch
from .kernels import kernel as load_kernel
from .quant import check_run_scales, check_scheme, kv_format
from .run_checks import explain_run
from .tensor_checks import check_planned_tensors
from .validate import check_array, check_int, check_plain, check_plan_sizes
from .validate_out import check_out, check_plan_buffer
from .validate_scale import resolve_scale
from .words import counted

__all__ = ["BatchDecodeWrapper", "to_csr", "from_csr"]   # the CSR forms: csr.py

QUANT_NARROW_GMAX = 8   # compressed pages: SIMT blocks of this many query heads load 8 codes


class BatchDecodeWrapper(DecodeRun):
    """Decode attention over a paged KV cache, planned once per step and run per layer.

    After `plan`: `kernel` ("simt" or "tensor_core"), `scheme` (how the tensor-core kernel's
    work is cut: "balanced" ranges across sequences or "items", one partition per block;
    None on simt), `part_len` (tokens per split-K partition; balanced: per block, at most),
    `max_parts` (partitions of the longest sequence), `grid`, `describe()`.
    """

    def __init__(self):
        self.kernel = None
        self._seen_scales = {}   # CuPy static scales already checked (quant.check_run_scales)

    # ---- plan -------------------------------------------------------------------------
    def plan(self, block_tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
             dtype, *, kernel="auto", num_splits=None, device=None, kv_dtype=None,
             scale_scheme="static"):
        """Check the tables and prepare the launches of a decode step.

        block_tables int32 [batch, max_pages] and seq_lens int32 [batch] (each >= 1), NumPy
        or CuPy; dtype: "float32" or "float", "float16" or "half", "bfloat16", or a NumPy,
        ml_dtypes or torch dtype (attention_common.dtype_name: one rule for every `dtype`).
        kernel: "auto", "simt" or "tensor_core"; num_splits: cut the longest sequence into
        this many partitions (None: chosen from the lengths and the GPU); device: "cpu" or
        "gpu" (default: where block_tables live). kv_dtype: None (caches of `dtype`),
        "int8" or "fp8_e4m3" (also "fp8", see quant.KV_DTYPE_ALIASES; one-byte codes;
        `dtype` is then q's and out's), with
        scale_scheme "static" or "per_token" (see the module docstring). The plan keeps its
        own copy of block_tables and seq_lens: changing them afterwards changes no run
        until the next plan (a step's new pages need a new plan).
        """
        num_heads, num_kv_heads, head_dim, page_size = check_plan_sizes(
            num_heads, num_kv_heads, head_dim, page_size)
        if num_splits is not None:
            num_splits = check_int(num_splits, "num_splits", minimum=1)
        dtype = dtype_name(dtype)
        fmt = None if kv_dtype is None else kv_format(kv_dtype)
        check_scheme(scale_scheme)
        block_tables, seq_lens = shared_arrays(dict(block_tables=block_tables, seq_lens=seq_lens))
        check_array(block_tables, "block_tables", ndim=2, dtypes=[np.int32])
        tables_h, lens_h = dp.check_decode_tables(block_tables, seq_lens, page_size)
        if device is None:
            device = "gpu" if is_cupy_array(block_tables) else "cpu"
        on_gpu = resolve_device(device) == "gpu"
        previous = dict(self.__dict__)
        try:
            self._plan(block_tables, seq_lens, tables_h, lens_h, num_heads, num_kv_heads,
                       head_dim, page_size, dtype, kernel, num_splits, on_gpu, copy=True,
                       kv_format=fmt, scale_scheme=scale_scheme)
        except BaseException:   # _plan sets attributes as it goes: a failure halfway (grid
            # limits, memory) leaves the previous plan whole, not new sizes with no launches
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise
        return self

    def _plan(self, block_tables, seq_lens, tables_h, lens_h, num_heads, num_kv_heads,
              head_dim, page_size, dtype, kernel, num_splits, on_gpu, *, copy, max_page=None,
              kv_format=None, scale_scheme="static", page_size_arg="page_size",
              grid_args="block_tables, num_heads, num_kv_heads"):
        """plan() after validation; tables_h/lens_h are host copies of the checked tables.
        max_page: the largest page id read, when the caller knows it (or knows that the
        pages were checked against the cache already: -1). kv_format: quant.KVFormat of a
        compressed cache, or None. page_size_arg: the caller's argument that gave page_size
        (the one-shot call's is k_cache's shape), named when the pages are refused; grid_args:
        those that gave the batch and the heads, named when the launch grid is refused."""
        group = num_heads // num_kv_heads
        chosen = dp.choose_kernel(kernel, dtype, group, head_dim, on_gpu,
                                  scale_scheme if kv_format is not None else None,
                                  int(tables_h.shape[0]), int(lens_h.sum(dtype=np.int64)))
        check_codes_head_dim(kv_format, head_dim)
        if chosen == "simt":
            check_simt_page(page_size, num_kv_heads, head_dim, dtype, page_size_arg)
        xp = cupy_module() if on_gpu else np
        self.kernel, self._grid_args = chosen, grid_args
        self.on_gpu, self.xp, self.dtype = on_gpu, xp, dtype
        self.kv_format = kv_format
        self.scale_scheme = scale_scheme if kv_format is not None else None
        self._no_scale = xp.ones(1, dtype=np.float32)   # the kernels' scale arguments, unused
        self.batch, self.num_heads, self.num_kv_heads = int(tables_h.shape[0]), num_heads, num_kv_heads
        self.head_dim, self.page_size = head_dim, page_size
        self._array_dtypes = array_dtypes(dtype, on_gpu)
        self._array_type = xp.ndarray
        if max_page is None:
            pages = -(-lens_h.astype(np.int64) // page_size)
            used = np.arange(tables_h.shape[1])[None, :] < pages[:, None]
            max_page = int(tables_h[used].max()) if used.any() else -1
        self.max_page = max_page
        self._default_scale_log2 = np.float32(LOG2E / math.sqrt(head_dim))

        def place(a, a_host):   # the plan's own copy (unless the caller's stays put), where it runs
            if on_gpu:
                return (a.copy() if copy else a) if is_cupy_array(a) else xp.asarray(a_host)
            return a_host.copy() if copy else a_host
        self._tables, self._lens = place(block_tables, tables_h), place(seq_lens, lens_h)
        self._out = xp.empty((self.batch, num_heads, head_dim),
                             dtype=self._array_dtypes[0])
        self._launches = []
        # an empty batch launches nothing: no partitions, no grid (not the last plan's)
        self.scheme, self.part_len, self.max_parts, self.grid = None, 0, 0, None
        if self.batch:
            build = self._plan_tensor_core if self.kernel == "tensor_core" else self._plan_simt
            build(lens_h, num_splits)
        self._prepare_run()

    def _plan_simt(self, lens_h, num_splits):
        gmax = dp.group_kernel_size(self.num_heads // self.num_kv_heads)
        grid_y = self.num_kv_heads * -(-(self.num_heads // self.num_kv_heads) // gmax)
        self.part_len, self.max_parts = dp.choose_partitions(
            lens_h, grid_y, sm_count(self.on_gpu), num_splits,
            dp.COMPRESSED_SIMT_PART_LEN if self.kv_format and gmax >= 4 else dp.PART_LEN)
        dp.check_token_range(lens_h, self.part_len)   # (the tensor cores': dw.check_tc_int32)
        xp, i32 = self.xp, np.int32
        rows = (self.batch, self.num_heads, self.max_parts)
        split = self.max_parts > 1
        part_out = xp.empty(rows + (self.head_dim,) if split else 4, dtype=np.float32)
        part_ml = xp.empty(rows + (2,) if split else 4, dtype=np.float32)
        options = dp.simt_options(self.dtype, self.head_dim, gmax) + self._quant_options(gmax)
        self.grid = (self.max_parts, grid_y, self.batch)
        lens = self._lens
        fixed = (self._tables, lens)
        if self.kv_format and gmax >= 4 and dp.COMPRESSED_SIMT_LONGEST_FIRST:
            # the partitions as a list, longest first, in front of the lengths (decode.cu)
            work = dw.tc_work_list(lens_h, self.part_len)[0]
            fixed = (self._tables, xp.asarray(np.concatenate([work.ravel(), lens_h])))
            lens = fixed[1][work.size:]
            options += ("-DWORK_LIST=1",)
            self.grid = (len(work), grid_y, 1)
        self._gmax = gmax
        tail = (part_out, part_ml, i32(self.num_heads), i32(self.num_kv_heads),
                i32(self.page_size), i32(page_shift(self.page_size)),
                i32(self._tables.shape[1]), i32(self.part_len), i32(self.max_parts))
        self._add_launch(load_kernel("decode", "paged_decode", options), self.grid,
                         dp.simt_shared_bytes(gmax, self.head_dim),
                         lambda q, k, v, out, s, ks, vs: (q, k, v, ks, vs, *fixed, out, *tail, s))
        if split:
            merge_args = (part_out, part_ml, lens)
            merge_tail = (i32(self.num_heads), i32(self.part_len), i32(self.max_parts))
            self._add_launch(load_kernel("decode", "paged_decode_merge", options),
                             (self.num_heads, self.batch), 0,
                             lambda q, k, v, out, s, ks, vs: (*merge_args, out, *merge_tail),
                             block=max(32, min(THREADS, self.head_dim)))

    def _plan_tensor_core(self, lens_h, num_splits, tc=None, scheme=None, ranges=None):
        """tc: a dp.TCConfig to plan with instead of the planner's; scheme, ranges: the work
        of decode_mma.cu (decode_work.tc_work; None: the planner's) (tuning runs, tests)."""
        group = self.num_heads // self.num_kv_heads
        fmt = self.kv_format
        quant = fmt.kernel_id if fmt else 0
        fuse = dp.kv_fuse(self.dtype, self.head_dim, group, self.num_kv_heads, quant)
        cfg = tc or dp.tc_config(self.dtype, self.head_dim, group, quant,
                                 self.scale_scheme == "per_token", kv_fuse=fuse)
        # the kernel's KV heads: kv_fuse of ours at a time, kv_fuse x head_dim dims each
        kv_heads, kernel_dim = self.num_kv_heads // cfg.kv_fuse, self.head_dim * cfg.kv_fuse
        rows, row_tiles = cfg.rows, cfg.row_tiles
        grid_y = kv_heads * cfg.chunks
        kern = load_kernel(cfg.source, cfg.function, cfg.options)
        # blocks per SM: the driver's count on the GPU, the sizes' on the CPU executor
        resident = (gpu_resident_blocks(kern, cfg.threads, cfg.shared) if self.on_gpu
                    else tc_resident_blocks(cfg, kernel_dim))
        sms = sm_count(self.on_gpu)
        self.scheme, segments = dw.tc_work(lens_h, cfg, grid_y, sms, resident,
                                           tc_max_parts(rows, cfg.kv_bytes), num_splits,
                                           scheme, ranges)
        short = tc is None and fmt is None and cfg.kv_fuse == 1 and dp.short_items_config(
            self.dtype, self.head_dim, group, self.scheme, segments.range_tokens)
        if short:   # one wave of short items: the planner's shape for them (decode_plan)
            return self._plan_tensor_core(lens_h, num_splits, short, scheme, ranges)
        if cfg.heads_on_x and segments.seg_ptr.size - 1 > dp.GRID_Y_MAX:   # (grid y's limit)
            return self._plan_tensor_core(lens_h, num_splits, dp.work_on_x(cfg), scheme, ranges)
        dw.check_tc_int32(cfg, lens_h, segments, self.max_page, self.page_size, bool(fmt))
        self.part_len, self.max_parts = segments.range_tokens, segments.max_parts
        self.row_tiles, self.rows_per_block, self.tc_config = row_tiles, rows, cfg
        xp, i32 = self.xp, np.int32
        if cfg.impl != "wmma":   # the segments of each block (the PTX kernels)
            work, slots = np.concatenate([segments.segs.ravel(), segments.seg_ptr]), segments.slots
            blocks, slot_start = segments.seg_ptr.size - 1, segments.slot_start
        else:                   # (sequence, partition) per block
            work, slot_start, slots = dw.tc_work_list(lens_h, self.part_len)
            blocks, work = len(work), work.ravel()
        # One upload: the work, slot starts, and the merge counters (zeros).
        ints = xp.asarray(np.concatenate([work, slot_start,
                                          np.zeros(self.batch * grid_y, np.int32)]))
        n_work = work.size
        slot_d, counters = ints[n_work:n_work + self.batch], ints[n_work + self.batch:]
        part_out = xp.empty((slots, self.num_heads, kernel_dim) if slots else 4, np.float32)
        part_ml = xp.empty((slots, self.num_heads, 2) if slots else 4, np.float32)
        self.grid = (grid_y, blocks, 1) if cfg.heads_on_x else (blocks, grid_y, 1)
        if cfg.impl != "wmma":
            n_segs = segments.segs.size
            fixed = (self._tables, ints[:n_segs], ints[n_segs:n_work], slot_d)
        else:
            fixed = (self._tables, self._lens, ints[:n_work], slot_d)
        tail = (part_out, part_ml, counters, i32(self.num_heads), i32(kv_heads),
                i32(self.page_size), i32(page_shift(self.page_size)), i32(self._tables.shape[1]))
        tail += (i32(rows),) if cfg.impl != "wmma" else (i32(self.part_len), i32(rows))
        no_scale = self._no_scale
        self._add_launch(kern, self.grid, cfg.shared,
                         lambda q, k, v, out, s, ks=no_scale, vs=no_scale:
                         (q, k, v, ks, vs, *fixed, out, *tail, s), block=cfg.threads)
        split = np.flatnonzero(segments.parts > 1)
        if cfg.separate_merge and split.size:   # the split sequences' merge, launched after
            merges = xp.asarray(np.stack([split, segments.parts[split]], 1).astype(np.int32))
            args = (merges, slot_d)
            m_tail = (part_out, part_ml, i32(self.num_heads), i32(self.num_kv_heads), i32(rows))
            self._add_launch(load_kernel(cfg.source, "paged_decode_mma_merge", cfg.options),
                             (split.size, grid_y, 1), rows * self.max_parts * 4,
                             lambda q, k, v, out, s, ks=None, vs=None: (*args, out, *m_tail),
                             block=cfg.threads)

    def _quant_options(self, gmax: int | None = None) -> tuple[str, ...]:
        """The -D options of a compressed cache (kv_quant.cuh); none for an uncompressed one.
        gmax: the SIMT kernel's query heads per block; from QUANT_NARROW_GMAX on, it loads 8
        codes at a time instead of 16 (16 floats of q and of the sum per head and thread
        spill at 8 heads: 255 registers + 700 bytes; 242 and none with 8-byte loads, nvcc 13
        -Xptxas -v, head_dim 128). At 4 heads 16-byte loads won (H200, D64 GQA 32/8: 0.206
        against 0.221 ms, fp8; benchmarks/NOTES.md)."""
        fmt = self.kv_format
        if fmt is None:
            return ()
        narrow = gmax is not None and gmax >= QUANT_NARROW_GMAX
        return (f"-DKV_QUANT={fmt.kernel_id}", "-DCACHE_T=unsigned char",
                f"-DPER_TOKEN_SCALES={int(self.scale_scheme == 'per_token')}",
                f"-DCHUNK_BYTES={8 if narrow else 16}")

    def _add_launch(self, kern, grid, shared, make_args, block=THREADS):
        if max(grid[1:]) > MAX_GRID_YZ:   # the GPU would refuse the launch in run()
            tip = "" if self.kernel == "tensor_core" else ", or plan with kernel='tensor_core'"
            raise ValueError(f"{self._grid_args}: {self.batch} sequences "
                             f"and {self.num_heads} query heads over {self.num_kv_heads} KV "
                             f"heads need a launch grid {grid}, past CUDA's limit of "
                             f"{MAX_GRID_YZ} blocks in y and z; split the batch or the heads{tip}")
        allow_shared_memory(kern, shared)
        # (on the GPU, run() launches it with the arguments packed here: rawkernel.PackedLaunch)
        if self.on_gpu:
            kern = PackedLaunch(kern.gpu, grid, (block,), shared, make_args, n_varying=7)
        self._launches.append((kern, grid, (block,), make_args, shared))

    def describe(self) -> str:
        """One line: the kernel, its blocks and the split."""
        if self.kernel is None:
            return "BatchDecodeWrapper (not planned)"
        if not self.batch:
            return f"{self.kernel}: 0 sequences, nothing to launch"
        group = self.num_heads // self.num_kv_heads
        if self.kernel == "tensor_core":
            how = (f"{counted(self.rows_per_block, 'query head')} per block as the rows of Q "
                   f"({counted(self.row_tiles, 'tile')} of 16, kernels/{self.tc_config.source}.cu)")
            if self.tc_config.impl == "rows":
                how = (f"{counted(self.rows_per_block, 'query head')} per block as the columns of "
                       f"K Q^T, 16 tokens as its rows (kernels/{self.tc_config.source}.cu)")
        else:
            how = f"up to {counted(self._gmax, 'query head')} per block"
        pages = "" if self.kv_format is None else \
            f" over {self.kv_format.name} pages ({self.scale_scheme} scales)"
        if self.kernel == "tensor_core" and self.scheme == "balanced":
            work = (f"balanced ranges: each block streams up to {counted(self.part_len, 'token')} "
                    f"across sequences (a sequence in at most {counted(self.max_parts, 'part')})")
        else:
            work = (f"partitions of {counted(self.part_len, 'token')} (at most {self.max_parts} "
                    f"per sequence)")
        return (f"{self.kernel}{pages}: {counted(self.batch, 'sequence')}, "
                f"{counted(self.num_heads, 'query head')} over "
                f"{counted(self.num_kv_heads, 'KV head')} (group {group}), {how}; {work}; "
                f"grid {self.grid}")

    # ---- run: the general path (decode_run.DecodeRun has run() and its fast path) ---------
    def _run_general(self, q, k_cache, v_cache, out, scale, k_scale, v_scale):
        """run() of torch tensors, bfloat16 bits, and every call the fast check refused."""
        like, given_out = (q if is_torch_tensor(q) else None), out
        tensors = like is not None or any(is_torch_tensor(x) for x in (k_cache, v_cache, out,
                                                                       k_scale, v_scale))
        # uint16 holds bfloat16 bits on CuPy and in a torch.bfloat16 q's view (beside which
        # every bfloat16 value is a tensor: check_one_kind); a NumPy uint16 array holds
        # integers, refused as paged_attention_decode and write_kv do (torch scales beside
        # NumPy values change nothing there)
        dtypes = self._array_dtypes if self.on_gpu or like is not None else self._array_dtypes[:1]
        if tensors:
            check_planned_tensors(self.dtype, self.kv_format, q, k_cache, v_cache, out)
            q, k_cache, v_cache, out, k_scale, v_scale = shared_arrays(
                dict(q=q, k_cache=k_cache, v_cache=v_cache, out=out, k_scale=k_scale,
                     v_scale=v_scale), self.kv_format)
        for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
            check_plain(x, name)   # (the scales: check_run_scales)
        if out is None:   # the plan's buffer (a uint16 view of it for bfloat16 bits on the CPU)
            # A q that is no array, or of a dtype the plan refuses, keeps the plan's buffer:
            # _check_run then names q (a view to it would fail with NumPy's own message).
            q_dtype = getattr(q, "dtype", None)
            view = q_dtype is not None and q_dtype != self._out.dtype and any(
                q_dtype == d for d in dtypes)
            out = self._out.view(q_dtype) if view else self._out
            check_plan_buffer(out, q=q, k_cache=k_cache, v_cache=v_cache, k_scale=k_scale,
                              v_scale=v_scale)
        else:
            check_out(out, q=q, k_cache=k_cache, v_cache=v_cache, k_scale=k_scale,
                      v_scale=v_scale)
        self._check_run(q, k_cache, v_cache, out, dtypes)
        check_run_scales(self.kv_format, self.scale_scheme, k_cache.shape, k_scale, v_scale,
                         self.on_gpu, self._seen_scales)
        scales = (k_scale, v_scale) if self.kv_format is not None else (self._no_scale,) * 2
        pointers = tuple(data_pointer(x) for x in (q, k_cache, v_cache, out, *scales))
        self._launch(q, k_cache, v_cache, out, scale, k_scale, v_scale, pointers)
        return result_for(out, like, given_out)

    def _scale(self, scale):
        """(scale * log2(e) as a float32, its bits): the default's, or the last scale's,
        computed once (a serving loop passes the same scale at every layer)."""
        if scale is None:
            return self._default_scale
        last = self._last_scale
        if last is None or (type(scale), scale) != last[0]:
            s = np.float32(resolve_scale(scale, self.head_dim) * LOG2E)
            last = self._last_scale = ((type(scale), scale), s, int(s.view(np.uint32)))
        return last[1:]

    def _check_run(self, q, k, v, out, dtypes):
        """dtypes: those q and out may have (of the plan's `_array_dtypes`)."""
        qshape = (self.batch, self.num_heads, self.head_dim)
        t = self._array_type   # subclasses too (np.memmap): an ndarray's memory all the same
        if (isinstance(q, t) and isinstance(k, t) and isinstance(v, t) and isinstance(out, t)
                and q.shape == qshape and out.shape == qshape and k.ndim == 4
                and k.shape[1:] == (self.page_size, self.num_kv_heads, self.head_dim)
                and v.shape == k.shape and k.shape[0] > self.max_page
                and q.dtype in dtypes and out.dtype == q.dtype
                and k.dtype == v.dtype == (q.dtype if self.kv_format is None
                                           else self.kv_format.storage)
                and q.flags.c_contiguous and k.flags.c_contiguous and v.flags.c_contiguous
                and out.flags.c_contiguous
                and not (data_pointer(q) | data_pointer(k) | data_pointer(v)
                         | data_pointer(out)) % 16):
            return
        explain_run(self, q, k, v, out, qshape, dtypes)
