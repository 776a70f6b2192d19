"""FlashInfer's batch decode as a baseline, in the same process, on the same pages.

FlashInfer (0.6.x) takes the KV cache in the course's layout ("NHD": [num_pages, page_size,
num_kv_heads, head_dim], K and V as a tuple) and the page table in CSR form, which
`pagedattn_lab.to_csr` makes from the block tables. Two variants, as FlashInfer offers them:
`BatchDecodeWithPagedKVCacheWrapper(use_tensor_cores=False)` (CUDA cores; it refuses GQA
groups other than 1, 2, 3, 4, 8) and `use_tensor_cores=True` (its prefill kernel, the group's
heads as the rows of a tile). Its kernels are compiled on first use (JIT, about a minute):
`prebuild` starts those compilations in parallel threads before the timed work.

A JIT cache carried from an earlier run: with PAGEDATTN_FLASHINFER_PREBUILT=1, a module whose
shared library is already in FlashInfer's cache is loaded without asking ninja (which would
rebuild it when the object files were not carried along).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

VARIANTS = {"flashinfer-cuda-cores": False, "flashinfer-tensor-cores": True}
WORKSPACE_BYTES = 128 << 20
# Head sizes whose decode FlashInfer 0.6's JIT builds cannot run on the course's rows (H200,
# benchmarks/NOTES.md "Tensor-core kernel v1, call 2", again 2026-12-04): the CUDA-core decode
# stops in VariableLengthMergeStates, and the tensor-core one makes an illegal address that
# takes the process's CUDA context, and every row after it, with it. Not run there.
BROKEN_HEAD_DIMS = {"0.6.": (80, 96)}


def skip_reason(flashinfer, head_dim: int) -> str | None:
    """Why FlashInfer's decode is not run at head_dim (None: it is run)."""
    version = getattr(flashinfer, "__version__", "")
    for prefix, dims in BROKEN_HEAD_DIMS.items():
        if version.startswith(prefix) and head_dim in dims:
            return (f"not run: FlashInfer {version}'s head_dim {head_dim} decode fails and "
                    f"takes the CUDA context with it (benchmarks/NOTES.md)")
    return None


def import_flashinfer():
    import flashinfer  # noqa: PLC0415 - optional, GPU only
    if os.environ.get("PAGEDATTN_FLASHINFER_PREBUILT") == "1":
        from flashinfer.jit import core  # noqa: PLC0415
        build = core.JitSpec.build

        def build_unless_present(self, verbose, need_lock=True):
            if not self.jit_library_path.exists():
                build(self, verbose, need_lock)
        core.JitSpec.build = build_unless_present
    return flashinfer


def _csr(torch, inp, w):
    from ..csr import to_csr  # noqa: PLC0415
    indptr, indices, last = to_csr(inp["block_tables"], inp["seq_lens"], w.page_size)
    return tuple(torch.from_dlpack(a) for a in (indptr, indices, last))


def decode_runner(flashinfer, torch, inp, w, scale, use_tensor_cores: bool):
    """Plan FlashInfer's decode for workload `w` on inputs `inp` (CuPy); return a function
    that runs it once and returns the output (a torch tensor)."""
    workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda")
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
        workspace, "NHD", use_tensor_cores=use_tensor_cores)
    indptr, indices, last = _csr(torch, inp, w)
    wrapper.plan(indptr, indices, last, w.num_heads, w.num_kv_heads, w.head_dim, w.page_size,
                 pos_encoding_mode="NONE", q_data_type=torch.float16,
                 kv_data_type=torch.float16, sm_scale=scale)
    q = torch.from_dlpack(inp["q"])
    kv = (torch.from_dlpack(inp["k_cache"]), torch.from_dlpack(inp["v_cache"]))
    out = torch.empty_like(q)

    def run():
        return wrapper.run(q, kv, out=out)
    run.wrapper = wrapper   # keeps the workspace alive with the function
    return run


def prebuild(flashinfer, torch, workloads) -> list[str]:
    """Compile the kernels the workloads will use, in parallel; returns the failures (the
    timed rows then retry and record them)."""
    import cupy as cp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from .workloads import DecodeWorkload  # noqa: PLC0415
    # One module per head size and variant (the group size is dispatched at run time).
    configs = {(w.head_dim, tc) for w in workloads for tc in VARIANTS.values()
               if skip_reason(flashinfer, w.head_dim) is None}

    def build(config):
        head_dim, tc = config
        tiny = DecodeWorkload("tiny", (17,), num_heads=1, num_kv_heads=1, head_dim=head_dim)
        inp = {"q": cp.zeros((1, 1, head_dim), np.float16),
               "k_cache": cp.zeros((2, 16, 1, head_dim), np.float16),
               "v_cache": cp.zeros((2, 16, 1, head_dim), np.float16),
               "block_tables": cp.asarray(np.array([[0, 1]], np.int32)),
               "seq_lens": cp.asarray(np.array([17], np.int32))}
        try:
            decode_runner(flashinfer, torch, inp, tiny, 0.1, tc)
            return None
        except Exception as exc:   # reported; the timed row will say what failed
            return f"{config}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [r for r in pool.map(build, sorted(configs)) if r]
