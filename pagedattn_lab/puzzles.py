"""The CUDA puzzles of workbook 03, GPU-Puzzles style: a NumPy spec, a kernel signature, a
launch, and a budget of memory accesses per thread.

The spec says what the kernel must compute; the budget says how much memory traffic one
thread may cause doing it (as GPU-Puzzles does: a solution that is right but reads global
memory more often than needed is not done yet). `show(name)` prints a puzzle the way the
workbook presents it; `pagedattn_lab.check.puzzle_<name>` checks a solution.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def map_spec(a):
    """out[i] = a[i] + 10 for every i."""
    return a + 10


def guard_spec(a, b):
    """out[i] = a[i] + b[i] for every i < n (the grid has more threads than elements)."""
    return a + b


def grid_2d_spec(x, bias):
    """x is [rows, cols] (row-major); out[r, c] = x[r, c] + bias[c]."""
    return x + bias[None, :]


def shared_spec(q, k):
    """q is [head_dim], k is [n, head_dim]; scores[t] = q . k[t] for every key t."""
    return k @ q


def warp_sum_spec(a):
    """out[w] = a[32 w] + ... + a[32 w + 31]: one sum per warp, elements past n count 0."""
    padded = np.zeros(-(-len(a) // 32) * 32)
    padded[:len(a)] = a
    return padded.reshape(-1, 32).sum(axis=1)


def block_sum_spec(a, threads=256):
    """out[b] = sum of a[b * threads ... (b + 1) * threads - 1]: one sum per block of 256
    threads, elements past n count 0."""
    padded = np.zeros(-(-len(a) // threads) * threads)
    padded[:len(a)] = a
    return padded.reshape(-1, threads).sum(axis=1)


@dataclass(frozen=True)
class Puzzle:
    name: str
    kernel: str                    # the extern "C" kernel's name
    title: str
    spec: Callable
    signature: str
    launch: str
    budget: dict = field(default_factory=dict)   # most accesses one thread may make


PUZZLES = {p.name: p for p in (
    Puzzle("map", "map_add_10", "Map", map_spec,
           "map_add_10(const float* a, float* out)",
           "grid (1,), block (n,): exactly one thread per element",
           {"global_reads": 1, "global_writes": 1}),
    Puzzle("guard", "zip_add", "Guard", guard_spec,
           "zip_add(const float* a, const float* b, float* out, int n)",
           "grid (ceil(n / 32),), block (32,): more threads than elements",
           {"global_reads": 2, "global_writes": 1}),
    Puzzle("grid_2d", "add_bias", "2-D grid", grid_2d_spec,
           "add_bias(const float* x, const float* bias, float* out, int rows, int cols)",
           "grid (ceil(cols / 16), ceil(rows / 8)), block (16, 8): x along the columns, "
           "y along the rows", {"global_reads": 2, "global_writes": 1}),
    Puzzle("shared", "dot_scores", "Shared memory and a barrier", shared_spec,
           "dot_scores(const float* q, const float* k, float* scores, int n, int head_dim)",
           "grid (ceil(n / 32),), block (32,), shared_mem = head_dim * 4 bytes",
           {"global_reads": "head_dim + ceil(head_dim / 32)", "global_writes": 1}),
    Puzzle("warp_sum", "warp_sum", "Warp-shuffle reduction", warp_sum_spec,
           "warp_sum(const float* a, float* out, int n)",
           "grid (ceil(n / 128),), block (128,): 4 warps per block",
           {"global_reads": 1, "global_writes": 1, "shared_writes": 0}),
    Puzzle("block_sum", "block_sum", "Block sum", block_sum_spec,
           "block_sum(const float* a, float* out, int n)",
           "grid (ceil(n / 256),), block (256,): 8 warps per block",
           {"global_reads": 1, "global_writes": 1, "shared_writes": 1}),
)}


def show(name: str) -> None:
    """Print a puzzle: its spec (the NumPy function), kernel signature, launch and budget."""
    try:
        p = PUZZLES[name]
    except KeyError:
        raise KeyError(f"name: no puzzle {name!r}; puzzles: {', '.join(PUZZLES)}") from None
    print(f"Puzzle {p.title!r}\n")
    print(inspect.getsource(p.spec).strip())
    print(f'\nkernel:  extern "C" __global__ void {p.signature}')
    print(f"launch:  {p.launch}")
    budget = ", ".join(f"{k.replace('_', ' ')} <= {v}" for k, v in p.budget.items())
    print(f"budget:  per thread, {budget}; every output element written exactly once")
