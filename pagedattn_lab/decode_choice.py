"""Which decode kernel a plan runs when not told, and which head sizes each takes.

"simt" (CUDA cores) or "tensor_core" (decode_plan.py has their launch shapes): the choice is
measured on the H200 (benchmarks/NOTES.md) per cache dtype, group size, head size and cache
format; `BatchDecodeWrapper.plan` calls `choose_kernel` once per plan, and the cache manager
asks `supported_head_dim` when it is built. Names re-exported by decode_plan.
"""
from __future__ import annotations

from .validate import INT32_MAX
from .validate_kinds import is_one_of

KERNELS = ("simt", "tensor_core")
HEAD_DIM_MAX = 256

# ---- the choice ---------------------------------------------------------------------------
# What the GPU runs when not told, fp16/bf16 (measured on the H200, benchmarks/NOTES.md):
# plain multi-head attention (group 1) on the SIMT kernel, which reads it at the copy rate;
# GQA/MQA on tensor cores up to TC_AUTO_MAX_HEAD_DIM (head_dim 256, GQA 32/8, 2026-12-02:
# tensor cores 0.365 ms with 4 warps over 32-token tiles in pairs, SIMT 0.375 ms).
MHA_KERNEL = "simt"
# ...except where the tensor cores measured ahead on multi-head attention (benchmarks/
# mha_choice.py, fp16 and bf16 pages, H200, 2026-12-04, both L2 flushes; NOTES.md "Multi-head
# decode on tensor cores (session 14)"; tensor-core time over SIMT's): at head_dim 96
# (MHA_TC_HEAD_DIMS), on every batch of sequences averaging 512 tokens or more, 0.79-0.97
# (0.97-1.05 below that; the SIMT kernel gives a token 12 threads there); and on a few long
# sequences (up to MHA_TC_MAX_BATCH, at most MHA_TC_MAX_TOKENS in all, 512 or more on average:
# 4 x 2048, 16 x 512, 2 x 16384, 1 x 32768), whose SIMT partitions leave SMs idle, 0.80-0.97 at
# the head sizes in MHA_FEW_LONG_HEAD_DIMS. Left out there: 112 (decode_mma.cu: 0.91-1.10),
# 32 (0.86-1.06: 1.00-1.06 at 4 x 2048) and every head size not measured. Elsewhere SIMT
# leads or the two are within 2%, but for cells the rule leaves on SIMT with the tensor cores
# 2-14% ahead in both flushes (fp16: 8, bf16: 18; most at head_dim 32 or 32 x 1024 and
# 64 x 1024), which no simple rule separates from their neighbours.
MHA_TC_HEAD_DIMS = frozenset({96})
MHA_TC_MIN_MEAN_LEN = 512
MHA_TC_MAX_BATCH = 16
MHA_TC_MAX_TOKENS = 32_768
MHA_FEW_LONG_HEAD_DIMS = frozenset({64, 80, 96, 128, 192, 256})
TC_AUTO_MAX_HEAD_DIM = 256
# Compressed (int8/fp8) pages with up to this many query heads per KV head run on SIMT, per
# scale scheme (D64 GQA 32/8, H200, group 4, benchmarks/NOTES.md "Compressed GQA on tensor
# cores (session 4)", round s4c): the tensor cores lead for both schemes since the codes are
# converted on whole registers (rows, balanced ranges: static fp8 0.098 ms / int8 0.100,
# per-token 0.110 / 0.116) against SIMT (0.115 / 0.120; 0.148 / 0.152). Groups 2 and 3 were
# not measured on the tensor cores and stay on SIMT.
COMPRESSED_SIMT_MAX_GROUP = {"static": 2, "per_token": 2}


def supported_head_dim(kernel: str, dtype: str, head_dim: int) -> str | None:
    """None when `kernel` takes `head_dim` for `dtype` caches, else the reason it does not."""
    if kernel == "tensor_core":
        if dtype == "float32":
            return ("the tensor-core kernel takes float16 or bfloat16 queries and caches (WMMA "
                    "has no fp32 inputs); float32 runs on the 'simt' kernel")
        if head_dim % 16 or not 16 <= head_dim <= HEAD_DIM_MAX:
            return ("the tensor-core kernel takes head_dim a multiple of 16 from 16 to "
                    f"{HEAD_DIM_MAX}")
        return None
    vec = 16 // (4 if dtype == "float32" else 2)
    if head_dim % vec or not vec <= head_dim <= HEAD_DIM_MAX:
        return (f"the simt kernel takes head_dim a multiple of {vec} (16 bytes of {dtype}) up to "
                f"{HEAD_DIM_MAX}")
    return None


def mha_kernel(head_dim: int, batch: int | None, tokens: int | None) -> str:
    """The kernel of multi-head attention on fp16/bf16 pages on the GPU for `batch` sequences of
    `tokens` in all (None: not known, MHA_KERNEL). Only measured head sizes leave SIMT, all
    of them multiples of 16 (the tensor-core kernels' rule)."""
    if batch is None or tokens is None or batch < 1 or tokens < MHA_TC_MIN_MEAN_LEN * batch:
        return MHA_KERNEL
    few_long = (batch <= MHA_TC_MAX_BATCH and tokens <= MHA_TC_MAX_TOKENS
                and head_dim in MHA_FEW_LONG_HEAD_DIMS)
    return "tensor_core" if head_dim in MHA_TC_HEAD_DIMS or few_long else MHA_KERNEL


def choose_kernel(requested: str, dtype: str, group: int, head_dim: int, on_gpu: bool,
                  scale_scheme: str | None = None, batch: int | None = None,
                  tokens: int | None = None) -> str:
    """The kernel a plan runs. `requested` is "auto", "simt" or "tensor_core".

    auto: float32 -> simt (the only one); on the GPU, GQA/MQA with head_dim up to
    TC_AUTO_MAX_HEAD_DIM -> tensor_core (but simt for compressed pages, scale_scheme "static"
    or "per_token", up to COMPRESSED_SIMT_MAX_GROUP[scale_scheme] heads per KV head), MHA ->
    `mha_kernel` of the plan's `batch` and `tokens` on fp16/bf16 pages (compressed MHA:
    MHA_KERNEL), the rest simt.
    On the CPU
    executor auto picks simt: there WMMA is emulated lane by lane, which is for learning and
    testing, not speed (ask for "tensor_core" to run it there).
    """
    if not is_one_of(requested, ("auto", *KERNELS)):
        raise ValueError(f"kernel: expected 'auto', 'simt' or 'tensor_core', got {requested!r}")
    if requested == "auto":
        if dtype == "float32" or not on_gpu:
            requested = "simt"
        elif group == 1:
            measured = dtype in ("float16", "bfloat16") and scale_scheme is None
            requested = mha_kernel(head_dim, batch, tokens) if measured else MHA_KERNEL
        elif scale_scheme is not None and group <= COMPRESSED_SIMT_MAX_GROUP[scale_scheme]:
            requested = "simt"
        else:
            requested = "tensor_core" if head_dim <= TC_AUTO_MAX_HEAD_DIM else "simt"
            if supported_head_dim(requested, dtype, head_dim):
                requested = "simt"
    reason = supported_head_dim(requested, dtype, head_dim)
    if reason and requested == "tensor_core" and dtype == "float32":   # no head_dim would do
        raise ValueError(f"kernel: 'tensor_core' with dtype float32: {reason}")
    if reason:
        raise ValueError(f"head_dim: {head_dim} with {dtype} caches: {reason}")
    return requested


def check_codes_head_dim(kv_format, head_dim: int) -> None:
    """Compressed pages (kv_format: a quant.KVFormat; None: 16-bit pages, no limit here): the
    simt kernel reads 16 codes per 16-byte load, so head_dim a multiple of 16 (the
    tensor-core kernel's limit too)."""
    if kv_format is not None and head_dim % 16:
        raise ValueError(f"head_dim: {head_dim} with {kv_format.name} pages: the simt kernel "
                         f"reads 16 codes at a time, so head_dim must be a multiple of 16")


def check_simt_page(page_size, num_kv_heads, head_dim, dtype, page_size_arg):
    """decode.cu keeps offsets within a page in 32 bits: past 2^31 - 1 elements they wrap
    and it reads outside the cache (the tensor-core kernels' offsets are 64-bit)."""
    page_elems = page_size * num_kv_heads * head_dim
    if page_elems > INT32_MAX:
        other = "" if supported_head_dim("tensor_core", dtype, head_dim) else \
            ", or kernel='tensor_core' (64-bit offsets)"
        raise ValueError(f"{page_size_arg}: a page of {page_size} tokens x {num_kv_heads} "
                         f"KV heads x head_dim {head_dim} holds {page_elems} elements, "
                         f"past the simt kernel's 32-bit offsets within a page (2^31 - 1); "
                         f"use smaller pages{other}")
