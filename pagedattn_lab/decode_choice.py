"""Which decode kernel a plan runs when not told, and which head sizes each takes.

"simt" (CUDA cores) or "tensor_core" (decode_plan.py has their launch shapes): the choice is
measured on the H200 (benchmarks/NOTES.md) per cache dtype, group size, head size and cache
format; `BatchDecodeWrapper.plan` calls `choose_kernel` once per plan, and the cache manager
asks `supported_head_dim` when it is built. Names re-exported by decode_plan.
"""
from __future__ import annotations

from .validate import is_one_of

KERNELS = ("simt", "tensor_core")
HEAD_DIM_MAX = 256

# ---- the choice ---------------------------------------------------------------------------
# What the GPU runs when not told, fp16/bf16 (measured on the H200, benchmarks/NOTES.md):
# plain multi-head attention (group 1) on the SIMT kernel, which reads it at the copy rate;
# GQA/MQA on tensor cores up to TC_AUTO_MAX_HEAD_DIM (head_dim 256, GQA 32/8, 2026-12-02:
# tensor cores 0.365 ms with 4 warps over 32-token tiles in pairs, SIMT 0.375 ms).
MHA_KERNEL = "simt"
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
            return ("the tensor-core kernel takes float16 or bfloat16 caches (WMMA has no fp32 "
                    "inputs); float32 runs on the 'simt' kernel")
        if head_dim % 16 or not 16 <= head_dim <= HEAD_DIM_MAX:
            return ("the tensor-core kernel takes head_dim a multiple of 16 from 16 to "
                    f"{HEAD_DIM_MAX}")
        return None
    vec = 16 // (4 if dtype == "float32" else 2)
    if head_dim % vec or not vec <= head_dim <= HEAD_DIM_MAX:
        return (f"the simt kernel takes head_dim a multiple of {vec} (16 bytes of {dtype}) up to "
                f"{HEAD_DIM_MAX}")
    return None


def choose_kernel(requested: str, dtype: str, group: int, head_dim: int, on_gpu: bool,
                  scale_scheme: str | None = None) -> str:
    """The kernel a plan runs. `requested` is "auto", "simt" or "tensor_core".

    auto: float32 -> simt (the only one); on the GPU, GQA/MQA with head_dim up to
    TC_AUTO_MAX_HEAD_DIM -> tensor_core (but simt for compressed pages, scale_scheme "static"
    or "per_token", up to COMPRESSED_SIMT_MAX_GROUP[scale_scheme] heads per KV head), MHA ->
    MHA_KERNEL, the rest simt. On the CPU
    executor auto picks simt: there WMMA is emulated lane by lane, which is for learning and
    testing, not speed (ask for "tensor_core" to run it there).
    """
    if not is_one_of(requested, ("auto", *KERNELS)):
        raise ValueError(f"kernel: expected 'auto', 'simt' or 'tensor_core', got {requested!r}")
    if requested == "auto":
        if dtype == "float32" or not on_gpu:
            requested = "simt"
        elif group == 1:
            requested = MHA_KERNEL
        elif scale_scheme is not None and group <= COMPRESSED_SIMT_MAX_GROUP[scale_scheme]:
            requested = "simt"
        else:
            requested = "tensor_core" if head_dim <= TC_AUTO_MAX_HEAD_DIM else "simt"
            if supported_head_dim(requested, dtype, head_dim):
                requested = "simt"
    reason = supported_head_dim(requested, dtype, head_dim)
    if reason:
        raise ValueError(f"head_dim: {head_dim} with {dtype} caches: {reason}")
    return requested
