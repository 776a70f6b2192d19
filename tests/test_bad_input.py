"""Bad input found by attacking the package (issue 9, item 6): each is refused before any
launch, by a ValueError/TypeError that names the argument, fast, and changes nothing."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pagedattn_lab as pal

from .test_reference import make_paged_problem

H, KVH, D, PAGE = 4, 2, 8, 4


@pytest.fixture
def problem(rng):
    """A decode and a prefill call's inputs over one paged cache, and a copy of the cache."""
    k_cache, v_cache, tables, lens, _, _ = make_paged_problem(rng, [5, 8], PAGE, H, KVH, D,
                                                           spare_pages=13)
    return dict(
        k_cache=k_cache, v_cache=v_cache, block_tables=tables, seq_lens=lens,
        q_decode=rng.standard_normal((2, H, D)).astype(np.float32),
        q_prefill=rng.standard_normal((2, 8, H, D)).astype(np.float32),
        saved=(k_cache.copy(), v_cache.copy(), tables.copy(), lens.copy()))


def decode(p, **kw):
    return pal.paged_attention_decode(p["q_decode"], p["k_cache"], p["v_cache"],
                                      p["block_tables"], p["seq_lens"], **kw)


def prefill(p, **kw):
    return pal.paged_attention_prefill(p["q_prefill"], p["k_cache"], p["v_cache"],
                                       p["block_tables"], p["seq_lens"], kernel="naive", **kw)


def assert_inputs_untouched(p):
    for got, saved in zip((p["k_cache"], p["v_cache"], p["block_tables"], p["seq_lens"]),
                          p["saved"]):
        np.testing.assert_array_equal(got, saved)


def no_launch(monkeypatch):
    """Any kernel launch fails the test: a refusal must come before it."""
    from pagedattn_lab.cpu import RawKernel

    def launch(self, *args, **kwargs):
        raise AssertionError(f"kernel {self.name!r} was launched")
    monkeypatch.setattr(RawKernel, "__call__", launch)


# -- out= that the kernel would corrupt --------------------------------------------------------

OVERLAPS = {
    # name: (call, how out is made from the problem, the input it overlaps)
    # a prefill output is 8 pages of this cache; a decode output is exactly one page
    "prefill out=k_cache": (prefill, lambda p: p["k_cache"][:8].reshape(2, 8, H, D), "k_cache"),
    "prefill out=v_cache": (prefill, lambda p: p["v_cache"][9:17].reshape(2, 8, H, D), "v_cache"),
    "prefill out=q": (prefill, lambda p: p["q_prefill"], "q"),
    "decode out=k_cache[page]": (decode, lambda p: p["k_cache"][p["block_tables"][0, 0]]
                                 .reshape(2, H, D), "k_cache"),
    "decode out=q": (decode, lambda p: p["q_decode"], "q"),
    "decode out=block_tables": (decode, lambda p: _float_view_of_ints(p), "block_tables"),
}


def _float_view_of_ints(p):
    """An out whose memory is the block table's (the kernel would rewrite page ids)."""
    tables = np.zeros(2 * H * D, np.int32)
    tables[: p["block_tables"].size] = p["block_tables"].ravel()
    p["block_tables"] = tables[: p["block_tables"].size].reshape(p["block_tables"].shape)
    p["saved"] = p["saved"][:2] + (p["block_tables"].copy(),) + p["saved"][3:]
    return tables.view(np.float32).reshape(2, H, D)


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_out_sharing_memory_with_an_input_is_refused_before_launch(problem, monkeypatch, case):
    call, make_out, overlapped = OVERLAPS[case]
    out = make_out(problem)
    no_launch(monkeypatch)
    with pytest.raises(ValueError, match=rf"^out: shares memory with {overlapped}\b"):
        call(problem, out=out)
    assert_inputs_untouched(problem)


def test_out_beside_an_input_is_accepted(problem):
    """Adjacent, not overlapping: the check is on the bytes, not the allocation."""
    block = np.full((2 * 2 * H * D,), np.nan, np.float32)
    q = block[: 2 * H * D].reshape(2, H, D)
    q[...] = problem["q_decode"]
    out = block[2 * H * D:].reshape(2, H, D)
    got = pal.paged_attention_decode(q, problem["k_cache"], problem["v_cache"],
                                     problem["block_tables"], problem["seq_lens"], out=out)
    assert got is out
    ref = pal.reference_decode(problem["q_decode"], problem["k_cache"], problem["v_cache"],
                               problem["block_tables"], problem["seq_lens"])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call", [decode, prefill])
def test_read_only_out_is_refused_before_launch(problem, monkeypatch, call):
    shape = (2, H, D) if call is decode else (2, 8, H, D)
    out = np.zeros(shape, np.float32)
    out.flags.writeable = False
    no_launch(monkeypatch)
    with pytest.raises(ValueError, match="^out: expected a writeable array"):
        call(problem, out=out)


# -- scale -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale, match", [
    (1e39, "scale: expected at most 2.36e[+]38"),          # finite, but not in float32
    (2.4e38, "scale: expected at most"),                    # float32, but not times log2(e)
    (float("inf"), "scale: expected a finite number"),
    (float("nan"), "scale: expected a finite number"),
    (0.0, "scale: expected a positive number"),
    (-0.125, "scale: expected a positive number"),
    (1e-50, "scale: 1e-50 times log2\\(e\\) is below float32.s smallest normal"),
])
@pytest.mark.parametrize("call", [decode, prefill])
def test_scale_the_kernels_cannot_use_is_refused(problem, monkeypatch, call, scale, match):
    no_launch(monkeypatch)
    with pytest.raises(ValueError, match=match):
        call(problem, scale=scale)


def test_largest_allowed_scale_gives_finite_output(problem):
    """The bound is not too tight: a large finite scale still gives a (hard-max) answer."""
    out = decode(problem, scale=1e30)
    assert np.isfinite(out).all()


# -- caches and tables that make no sense --------------------------------------------------------

@pytest.mark.parametrize("axis, dim", [(0, "num_pages"), (1, "page_size"), (2, "num_kv_heads"),
                                       (3, "head_dim")])
def test_cache_with_a_zero_dimension_is_refused_by_name(rng, axis, dim):
    shape = [3, PAGE, KVH, D]
    shape[axis] = 0
    cache = np.zeros(shape, np.float32)
    q = np.zeros((1, H, D if axis != 3 else 0), np.float32)
    tables, lens = np.zeros((1, 2), np.int32), np.array([3], np.int32)
    calls = [lambda: pal.gather_kv(cache, cache, tables[0], 3),
             lambda: pal.gather_kv_reference(cache, cache, tables[0], 3),
             lambda: pal.paged_attention_decode(q, cache, cache, tables, lens),
             lambda: pal.reference_decode(q, cache, cache, tables, lens)]
    for call in calls:
        with pytest.raises(ValueError, match=rf"^k_cache: .* got {dim} = 0"):
            call()


def test_query_with_no_heads_is_refused(problem):
    with pytest.raises(ValueError, match="^q: expected at least one query head"):
        pal.paged_attention_decode(np.zeros((2, 0, D), np.float32), problem["k_cache"],
                                   problem["v_cache"], problem["block_tables"],
                                   problem["seq_lens"])


def test_translate_refuses_a_padding_entry():
    row = np.array([3, -1, -1], np.int32)        # what PagedKVCache.block_tables pads with
    assert pal.translate(row, 2, 4, 2, 8).physical_page == 3
    with pytest.raises(ValueError, match=r"^block_table_row\[1\]: entry -1 is padding"):
        pal.translate(row, 5, 4, 2, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(page_size=0), "^page_size: expected an int >= 1"),
    (dict(num_kv_heads=0), "^num_kv_heads: expected an int >= 1"),
    (dict(head_dim=0), "^head_dim: expected an int >= 1"),
    (dict(page_size=4.0), "^page_size: expected an int"),
    (dict(kv_head=2), r"^kv_head: expected 0..1, got 2"),
])
def test_translate_refuses_bad_sizes_by_name(kwargs, match):
    args = dict(block_table_row=np.array([3, 1], np.int32), token=5, page_size=4,
                num_kv_heads=2, head_dim=8)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        pal.translate(**args)


# -- ids of the wrong kind ------------------------------------------------------------------------

def test_allocator_and_cache_refuse_ids_of_the_wrong_kind(rng):
    cache = pal.PagedKVCache(8, PAGE, KVH, D, device="cpu")
    seq = cache.add_sequence()
    k = rng.standard_normal((5, KVH, D))
    cache.append(seq, k, k)
    alloc = cache.allocator
    state = (alloc.free_list(), [alloc.ref_count(p) for p in range(8)], cache.k_cache.copy())
    cases = [
        (lambda: alloc.free(None), TypeError, "^pages: expected a list of page ids, got None"),
        (lambda: alloc.free(3), TypeError, r"^pages: expected a list .* write \[3\]"),
        (lambda: alloc.incref("01"), TypeError, "^pages: expected a list of page ids"),
        (lambda: cache.block_tables(5), TypeError,
         r"^seq_ids: expected a list of sequence ids, got 5 .* write \[5\]"),
        (lambda: cache.block_tables([seq, 1.5]), TypeError, r"^seq_ids\[1\]: expected an int"),
        (lambda: cache.seq_len(float(seq)), TypeError, "^seq_id: expected an int, got 0.0"),
        (lambda: cache.append(float(seq), k, k), TypeError, "^seq_id: expected an int"),
        (lambda: cache.free_sequence(None), TypeError, "^seq_id: expected an int, got None"),
        (lambda: cache.fork_sequence(True), TypeError, "^seq_id: expected an int, got True"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert cache.seq_len(seq) == 5 and cache.seq_ids == [seq]
    assert state[:2] == (alloc.free_list(), [alloc.ref_count(p) for p in range(8)])
    np.testing.assert_array_equal(state[2], cache.k_cache)


# -- sizes too large to allocate: refused at once, not after an attempt --------------------------

def run_with_memory_cap(code: str, cap_gib: float = 3.0, timeout: float = 60) -> str:
    """Run `code` in a fresh Python whose address space is capped, so an attempt to build a
    giant structure fails there (MemoryError) instead of exhausting this machine. The time it
    prints counts `code` alone: the package is imported first, since an import on a busy
    2-core machine took over 2 s (CI, 2026-12-05) and the refusal is what is timed."""
    prelude = textwrap.dedent(f"""
        import resource, time
        cap = int({cap_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        import pagedattn_lab
        t0 = time.perf_counter()
    """)
    done = "\nprint(f'seconds={time.perf_counter() - t0:.3f}')\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + done],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("call, exc, match", [
    ("pal.BlockAllocator(10**12)", "ValueError", "num_pages: expected at most 2147483647"),
    ("pal.PagedKVCache(10**9, 16, 8, 128, device='cpu')", "ValueError",
     "num_pages: the K and V caches would take"),
    ("pal.PagedKVCache(2**40, 1, 1, 1, device='cpu')", "ValueError", "num_pages: expected at most"),
    ("pal.PagedAttentionManager(10**9, 16, 8, 8, 128, device='cpu')", "ValueError",
     "num_pages: the K and V caches would take"),
])
def test_huge_num_pages_is_refused_fast(call, exc, match):
    out = run_with_memory_cap(f"""
        import pagedattn_lab as pal
        try:
            {call}
            print("accepted")
        except Exception as e:
            print(type(e).__name__, str(e))
    """)
    assert f"{exc} {match}" in out, out
    assert float(out.rsplit("seconds=", 1)[1]) < 2.0, out


def test_a_pool_of_the_most_pages_costs_nothing_until_used():
    """2**31 - 1 pages (the most int32 ids can name): built and used at once, in little memory."""
    out = run_with_memory_cap("""
        import pagedattn_lab as pal
        alloc = pal.BlockAllocator(2**31 - 1)
        pages = alloc.allocate(3)
        alloc.free(pages[:1])
        print(pages, alloc.num_free, alloc.num_used, alloc.ref_count(2**31 - 2))
    """, cap_gib=1.0)
    assert out.startswith(f"[0, 1, 2] {2**31 - 3} 2 0"), out


def test_allocating_more_pages_than_the_memory_holds_is_refused(monkeypatch):
    """allocate(2**31 - 1) of the largest pool took ~400 GB of bookkeeping and got the
    process killed; now a ValueError names n (machine memory capped at 1 GiB here)."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**30)
    alloc = pal.BlockAllocator(2**31 - 1)
    alloc.free(alloc.allocate(3)[1:2])
    before = alloc.state()
    with pytest.raises(ValueError, match=r"^n: the bookkeeping of 2147483645 pages would take"):
        alloc.allocate(alloc.num_free)
    assert alloc.state() == before
    with pytest.raises(TypeError, match=r"^state: expected what state\(\) returns"):
        alloc.restore((0, (), {}))   # a tuple read field by field: no AttributeError later
    assert alloc.state() == before


# -- what names the argument at fault ------------------------------------------------------------

def _swapped(a):
    return a.astype(a.dtype.newbyteorder())


@pytest.mark.parametrize("call", ["decode q", "decode seq_lens", "plan block_tables",
                                  "run q", "write_kv slot_mapping"])
def test_arrays_of_swapped_bytes_are_refused_by_their_byte_order(problem, call):
    """A '>i4' array is not int32 to the kernels; the error said 'expected int32, got int32'."""
    p = problem
    tables, lens, q = p["block_tables"], p["seq_lens"], p["q_decode"]
    w = pal.BatchDecodeWrapper().plan(tables, lens, H, KVH, D, PAGE, "float32")
    calls = {
        "decode q": lambda: pal.paged_attention_decode(_swapped(q), p["k_cache"], p["v_cache"],
                                                       tables, lens),
        "decode seq_lens": lambda: pal.paged_attention_decode(q, p["k_cache"], p["v_cache"],
                                                              tables, _swapped(lens)),
        "plan block_tables": lambda: pal.BatchDecodeWrapper().plan(_swapped(tables), lens, H,
                                                                   KVH, D, PAGE, "float32"),
        "run q": lambda: w.run(_swapped(q), p["k_cache"], p["v_cache"]),
        "write_kv slot_mapping": lambda: pal.write_kv(
            p["k_cache"][0], p["v_cache"][0], p["k_cache"], p["v_cache"],
            _swapped(np.arange(PAGE, dtype=np.int64))),
    }
    with pytest.raises(TypeError, match=r"got (int|float)\d+ in non-native byte order \(>"):
        calls[call]()
    assert_inputs_untouched(p)


@pytest.mark.parametrize("call, match", [
    (lambda p: pal.BatchDecodeWrapper().plan(p["block_tables"], p["seq_lens"], H, KVH, D, PAGE,
                                             "float32", kernel=np.array(["simt", "simt"])),
     "^kernel: expected 'auto', 'simt' or 'tensor_core', got array"),
    (lambda p: pal.paged_attention_prefill(p["q_prefill"], p["k_cache"], p["v_cache"],
                                           p["block_tables"], p["seq_lens"],
                                           kernel=np.array(["naive", "tiled"])),
     "^kernel: expected one of"),
    (lambda p: pal.PagedKVCache(8, PAGE, KVH, D, device=np.array(["cpu", "gpu"])),
     "^device: expected 'auto', 'cpu' or 'gpu', got array"),
    (lambda p: pal.PagedAttentionManager(8, PAGE, H, KVH, 64, prefill_kernel=np.array(["naive"])),
     "^prefill_kernel: expected 'naive', 'tiled' or None"),
], ids=["plan kernel", "prefill kernel", "cache device", "manager prefill_kernel"])
def test_a_name_given_as_an_array_is_refused_by_name(problem, monkeypatch, call, match):
    """An array of names compared element-wise: NumPy's 'truth value of an array is
    ambiguous' named nothing, and a one-element array passed as the name it held."""
    no_launch(monkeypatch)
    with pytest.raises(ValueError, match=match):
        call(problem)
    assert_inputs_untouched(problem)
