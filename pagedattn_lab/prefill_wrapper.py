"""`BatchPrefillWrapper`: packed, variable-length prefill on tensor cores, in FlashInfer's shape.

    w = BatchPrefillWrapper()
    w.plan(qo_indptr, block_tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
           np.float16, causal=True)                    # once per step: all host work
    out = w.run(q, k_cache, v_cache)                   # per layer: one launch

q is packed `[total_q, num_heads, head_dim]`: sequence b's queries are rows
`qo_indptr[b]:qo_indptr[b+1]`, and they are its last q_len tokens (`seq_lens[b]` counts every
cached token, the new ones included, whose K/V are already written, e.g. by
`cache_write.write_kv`). So one batch can mix all-new prompts (q_len == seq_len), chunks of
long prompts over a cached prefix, and decode tokens (q_len 1). Causal masks are aligned
bottom-right: query i sees keys 0 .. seq_len - q_len + i.

Two kernels, one tile loop (FlashAttention-2 style; `kernels/prefill_tiles.cuh`):
`kernels/prefill_mma.cu` (PTX mma.sync, P kept in registers: the fast one) and
`kernels/prefill_tc.cu` (WMMA: lesson 10's). `plan` validates the tables once, splits the batch
in two launches (decode-like sequences, whose query heads of one KV head are packed into one
16-row tile, and the longer ones, on the variant measured fastest for their head size:
`variant_for`), cuts each sequence's rows into query tiles (the work lists, longest first),
compiles the variants and moves the index arrays to the device; `kernel_name` and `variant`
say what it chose (the variants, their shared memory and the work lists: `prefill_plan.py`).
`run` checks only what can change between layers (the arrays' shapes, dtypes and place, and that
the cache holds the planned pages) and launches; it allocates nothing: `run(out=None)` returns
the plan's own output buffer, which the next `run` overwrites (as BatchDecodeWrapper's): pass
`out=` to keep one result per layer.

Element types: fp16 everywhere; bf16 as `ml_dtypes.bfloat16` arrays on the CPU and, since
CuPy has no bfloat16 dtype, as uint16 CuPy arrays holding the bf16 bits on the GPU.

Compressed pages (`quant.py`): `plan(..., kv_dtype="int8" | "fp8_e4m3",
scale_scheme="static" | "per_token")`, then `run(q, k_cache, v_cache, k_scale=, v_scale=)`
with int8 / uint8 caches and float32 scales ([num_kv_heads], or [num_pages, page_size,
num_kv_heads] per token). The kernel dequantizes as it stages each K/V tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attention_common import (KV_C_TYPES, LOG2E, MAX_GRID_YZ, MAX_SHARED_MEM,
                               allow_shared_memory, check_aligned16, check_storage,
                               element_dtype, fast_path, prepare_out, result_for,
                               shared_arrays)
from .backend import array_module, is_cupy_array, is_torch_tensor, to_numpy
from .kernels import kernel as load_kernel
from .prefill_plan import (DECODE_ROWS, DECODE_VARIANT, HEAD_DIMS, KV_TILE, Variant,
                           check_int32_ranges, check_prefill_tables, shared_bytes,
                           variant_for, work_list)
from .quant import check_run_scales, check_scheme, kv_format
from .tensor_checks import check_planned_tensors
from .validate import bf16_bits_hint, check_array, check_bool, check_int, check_plan_sizes
from .validate_kinds import dtype_label
from .validate_out import check_out, check_plan_buffer
from .validate_scale import resolve_scale


def element_type(dtype) -> tuple[str, np.dtype]:
    """(CUDA element type, the dtype arrays must have) for a prefill dtype, spelled as every
    `dtype` argument is (attention_common.dtype_name)."""
    array_dtype = element_dtype(dtype, ("float16", "bfloat16"), " (tensor cores take 16-bit "
                                "inputs; fp32 prefill runs on paged_attention_prefill)")
    return KV_C_TYPES[array_dtype.name], array_dtype


def _accepts(array_dtype, planned: np.dtype, on_gpu: bool) -> bool:
    if array_dtype == planned:
        return True
    return on_gpu and planned != np.float16 and array_dtype == np.uint16   # bf16 bits


def _check_one_choice(warps, variant, decode_variant) -> None:
    """`variant` fixes the warps, and with either of the two no launch is packed: a second
    choice beside one of them would be dropped unseen."""
    if variant is not None and warps is not None:
        raise ValueError(f"warps: variant {variant!r} fixes the warps; pass one of the two, "
                         f"got warps={warps!r} too")
    if decode_variant is not None and (variant is not None or warps is not None):
        raise ValueError(f"decode_variant: variant or warps runs every sequence unpacked, so "
                         f"there is no packed launch for {decode_variant!r}; pass one or the "
                         f"other")


@dataclass
class Part:
    """One launch of a plan: its variant, pack (query heads per block), work list, kernel."""
    variant: Variant
    pack: int
    sequences: int
    work: object
    kernel: object
    grid: tuple
    block: tuple
    shared_mem: int


class BatchPrefillWrapper:
    """Plan once per step, run once per layer. See the module docstring."""

    def __init__(self):
        self.planned = False
        self._seen_scales = {}   # CuPy static scales already checked (quant.check_run_scales)

    def plan(self, qo_indptr, block_tables, seq_lens, num_heads: int, num_kv_heads: int,
             head_dim: int, page_size: int, dtype, causal: bool = True,
             warps: int | None = None, kv_dtype: str | None = None,
             scale_scheme: str = "static", variant: str | None = None,
             decode_variant: str | None = None):
        """All host work for one batch. The device is where `block_tables` lives (CuPy: the
        GPU; NumPy: the CPU executor). Sequences whose q_len * (num_heads / num_kv_heads)
        fits 16 rows (decode tokens, short chunks) run in one launch with GQA packing; the
        others in a second launch with the variant `variant_for` picks (`self.variant` names
        what was chosen). `variant` (a `Variant` name such as "w4r2k32u2") or `warps` (1, 2, 4
        or 8 one-fragment warps) instead runs every sequence on that variant, unpacked;
        `decode_variant` replaces the packed launch's one-warp default (at most one of the
        three). dtype: "float16" or "half", "bfloat16", or a NumPy, ml_dtypes or torch dtype
        (spelled as BatchDecodeWrapper.plan's). Raises before changing the wrapper if
        anything is off. The plan keeps its own copy of qo_indptr, block_tables and
        seq_lens: changing them afterwards changes no run until the next plan."""
        num_heads, num_kv_heads, head_dim, page_size = check_plan_sizes(
            num_heads, num_kv_heads, head_dim, page_size)
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"head_dim: expected one of {HEAD_DIMS}, got {head_dim}")
        elem, array_dtype = element_type(dtype)
        fmt = None if kv_dtype is None else kv_format(kv_dtype)
        check_scheme(scale_scheme)
        check_bool(causal, "causal")
        _check_one_choice(warps, variant, decode_variant)
        fixed = None
        packed = DECODE_VARIANT if decode_variant is None else (
            decode_variant if isinstance(decode_variant, Variant)
            else Variant.parse(decode_variant, "decode_variant"))
        if packed.rows != DECODE_ROWS:
            raise ValueError(f"decode_variant: expected a variant of {DECODE_ROWS} rows (one "
                             f"warp, one row fragment), got {packed.name}")
        if variant is not None:
            fixed = variant if isinstance(variant, Variant) else Variant.parse(variant)
        elif warps is not None:
            if check_int(warps, "warps") not in (1, 2, 4, 8):
                raise ValueError(f"warps: expected 1, 2, 4 or 8, got {warps!r}")
            fixed = Variant(warps, 1, KV_TILE)
        for name, var in ((("variant" if variant is not None else "warps"), fixed),
                          ("decode_variant", None if fixed is not None else packed)):
            if var is not None and shared_bytes(head_dim, var) > MAX_SHARED_MEM:
                raise ValueError(f"{name}: {var.name} needs {shared_bytes(head_dim, var)} bytes "
                                 f"of shared memory per block at head_dim {head_dim}, more than "
                                 f"the {MAX_SHARED_MEM // 1024} KiB a block can have (fewer "
                                 f"warps, row fragments or stages, or a smaller K/V tile)")
        qo_indptr, block_tables, seq_lens = shared_arrays(
            dict(qo_indptr=qo_indptr, block_tables=block_tables, seq_lens=seq_lens))
        check_array(qo_indptr, "qo_indptr", ndim=1, dtypes=[np.int32])
        indptr = to_numpy(qo_indptr).astype(np.int64)
        batch = indptr.size - 1
        tables, lens, q_lens = check_prefill_tables(indptr, block_tables, seq_lens, page_size)
        on_gpu = is_cupy_array(block_tables)
        xp = array_module(block_tables)
        group = num_heads // num_kv_heads
        if fixed is not None:
            groups = [(fixed, 1, q_lens > 0)]
        else:
            short = (q_lens > 0) & (q_lens * group <= DECODE_ROWS)
            long = (q_lens > 0) & ~short
            groups = [(variant_for(head_dim, int(q_lens[long].max(initial=0))),
                       1, long), (packed, group, short)]
        lens64 = lens.astype(np.int64)
        base = (f"-DELEM={elem}", f"-DKV_QUANT={fmt.kernel_id if fmt else 0}",
                f"-DCACHE_T={'unsigned char' if fmt else elem}",
                f"-DPER_TOKEN_SCALES={int(fmt is not None and scale_scheme == 'per_token')}")
        pages_used = -(-lens64 // page_size)
        used = tables[np.arange(tables.shape[1])[None, :] < pages_used[:, None]]
        max_page = int(used.max(initial=-1))
        if (max_page + 1) * page_size > 2**31:   # the kernel keeps slots in int32
            raise ValueError(f"block_tables: page {max_page} x page_size {page_size} is past "
                             f"the kernel's int32 cache slots (page x page_size + place, at "
                             f"most 2^31 - 1)")
        parts = []
        for var, pack, chosen in groups:
            if not chosen.any():
                continue
            sub = np.concatenate([[0], np.cumsum(np.where(chosen, q_lens, 0))])
            check_int32_ranges(indptr, lens64, chosen, var, pack)
            work = work_list(sub, lens64, var.rows, causal, pack)
            if num_heads // pack > MAX_GRID_YZ:   # the GPU would refuse run()'s launch
                raise ValueError(f"num_heads: {num_heads} query heads ({pack} per block) need "
                                 f"{num_heads // pack} blocks in grid y, past CUDA's limit of "
                                 f"{MAX_GRID_YZ}")
            kern = load_kernel(var.source, var.source, var.options(head_dim) + base)
            smem = shared_bytes(head_dim, var)
            allow_shared_memory(kern, smem)
            parts.append(Part(var, pack, int(chosen.sum()), xp.asarray(work), kern,
                              (int(work.shape[0]), num_heads // pack), (32 * var.warps,), smem))
        main = parts[0] if parts else None
        self.__dict__.update(
            planned=True, on_gpu=on_gpu, xp=xp, batch=batch, num_heads=num_heads,
            num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size,
            dtype=array_dtype, causal=bool(causal), total_q=int(indptr[-1]),
            kv_format=fmt, scale_scheme=scale_scheme if fmt else None,
            _no_scale=xp.ones(1, dtype=np.float32),
            _out=xp.empty((int(indptr[-1]), num_heads, head_dim),   # bf16 bits on CuPy
                          dtype=np.uint16 if on_gpu and array_dtype != np.float16
                          else array_dtype),
            max_page=max_page, parts=tuple(parts),
            variant=" + ".join(f"{p.variant.name}{f' (GQA packed x{p.pack})' if p.pack > 1 else ''}"
                               f" for {p.sequences} seq" for p in parts) or "nothing to do",
            warps=main.variant.warps if main else 1, rows=main.variant.rows if main else 16,
            kernel_name=(f"{main.variant.source} ({'mma.sync' if main.variant.mma else 'WMMA'}, "
                         f"{main.variant.rows} query rows per block)" if main else "prefill_tc"),
            grid=main.grid if main else (0, num_heads), block=main.block if main else (32,),
            # copies: on the CPU tables and lens are the caller's arrays, which may change
            _indexes=tuple(xp.array(a) for a in (indptr.astype(np.int32), tables, lens)),
            _checked=False)
        return self

    def _check_run(self, q, k_cache, v_cache):
        if not self.planned:
            raise RuntimeError("run: call plan(...) first")
        for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
            check_array(x, name, ndim=3 if name == "q" else 4, dtypes=None)
            if is_cupy_array(x) != self.on_gpu:
                raise TypeError(f"{name}: expected a {'CuPy' if self.on_gpu else 'NumPy'} "
                                f"array (the plan's tables live there), got another kind")
            if name != "q" and self.kv_format is not None:
                check_storage(x, self.kv_format, name, planned=True)
            elif not _accepts(x.dtype, self.dtype, self.on_gpu):
                bits = bf16_bits_hint(x, self.dtype != np.float16)   # (bfloat16 planned)
                raise TypeError(f"{name}: expected dtype {self.dtype} (as planned), got "
                                f"{dtype_label(x.dtype)}{bits}")
        want_q = (self.total_q, self.num_heads, self.head_dim)
        if tuple(q.shape) != want_q:
            raise ValueError(f"q: expected shape {want_q} (total_q, num_heads, head_dim as "
                             f"planned), got {tuple(q.shape)}")
        if v_cache.shape != k_cache.shape:   # the scales are checked against k_cache's pages
            raise ValueError(f"v_cache: expected the shape of k_cache {tuple(k_cache.shape)}, "
                             f"got {tuple(v_cache.shape)}")
        want_cache = (self.page_size, self.num_kv_heads, self.head_dim)
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if tuple(cache.shape[1:]) != want_cache:
                raise ValueError(f"{name}: expected [num_pages, {', '.join(map(str, want_cache))}]"
                                 f" as planned, got {tuple(cache.shape)}")
            if cache.shape[0] <= self.max_page:
                raise ValueError(f"{name}: the plan reads page {self.max_page} but the cache has "
                                 f"{cache.shape[0]} pages")

    def _check_scales(self, k_cache, k_scale, v_scale):
        """The scale arrays of a compressed cache (quant.check_run_scales), or the dummy the
        kernel takes for an uncompressed one."""
        check_run_scales(self.kv_format, self.scale_scheme, k_cache.shape, k_scale, v_scale,
                         self.on_gpu, self._seen_scales)
        if self.kv_format is None:
            return self._no_scale, self._no_scale
        return k_scale, v_scale

    def run(self, q, k_cache, v_cache, out=None, scale=None, k_scale=None, v_scale=None):
        """Attention of the planned batch over this layer's cache; returns `out`.
        `k_scale`, `v_scale`: the scales of a compressed cache (see the module docstring).
        Torch tensors are taken as BatchDecodeWrapper.run takes them (`out` a tensor of q's)."""
        named = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out,
                 "k_scale": k_scale, "v_scale": v_scale}
        if any(is_torch_tensor(x) for x in named.values()):
            check_planned_tensors(self.dtype.name, self.kv_format, q, k_cache, v_cache, out)
            like = q if is_torch_tensor(q) else None
            arrays = dict(zip(named, shared_arrays(named, self.kv_format, elements=True)))
            return result_for(self.run(**arrays, scale=scale), like, out)
        self._check_run(q, k_cache, v_cache)
        check_aligned16(q=q, k_cache=k_cache, v_cache=v_cache)
        k_scale, v_scale = self._check_scales(k_cache, k_scale, v_scale)
        scale = resolve_scale(scale, self.head_dim)
        if out is None:   # the plan's buffer (a uint16 view of it for bfloat16 bits on CuPy)
            out = self._out.view(q.dtype) if q.dtype != self._out.dtype else self._out
            check_plan_buffer(out, q=q, k_cache=k_cache, v_cache=v_cache, k_scale=k_scale,
                              v_scale=v_scale)
        else:
            check_out(out, q=q, k_cache=k_cache, v_cache=v_cache, k_scale=k_scale,
                      v_scale=v_scale)
            out = prepare_out(out, tuple(q.shape), q.dtype, self.xp)
        if not self.parts:
            return out
        if self.kv_format is not None:   # the kernel takes the codes as bytes
            k_cache, v_cache = k_cache.view(np.uint8), v_cache.view(np.uint8)
        indptr, tables, lens = self._indexes
        for part in self.parts:
            args = (q, k_cache, v_cache, k_scale, v_scale, indptr, tables, lens, part.work, out,
                    np.int32(self.num_heads), np.int32(self.num_kv_heads),
                    np.int32(self.page_size), np.int32(tables.shape[1]),
                    np.int32(self.causal), np.int32(part.pack), np.float32(scale * LOG2E))
            part.kernel(part.grid, part.block, args, shared_mem=part.shared_mem)
        if not self._checked:   # the first launch checked the arguments; later ones skip it
            for part in self.parts:
                part.kernel = fast_path(part.kernel, self.on_gpu)
            self._checked = True
        return out
