"""Checks for the CUDA C tasks: the gather kernel (02), the naive (03) and tiled (04) prefill.

Each check lints the source (NVRTC has no INFINITY and no <math.h>), compiles it once, and
runs seeded paged problems (see cases.py) on the GPU or the CPU executor. Outputs start as
NaN: a kernel that writes nothing is "not attempted", an element nobody wrote stays NaN.
A wrong result is compared with the known-wrong variants of the reference (variants.py)
to name the mistake; a fault, a deadlock or a timeout from the executor names the thread
and block (faults.py).
"""
from __future__ import annotations

import re

import numpy as np

from ..backend import resolve_device
from .cases import paged_problem
from .compare import describe_difference, diagnose
from .kernel_runner import Kernel, poisoned, where
from .report import Case, Mismatch, NotAttempted, run_cases
from .variants import attention_mistakes, gather_variant

GATHER_THREADS = 32
NAIVE_THREADS = 16
TILE_Q = 16
NOTHING_WRITTEN = ("the kernel wrote nothing to its output (it is still the NaN the check "
                   "filled it with): write the kernel body where the // TODO is")


def backend(device: str = "auto") -> None:
    """Say where the CUDA C checks of this workbook run."""
    from ..backend import gpu_status  # noqa: PLC0415
    text = f"CUDA C checks run on {where(device)}."
    if resolve_device(device) == "cpu":
        text += f" ({gpu_status()})"
    else:
        text += (" A GPU forgives some mistakes by luck (races, a return before a barrier, "
                 "small out-of-bounds reads): pass device='cpu' to a check to run it on the "
                 "strict CPU executor.")
    print(text)


def _nothing_written(source: str, tiled: bool = False) -> None:
    """Every output is still NaN: the stub (not attempted), or a kernel that only made NaN."""
    if "TODO" in source:
        raise NotAttempted(NOTHING_WRITTEN)
    hint = "every thread must store its result; check the output index and the guards."
    if tiled:
        hint = ("if the kernel does write, it wrote NaN everywhere: reading the shared tile "
                "before every thread has stored its part (the executor fills shared memory "
                "with NaN)? A __syncthreads() must separate the load from the compute.")
    raise Mismatch("every output is NaN: nothing was written, or only NaN", hint)


class _Compiled:
    """Compile on first use (inside the first case, so errors are reported per check)."""

    def __init__(self, source, name, device):
        self.source, self.name, self.device, self._kernel = source, name, device, None

    def get(self) -> Kernel:
        if self._kernel is None:
            self._kernel = Kernel(self.source, self.name, self.device)
        return self._kernel


def _unwritten_pattern_hint(diff, *, threads: int, token_axis: str = "token") -> str | None:
    """Hints read off which entries are still NaN."""
    if not diff.unwritten.any():
        return None
    nan_tokens, n_tokens = diff.affected(token_axis)
    if nan_tokens and min(nan_tokens) >= threads and n_tokens > threads:
        return (f"tokens from {threads} on were never written: a block has {threads} threads, "
                f"so the token index is blockIdx.x * blockDim.x + threadIdx.x.")
    if "dim" in diff.axes:
        dims, n_dims = diff.affected("dim")
        if dims and min(dims) >= threads // 2 and len(dims) < n_dims:
            return ("only the first elements of each row were written: loop over the row with "
                    "a stride of blockDim.x (for (i = threadIdx.x; i < n; i += blockDim.x)).")
    return None


def _padding_hint(got, expected, valid) -> str | None:
    """Right on real tokens, wrong on the rows past seq_lens: they must be zeros."""
    real = np.broadcast_to(valid, got.shape)
    ok_real = np.allclose(np.where(real, got, 0), np.where(real, expected, 0), atol=2e-4,
                          rtol=2e-4)
    if not ok_real or (~real).sum() == 0:
        return None
    pad = got[~real]
    if np.isnan(pad).any():
        return ("rows at or past seq_lens[b] must be written as zeros (they are part of the "
                "output; a thread there must not read the cache, but it must store 0).")
    if np.any(pad != 0):
        return ("rows at or past seq_lens[b] must be zeros, but yours hold data: a thread "
                "past the sequence's end read the cache (through block-table padding, -1, or "
                "another sequence's entries). Check t >= seq_lens[b] first and store zeros.")
    return None


def _row_stride_hint(diff, head_dim: int, threads: int) -> str | None:
    """Gather: only the first `threads` elements of each token row were written."""
    if not diff.unwritten.any():
        return None
    idx = np.argwhere(diff.unwritten)
    row_pos = idx[:, 2] * head_dim + idx[:, 3]
    if row_pos.min() >= threads:
        return (f"only the first {threads} values of each token's row were copied (one per "
                f"thread): a row holds num_kv_heads * head_dim values, so loop with a stride: "
                f"for (int i = threadIdx.x; i < row_len; i += blockDim.x).")
    return None


# -- task: the gather kernel (02) ---------------------------------------------------------

def _gather_case(comp: _Compiled, seed: int, seq_lens, page_size, num_kv_heads, head_dim,
                 max_len) -> None:
    prob = paged_problem(seed, mode="decode", seq_lens=seq_lens, num_heads=num_kv_heads,
                         num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size)
    kern = comp.get()
    batch = len(seq_lens)
    shape = (batch, max_len, num_kv_heads, head_dim)
    args = (prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens, poisoned(shape),
            poisoned(shape), np.int32(max_len), np.int32(prob.block_tables.shape[1]),
            np.int32(page_size), np.int32(num_kv_heads), np.int32(head_dim))
    k_out, v_out = kern.launch((max_len, batch), (GATHER_THREADS,), args, outputs=(4, 5))
    if np.isnan(k_out).all() and np.isnan(v_out).all():
        _nothing_written(comp.source)
    axes = ("sequence", "token", "kv_head", "dim")
    for name, got, cache in (("k_out", k_out, prob.k_cache), ("v_out", v_out, prob.v_cache)):
        expected = gather_variant(cache, prob.block_tables, prob.seq_lens, max_len)
        diff = describe_difference(got, expected, axes, atol=0, rtol=0)
        if diff is None:
            continue
        valid = (np.arange(max_len)[None, :] < prob.seq_lens[:, None])[:, :, None, None]
        args_v = (cache, prob.block_tables, prob.seq_lens, max_len)
        hint = diagnose(got, expected, [
            ("the head stride is missing num_kv_heads (the guide's bug): element (slot, "
             "kv_head, d) is at (slot * num_kv_heads + kv_head) * head_dim + d.",
             lambda: gather_variant(*args_v, head_stride_bug=True)),
            ("every sequence reads row 0 of block_tables: sequence b's row starts at "
             "block_tables + b * max_pages.", lambda: gather_variant(*args_v, shared_table=True)),
            ("the page offset is off by one: token t sits at offset t % page_size.",
             lambda: gather_variant(*args_v, offset_shift=1)),
            ("the cache is not contiguous: translate token t through block_tables, do not "
             "read slot t.", lambda: gather_variant(*args_v, identity_pages=True)),
        ], atol=0, rtol=0) or _row_stride_hint(diff, head_dim, GATHER_THREADS) \
            or _padding_hint(got, expected, valid) \
            or ("slot = block_tables[b * max_pages + t / page_size] * page_size + t % page_size;"
                " copy its num_kv_heads * head_dim values to row (b * max_len + t).")
        raise Mismatch(f"{name}: " + diff.message(), hint)


def gather_kernel(source: str, device: str = "auto") -> "CheckResult":  # noqa: F821
    """Check the batched `gather_kv` kernel: grid (max_len, batch), block (32,)."""
    comp = _Compiled(source, "gather_kv", device)
    cases = [
        Case("one sequence", {"seq_lens": [11], "page_size": 4, "num_kv_heads": 2,
                              "head_dim": 8, "max_len": 11},
             lambda: _gather_case(comp, 40, [11], 4, 2, 8, 11)),
        Case("three sequences, rows longer than the block",
             {"seq_lens": [23, 14, 5], "page_size": 4, "num_kv_heads": 3, "head_dim": 16,
              "max_len": 24}, lambda: _gather_case(comp, 41, [23, 14, 5], 4, 3, 16, 24)),
        Case("full pages", {"seq_lens": [17, 16], "page_size": 8, "num_kv_heads": 2,
                            "head_dim": 32, "max_len": 20},
             lambda: _gather_case(comp, 42, [17, 16], 8, 2, 32, 20)),
    ]
    return run_cases("gather_kernel", "gather_kv kernel: a batch's K and V, made contiguous",
                     cases, lint=comp.get)


# -- tasks: the naive and the tiled prefill kernels (03, 04) -------------------------------

def _prefill_case(comp: _Compiled, seed: int, *, threads: int, tiled: bool, **sizes) -> None:
    prob = paged_problem(seed, mode="prefill", **sizes)
    kern = comp.get()
    s = prob.shape
    grid = (-(-s["max_len"] // threads), s["num_heads"], s["batch"])
    shared = 2 * s["page_size"] * s["head_dim"] * 4 if tiled else 0
    args = (prob.q, prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens,
            poisoned(prob.q.shape), np.int32(s["max_len"]), np.int32(s["num_heads"]),
            np.int32(s["num_kv_heads"]), np.int32(s["head_dim"]), np.int32(s["page_size"]),
            np.int32(s["max_pages"]), np.float32(prob.scale))
    (got,) = kern.launch(grid, (threads,), args, shared_mem=shared, outputs=(5,))
    if np.isnan(got).all():
        _nothing_written(comp.source, tiled)
    expected = prob.expected
    diff = describe_difference(got, expected, ("sequence", "token", "head", "dim"))
    if diff is None:
        return
    hint = diagnose(got, expected, attention_mistakes(prob, mode="prefill")) \
        or _unwritten_pattern_hint(diff, threads=threads) \
        or _padding_hint(got, expected, prob.valid_rows()) \
        or _nan_hint(got, prob.valid_rows()) \
        or (_tiled_hint(comp.source) if tiled else None) \
        or ("follow the prompt's recipe: q row ((b * max_len + t) * num_heads + h) * head_dim, "
            "keys 0..t through block_tables row b, kv_head = h / (num_heads / num_kv_heads), "
            "online softmax, out / sum.")
    raise Mismatch(diff.message(), hint)


def _nan_hint(got, valid) -> str | None:
    if np.isnan(got[np.broadcast_to(valid, got.shape)]).any():
        return ("NaN in rows that hold attention: a 0/0. Either expf underflowed (start the "
                "running max at -inf, not 0, and always exponentiate score - running_max), or "
                "the kernel read memory nobody wrote (the executor fills shared memory with "
                "NaN before each block).")
    return None


def _tiled_hint(source: str) -> str | None:
    code = re.sub(r"//[^\n]*", "", source)
    barriers = len(re.findall(r"__syncthreads\s*\(", code))
    if barriers < 2:
        return ("a race on the shared tile: with one __syncthreads() per page, a fast thread "
                "overwrites the tile with the next page while others still read it. Put a "
                "barrier after the load AND one after the compute loop.")
    return ("if every page is loaded right, look for a race: is anything in shared memory "
            "written by one thread and read by another without a __syncthreads() between "
            "(the guide stages every thread's query in ONE shared buffer: keep your query in "
            "registers)?")


def _prefill_cases(comp: _Compiled, threads: int, tiled: bool) -> list[Case]:
    specs = [
        ("one sequence", 50, dict(seq_lens=[11], num_heads=2, num_kv_heads=2, head_dim=8,
                                  page_size=4)),
        ("three sequences, GQA, padded rows", 51,
         dict(seq_lens=[37, 21, 9], num_heads=4, num_kv_heads=2, head_dim=16, page_size=4,
              max_len=40)),
        ("MQA, page_size 8", 52, dict(seq_lens=[30, 19], num_heads=4, num_kv_heads=1,
                                      head_dim=8, page_size=8, max_len=32)),
        ("head_dim 32, page_size 16", 53,
         dict(seq_lens=[40, 33, 17], num_heads=2, num_kv_heads=2, head_dim=32, page_size=16)),
        ("very negative scores", 54, dict(seq_lens=[20, 7], num_heads=2, num_kv_heads=2,
                                          head_dim=8, page_size=4, negative_scores=True)),
    ]
    cases = []
    for name, seed, sizes in specs:
        params = {k: v for k, v in sizes.items()}
        cases.append(Case(name, params, lambda seed=seed, sizes=sizes: _prefill_case(
            comp, seed, threads=threads, tiled=tiled, **sizes)))
    return cases


def naive_kernel(source: str, device: str = "auto") -> "CheckResult":  # noqa: F821
    """Check `prefill_naive`: grid (ceil(max_len / 16), num_heads, batch), block (16,)."""
    comp = _Compiled(source, "prefill_naive", device)
    return run_cases("naive_kernel", "prefill_naive kernel: one thread per query token",
                     _prefill_cases(comp, NAIVE_THREADS, tiled=False),
                     lint=comp.get)


def tiled_kernel(source: str, device: str = "auto") -> "CheckResult":  # noqa: F821
    """Check `prefill_tiled`: grid (ceil(max_len / 16), num_heads, batch), block (16,),
    shared_mem = 2 * page_size * head_dim * 4 bytes."""
    comp = _Compiled(source, "prefill_tiled", device)
    return run_cases("tiled_kernel", "prefill_tiled kernel: K/V pages staged in shared memory",
                     _prefill_cases(comp, TILE_Q, tiled=True),
                     lint=comp.get)
