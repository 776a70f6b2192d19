"""Every check fails the classic wrong implementations, with a hint that names the mistake.

Python tasks: wrong versions written here the way a learner gets them wrong. CUDA C tasks:
the solution notebook's kernel source with one mistake edited in (the edit must apply, so
these tests follow the solutions). Each case asserts that the check fails (not "not
attempted") and that the printed hint contains the phrase that points at the mistake.
"""
import contextlib
import io
import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import check

REPO = Path(__file__).resolve().parents[1]


def run_check(task, impl, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = getattr(check, task)(impl, **kwargs)
    return result, out.getvalue()


def assert_caught(task, impl, phrase, **kwargs):
    result, printed = run_check(task, impl, **kwargs)
    assert result.status == "failed", printed
    assert phrase.lower() in printed.lower(), printed
    assert "FAIL" in printed and "hint:" in printed


def solution_source(notebook: str, variable: str, folder: str = "solutions") -> str:
    """The kernel source string a workbook cell defines (read as plain JSON)."""
    cells = json.loads((REPO / folder / notebook).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and source.startswith(f"{variable} = "):
            scope: dict = {}
            exec(source, scope)  # noqa: S102 - our own notebook
            return scope[variable]
    raise LookupError(variable)


def mutate(source: str, edits) -> str:
    for old, new in edits:
        assert old in source, f"the solution no longer contains {old!r}"
        source = source.replace(old, new)
    return source


# -- lesson 00 / 06: counting --------------------------------------------------------------

PY_MISTAKES = [
    ("pages_needed", lambda n, p: n // p, "round up"),
    ("pages_needed", lambda n, p: n // p + 1, "one page too many"),
    ("pages_needed", lambda n, p: n, "one page per token"),
    ("reserved_waste", lambda L, m: 1 - L.sum() / (len(L) * L.max()), "reserves max_len"),
    ("reserved_waste", lambda L, m: len(L) * m - L.sum(), "fraction"),
    ("reserved_waste", lambda L, m: L.sum() / (len(L) * m), "used fraction"),
    ("paged_waste", lambda L, p: 1 - L.sum() / max((L // p).sum() * p, 1),
     "round the page count up"),
    ("paged_waste", lambda L, p: 1 - L.sum() / ((L // p + 1).sum() * p), "one too many"),
    ("paged_waste", lambda L, p: ((-(-L // p)).sum() * p - L.sum()) / L.sum(),
     "divide by the allocated"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * kv * d * np.dtype(dt).itemsize,
     "both K and V"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * 2 * h * d * np.dtype(dt).itemsize,
     "not num_heads"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * 2 * kv * d * 4, "itemsize"),
    ("decode_floor_ms", lambda b, bw: b / (bw * 1e9), "milliseconds"),
    ("decode_floor_ms", lambda b, bw: b / (bw * 2**30) * 1e3, "not 2**30"),
    ("decode_floor_ms", lambda b, bw: bw * 1e9 / b * 1e3, "bytes / bandwidth"),
]


def _waste(L, p):
    L = np.asarray(L)
    return 1 - L.sum() / ((-(-L // p)).sum() * p)


def choose_smallest(L, cands, w):
    ok = [p for p in cands if _waste(L, p) <= w]
    return min(ok) if ok else min(cands)


def choose_ignoring_limit(L, cands, w):
    return max(cands)


def choose_with_floor(L, cands, w):
    L = np.asarray(L)
    ok = [p for p in cands if 1 - L.sum() / max((L // p).sum() * p, 1) <= w]
    return max(ok) if ok else min(cands)


PY_MISTAKES += [
    ("choose_page_size", choose_smallest, "pick the largest"),
    ("choose_page_size", choose_ignoring_limit, "wastes more than max_waste"),
    ("choose_page_size", choose_with_floor, "wastes more than max_waste"),
]


# -- lesson 01: allocator, sharing, block tables --------------------------------------------

class GoodAllocator:
    def __init__(self, num_pages):
        self.num_pages = num_pages
        self.free_list = deque(range(num_pages))
        self.refs = [0] * num_pages

    @property
    def num_free(self):
        return len(self.free_list)

    def ref_count(self, page):
        return self.refs[page]

    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        pages = [self.free_list.popleft() for _ in range(n)]
        for p in pages:
            self.refs[p] = 1
        return pages

    def free(self, pages):
        for p in pages:
            if not 0 <= p < self.num_pages or self.refs[p] == 0:
                raise ValueError(f"page {p}")
        for p in pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free_list.append(p)

    def fork(self, pages):
        for p in pages:
            if not 0 <= p < self.num_pages or self.refs[p] == 0:
                raise ValueError(f"page {p}")
        for p in pages:
            self.refs[p] += 1
        return list(pages)


class CounterAllocator(GoodAllocator):
    """The guide's `next_page++`: pages are counted out and never come back."""

    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.next_page = 0

    @property
    def num_free(self):
        return self.num_pages - self.next_page

    def allocate(self, n):
        if self.next_page + n > self.num_pages:
            raise pl.OutOfPagesError(n, self.num_free, self.num_pages)
        pages = list(range(self.next_page, self.next_page + n))
        self.next_page += n
        for p in pages:
            self.refs[p] = 1
        return pages

    def free(self, pages):
        for p in pages:
            self.refs[p] -= 1


class PartialAllocator(GoodAllocator):
    def allocate(self, n):
        pages = []
        for _ in range(n):
            if not self.free_list:
                raise pl.OutOfPagesError(n, 0, self.num_pages)
            pages.append(self.free_list.popleft())
            self.refs[pages[-1]] = 1
        return pages


class TrustingAllocator(GoodAllocator):
    def free(self, pages):
        for p in pages:
            self.refs[p] = max(self.refs[p] - 1, 0)
            self.free_list.append(p)


class OneBasedAllocator(GoodAllocator):
    def allocate(self, n):
        return [p + 1 for p in super().allocate(n)]

    def ref_count(self, page):
        return self.refs[page - 1] if 0 < page <= self.num_pages else 0


class IgnoresCountFree(GoodAllocator):
    def free(self, pages):
        for p in pages:
            if self.refs[p] == 0:
                raise ValueError(p)
        for p in pages:
            self.refs[p] = 0
            self.free_list.append(p)


class CopyingFork(GoodAllocator):
    def fork(self, pages):
        return self.allocate(len(pages))


class SameListFork(GoodAllocator):
    def fork(self, pages):
        for p in pages:
            self.refs[p] += 1
        return pages


class UncheckedFork(GoodAllocator):
    def fork(self, pages):
        for p in pages:
            self.refs[p] += 1
        return list(pages)


def append_per_token(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(n_new))


def append_ignoring_tail(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(-(-n_new // page_size)))


def append_floor(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(max((seq_len + n_new) // page_size - len(table), 0)))


def append_one_by_one(table, seq_len, n_new, page_size, alloc):
    for _ in range(-(-(seq_len + n_new) // page_size) - len(table)):
        table.extend(alloc.allocate(1))


def _pack(tables, seq_lens, pad=-1, dtype=np.int32):
    width = max([len(t) for t in tables] + [1])
    out = np.full((len(seq_lens), width), pad, dtype=dtype)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out, np.asarray(seq_lens, dtype=np.int32)


def tables_shared(seq_lens, page_size, alloc):
    tables = [[]] * len(seq_lens)
    for i, n in enumerate(seq_lens):
        tables[i].extend(alloc.allocate(-(-n // page_size)))
    return _pack(tables, seq_lens)


def tables_zero_padded(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens, pad=0)


def tables_int64(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens,
                 dtype=np.int64)


def tables_per_token(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(n) for n in seq_lens], seq_lens)


PY_MISTAKES += [
    ("allocator", CounterAllocator, "never frees"),
    ("allocator", PartialAllocator, "all or nothing"),
    ("allocator", TrustingAllocator, "double free"),
    ("allocator", OneBasedAllocator, "0..num_pages-1"),
    ("refcounts", IgnoresCountFree, "decrement the count"),
    ("refcounts", CopyingFork, "fork shares"),
    ("refcounts", SameListFork, "new list"),
    ("refcounts", UncheckedFork, "only pages in use"),
    ("append_tokens", append_per_token, "one page per token"),
    ("append_tokens", append_ignoring_tail, "still has room"),
    ("append_tokens", append_floor, "round up"),
    ("append_tokens", append_one_by_one, "one allocate(n) call"),
    ("block_tables", tables_shared, "one block table for the whole batch"),
    ("block_tables", tables_zero_padded, "with -1"),
    ("block_tables", tables_int64, "int32"),
    ("block_tables", tables_per_token, "one page per token"),
]


# -- lesson 02: translation -------------------------------------------------------------------

def gather_whole_pages(k, row, n):
    num_pages, p, h, d = k.shape
    pages = np.asarray(row)[: -(-n // p)]
    return k[pages].reshape(-1, h, d)


PY_MISTAKES += [
    ("slot_of", lambda row, t, p: int(row[t // p]) * p + t % p + 1, "off-by-one"),
    ("slot_of", lambda row, t, p: t, "look the page up in the block table"),
    ("slot_of", lambda row, t, p: int(row[t // p]) + t % p, "multiply the physical page"),
    ("kv_offset", lambda s, h, d, H, D: s * D + h * D + d, "missing num_kv_heads"),
    ("kv_offset", lambda s, h, d, H, D: (s * D + d) * H + h, "HND"),
    ("kv_offset", lambda s, h, d, H, D: (s * H + h) * D, "add the dim"),
    ("gather_numpy", gather_whole_pages, "whole pages"),
    ("gather_numpy", lambda k, row, n: k.reshape(-1, *k.shape[2:])[:n], "not contiguous"),
    ("gather_numpy", lambda k, row, n: k.reshape(-1, *k.shape[2:])[
        np.minimum(np.asarray(row)[np.arange(n) // k.shape[1]] * k.shape[1]
                   + np.arange(n) % k.shape[1] + 1, k.shape[0] * k.shape[1] - 1)], "off-by-one"),
]


# -- lesson 04: online softmax, one query ----------------------------------------------------

def online_class(bug):
    class Online:
        def __init__(self, head_dim):
            self.m = 0.0 if bug == "max0" else -np.inf
            self.l, self.acc = 0.0, np.zeros(head_dim)

        def update(self, s, v):
            if bug == "nomax":
                self.l += np.exp(s)
                self.acc = self.acc + np.exp(s) * v
                return
            m_new = max(self.m, s)
            alpha = np.exp(self.m - m_new)
            w = np.exp(s - m_new)
            self.l = self.l * alpha + w
            self.acc = (self.acc if bug == "acc" else self.acc * alpha) + w * v
            self.m = m_new

        def result(self):
            return self.acc if bug == "no_norm" else self.acc / self.l
    return Online


def attend_factory(*, scale_on=True, stop="causal", shift=0):
    def attend(q, kc, vc, row, n, t, kvh, scale):
        p = kc.shape[1]
        keys = {"causal": range(t + 1), "all": range(n), "strict": range(t)}[stop]
        slots = [int(row[j // p]) * p + j % p + shift for j in keys]
        flat_k = kc.reshape(-1, *kc.shape[2:])[:, kvh].astype(np.float64)
        flat_v = vc.reshape(-1, *vc.shape[2:])[:, kvh].astype(np.float64)
        slots = np.minimum(slots, len(flat_k) - 1)
        s = flat_k[slots] @ q * (scale if scale_on else 1.0)
        w = np.exp(s - s.max()) if len(s) else s
        with np.errstate(invalid="ignore"):
            return (w / w.sum()) @ flat_v[slots]
    return attend


PY_MISTAKES += [
    ("online_softmax", online_class("acc"), "accumulator is not rescaled"),
    ("online_softmax", online_class("nomax"), "overflowed"),
    ("online_softmax", online_class("max0"), "-inf"),
    ("online_softmax", online_class("no_norm"), "divide by the running sum"),
    ("attend_one", attend_factory(scale_on=False), "scale the scores"),
    ("attend_one", attend_factory(stop="all"), "no causal mask"),
    ("attend_one", attend_factory(shift=1), "off by one"),
]


# -- lesson 05: tiling in Python -------------------------------------------------------------

def _ceil(a, b):
    return -(-a // b)


PY_MISTAKES += [
    ("tile_pages", lambda n, q0, tq, p: list(range(_ceil(n, p))) if q0 < n else [],
     "never needed"),
    ("tile_pages", lambda n, q0, tq, p: list(range(q0 // p, _ceil(min(n, q0 + tq), p)))
     if q0 < n else [], "every key from 0"),
    ("tile_pages", lambda n, q0, tq, p: list(range(min(n, q0 + tq) // p)) if q0 < n else [],
     "round up"),
    ("tile_pages", lambda n, q0, tq, p: list(range(_ceil(min(n, q0 + tq), p))), "no work"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((n // tq, h, b), (tq,), 8 * p * d),
     "round the number of query tiles up"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq,), 2 * p * d),
     "in bytes"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((_ceil(n, tq), h, b), (tq,), 4 * p * d),
     "stage V"),
    ("tiled_launch", lambda b, h, n, tq, p, d: ((b, h, _ceil(n, tq)), (tq,), 8 * p * d),
     "query tiles in x"),
]


# -- lesson 07: the system ---------------------------------------------------------------------

def next_ignoring_forks(cache, sid):
    return 1 if cache.seq_len(sid) % cache.page_size == 0 else 0


PY_MISTAKES += [
    ("pages_for_next_token", next_ignoring_forks, "copy on write"),
    ("pages_for_next_token", lambda cache, sid: 1, "still has"),
    ("pages_for_next_token",
     lambda cache, sid: int((cache.seq_len(sid) + 1) % cache.page_size == 0),
     "free slot"),
    ("pages_for_next_token", lambda cache, sid: int(
        cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1), "last page is full"),
]


def manager(kind):
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids = list(seq_ids)
            if kind == "attend_first":
                tables, lens = self.cache.block_tables(seq_ids)
                out = pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens)
                for i, s in enumerate(seq_ids):
                    self.cache.append(s, k[i:i + 1], v[i:i + 1])
                return out
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i] if kind == "2d" else k[i:i + 1],
                                  v[i] if kind == "2d" else v[i:i + 1])
            tables, lens = (self.cache.block_tables() if kind == "all_tables"
                            else self.cache.block_tables(seq_ids))
            return pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache, tables, lens)
    return Manager


def serve_factory(*, frees=True, admits_all=False, early=False):
    def serve(cache, requests, kv_for):
        pages = lambda n: -(-n // cache.page_size)  # noqa: E731
        waiting, running, done = deque(range(len(requests))), {}, []
        while waiting or running:
            while waiting and (admits_all or pages(sum(requests[waiting[0]])) <=
                               cache.allocator.num_free - sum(
                                   pages(sum(requests[j])) - pages(cache.seq_len(s))
                                   for j, s in running.items())):
                i = waiting.popleft()
                s = cache.add_sequence()
                cache.append(s, *kv_for(i, 0, requests[i][0]))
                running[i] = s
            for i, s in list(running.items()):
                total = sum(requests[i]) - (1 if early else 0)
                if cache.seq_len(s) < total:
                    cache.append(s, *kv_for(i, cache.seq_len(s), 1))
                if cache.seq_len(s) == total:
                    if frees:
                        cache.free_sequence(s)
                    del running[i]
                    done.append(i)
        return done
    return serve


PY_MISTAKES += [
    ("decode_step", manager("attend_first"), "attend to itself"),
    ("decode_step", manager("all_tables"), "order of seq_ids"),
    ("decode_step", manager("2d"), "k[i:i+1]"),
    ("decode_step", manager("no_all_or_nothing"), "all or nothing"),
    ("serve", serve_factory(frees=False), "never frees"),
    ("serve", serve_factory(admits_all=True), "admit a request only when"),
    ("serve", serve_factory(early=True), "free a sequence once it holds"),
]


@pytest.mark.parametrize("task, impl, phrase", PY_MISTAKES,
                         ids=[f"{t}-{p[:24]}" for t, _, p in PY_MISTAKES])
def test_python_mistake_is_caught(task, impl, phrase):
    assert_caught(task, impl, phrase)


def test_every_python_task_has_three_mistakes():
    from pagedattn_lab.lessons import LESSONS
    kernel_tasks = {"gather_kernel", "naive_kernel", "tiled_kernel"}
    counts = {}
    for task, _, _ in PY_MISTAKES:
        counts[task] = counts.get(task, 0) + 1
    own_files = {"03", "06", "10"}  # their tasks are in tests/test_check_mistakes_<topic>.py
    for task in (t for lesson in LESSONS if lesson.number not in own_files
                 for t in lesson.tasks if t not in kernel_tasks):
        assert counts.get(task, 0) >= 3, task


# -- CUDA C tasks ------------------------------------------------------------------------------

GATHER_MISTAKES = [
    ("head stride", [("(slot * num_kv_heads + kv_head) * head_dim + d",
                      "slot * head_dim + kv_head * head_dim + d")], "missing num_kv_heads"),
    ("shared table", [("block_tables[b * max_pages + t / page_size]",
                       "block_tables[t / page_size]")], "reads row 0 of block_tables"),
    ("offset + 1", [("t % page_size;", "t % page_size + 1;")], "off by one"),
    ("no stride loop", [("i < row_len; i += blockDim.x) {\n        int kv_head",
                         "i < row_len && i < (int)blockDim.x; i += blockDim.x) {\n"
                         "        int kv_head")],
     "loop with a stride"),
    ("no zeros", [("k_out[out_row + i] = 0.0f;\n            v_out[out_row + i] = 0.0f;", "")],
     "written as zeros"),
    ("no length guard", [("if (t >= seq_lens[b]) {", "if (false) {")], "past the sequence's end"),
]

NAIVE_MISTAKES = [
    ("no scale", [("        score *= scale;\n", "")], "not scaled"),
    ("no causal mask", [("for (int j = 0; j <= t; ++j)", "for (int j = 0; j < seq_lens[b]; ++j)")],
     "no causal mask"),
    ("mask one short", [("for (int j = 0; j <= t; ++j)", "for (int j = 0; j < t; ++j)")],
     "stops one key early"),
    ("shared table", [("block_tables + (long long)b * max_pages", "block_tables")],
     "one page table for the whole batch"),
    ("head stride", [("(slot * num_kv_heads + kv_head) * head_dim",
                      "slot * head_dim + kv_head * head_dim")], "missing num_kv_heads"),
    ("GQA as modulo", [("h / (num_heads / num_kv_heads);", "h % num_kv_heads;")],
     "not h % num_kv_heads"),
    ("INFINITY", [("NEG_INF, running_sum", "-INFINITY, running_sum")], "NVRTC"),
    ("padding not zeroed", [("for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;\n", "")],
     "written as zeros"),
    ("token index", [("int t = blockIdx.x * blockDim.x + threadIdx.x;", "int t = threadIdx.x;")],
     "blockIdx.x * blockDim.x + threadIdx.x"),
    ("no rescale", [("acc[d] = acc[d] * rescale + weight", "acc[d] = acc[d] + weight")],
     "rescale the accumulator"),
    ("max starts at 0", [("NEG_INF, running_sum", "0.0f, running_sum")],
     "start the running max at -inf"),
    ("kv head = h (faults)",
     [("int kv_head = h / (num_heads / num_kv_heads);", "int kv_head = h;")],
     "thread ("),
]

TILED_MISTAKES = [
    ("early return",
     [("    bool active = t < seq_len;", "    if (t >= seq_len) return;\n    bool active = true;")],
     "must reach every __syncthreads"),
    ("no barrier after compute", [(
        "        __syncthreads();                         "
        "// everyone is done before the next load\n",
        "")], "a barrier after the load and one after the compute"),
    ("no barrier after load", [(
        "        __syncthreads();                         // the tile is loaded\n", "")],
     "must separate the load from the compute"),
    ("query in one shared buffer", [("float my_q[MAX_HEAD_DIM], acc[MAX_HEAD_DIM];",
                                     "__shared__ float my_q[MAX_HEAD_DIM]; "
                                     "float acc[MAX_HEAD_DIM];")],
     "keep your query in registers"),
    ("no causal mask", [("int last = min(n_keys, t - first_key + 1);", "int last = n_keys;")],
     "no causal mask"),
    ("head stride", [("(slot * num_kv_heads + kv_head) * head_dim + i % head_dim",
                      "slot * head_dim + kv_head * head_dim + i % head_dim")],
     "missing num_kv_heads"),
    ("no scale", [("q[row + d] * scale", "q[row + d]")], "not scaled"),
]

KERNEL_MISTAKES = (
    [("gather_kernel", "02_page_access.ipynb", "SOURCE_GATHER", *m) for m in GATHER_MISTAKES]
    + [("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", *m) for m in NAIVE_MISTAKES]
    + [("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED", *m) for m in TILED_MISTAKES])
KERNEL_IDS = [f"{m[0]}-{m[3]}" for m in KERNEL_MISTAKES]
# Mistakes that give the same wrong numbers on a GPU. The others are caught by the CPU
# executor's strict checks (bounds, barriers, races run deterministically) and may pass on a
# GPU by luck, which is why the checks offer device="cpu".
DETERMINISTIC = {"gather_kernel-head stride", "gather_kernel-shared table",
                 "gather_kernel-no stride loop", "gather_kernel-no zeros",
                 "naive_kernel-no scale", "naive_kernel-no causal mask",
                 "naive_kernel-mask one short", "naive_kernel-shared table",
                 "naive_kernel-head stride", "naive_kernel-GQA as modulo", "naive_kernel-INFINITY",
                 "naive_kernel-padding not zeroed", "naive_kernel-token index",
                 "naive_kernel-no rescale", "naive_kernel-max starts at 0",
                 "tiled_kernel-no causal mask", "tiled_kernel-head stride", "tiled_kernel-no scale"}
SOLUTION_KERNELS = [("gather_kernel", "02_page_access.ipynb", "SOURCE_GATHER"),
                    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    ("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED")]


@pytest.mark.parametrize("task, notebook, variable, name, edits, phrase", KERNEL_MISTAKES,
                         ids=KERNEL_IDS)
def test_kernel_mistake_is_caught(task, notebook, variable, name, edits, phrase):
    source = mutate(solution_source(notebook, variable), edits)
    assert_caught(task, source, phrase, device="cpu")


@pytest.mark.parametrize("task, notebook, variable", SOLUTION_KERNELS)
def test_kernel_checks_pass_the_solution_and_report_the_stub(task, notebook, variable):
    result, printed = run_check(task, solution_source(notebook, variable), device="cpu")
    assert result.passed, printed
    result, printed = run_check(task, solution_source(notebook, variable, "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "not attempted" in printed
    assert "Traceback" not in printed


@pytest.mark.gpu
@pytest.mark.parametrize("task, notebook, variable", SOLUTION_KERNELS)
def test_kernel_checks_on_the_gpu(task, notebook, variable):
    result, printed = run_check(task, solution_source(notebook, variable), device="gpu")
    assert result.passed, printed
    result, _ = run_check(task, solution_source(notebook, variable, "exercises"), device="gpu")
    assert result.status == "not attempted"
    for mistake, kid in zip(KERNEL_MISTAKES, KERNEL_IDS):
        if mistake[0] == task and kid in DETERMINISTIC:
            assert_caught(task, mutate(solution_source(notebook, variable), mistake[4]),
                          mistake[5], device="gpu")


def test_endless_kernel_loop_is_stopped(monkeypatch):
    from pagedattn_lab.grading import kernel_runner
    monkeypatch.setattr(kernel_runner, "KERNEL_TIMEOUT", 1.0)
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("for (int j = 0; j <= t; ++j)", "for (int j = 0; j <= t; )")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert result.status == "failed" and len(result.cases) == 1
    assert "never ends" in printed and "did not finish" in printed


def test_compile_error_names_the_kernel_line():
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("float score = 0.0f;", "float score = 0.0f")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert result.status == "failed" and "does not compile" in printed
    assert len(result.cases) == 1  # reported once, no case run
