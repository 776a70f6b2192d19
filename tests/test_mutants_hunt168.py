"""Hunt 168: tests that catch mutants of hunts 159-163's new lines which their own tests let
pass (each test names the mutant it kills; see the hunt's report for the whole table)."""
import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper, decode_plan

TABLES = np.arange(4 * 8, dtype=np.int32).reshape(4, 8)
LENS = np.array([5, 17, 100, 64], np.int32)


def _plan(head_dim, heads=4, kv_heads=2, **kw):
    return BatchDecodeWrapper().plan(TABLES, LENS, heads, kv_heads, head_dim, 16, "float16",
                                     kernel="simt", device="cpu", **kw)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("head_dim", [8, 24])
def test_codes_need_head_dim_a_multiple_of_16(kv_dtype, head_dim):
    """Mutants: the plan's check_codes_head_dim call dropped; `% 16` as `% 8` (24 is a
    multiple of 8, not of 16)."""
    with pytest.raises(ValueError, match=rf"head_dim: {head_dim} with \w+ pages: .*multiple "
                                         "of 16"):
        _plan(head_dim, kv_dtype=kv_dtype)


def test_sixteen_bit_pages_take_head_dim_a_multiple_of_8():
    """Mutant: the codes' limit applied to 16-bit pages too (kv_format not tested)."""
    assert _plan(24).part_len >= 1


def test_sixteen_bit_plan_gives_choose_kernel_no_scale_scheme(monkeypatch):
    """Mutant: scale_scheme handed on for 16-bit pages (on the GPU, auto then takes an MHA
    plan for a compressed one: MHA_KERNEL instead of the measured mha_kernel)."""
    seen = []
    real = decode_plan.choose_kernel
    monkeypatch.setattr(decode_plan, "choose_kernel",
                        lambda *a, **kw: seen.append(a) or real(*a, **kw))
    _plan(64)
    _plan(64, kv_dtype="int8", scale_scheme="per_token")
    assert [a[5] for a in seen] == [None, "per_token"]


@pytest.mark.parametrize("lens, bpi, sms, resident", [
    ([640], 1, 1, 10), ([640, 64, 1], 2, 3, 4), ([1000, 999, 37], 1, 2, 5), ([64 * 24], 3, 1, 8)])
def test_tc_waves_part_len_is_the_fewest_units_that_fill_the_waves(lens, bpi, sms, resident):
    """Mutant: the budget test `<=` as `<` (a cut that fills the waves exactly was refused).
    Against a scan of every multiple of 64 tokens."""
    from pagedattn_lab import decode_work as dw
    lens = np.array(lens, np.int64)
    budget = decode_plan.TC_WAVES * resident * sms
    units = next(n for n in range(1, 10**6)
                 if sum(-(-int(n_) // (64 * n)) for n_ in lens) * bpi <= budget)
    want = max(min(64 * units, int(lens.max())),
               -(-int(lens.max()) // decode_plan.TC_AUTO_MAX_PARTS))
    assert dw.choose_tc_part_len(lens, bpi, sms, 64, resident=resident) == want


_BEFORE_START = r"""
extern "C" __global__ void before_start_double(double* x)
{
    const int i = threadIdx.x;
    x[i - 1] += 1.0;
}
"""


def test_arithmetic_on_the_element_before_a_double_array_is_reported():
    """Mutant: _SIGNALLING_NAN's float64 entry made all ones (NaN + 1 gives those bits back,
    so the write went unseen). (float16 and bfloat16 arithmetic goes through shim_half.h's and
    shim_bf16.h's conversions, which make any NaN the canonical 0x7FFF: a write there changes
    all-ones bytes too, so their entries' mutants are equivalent on this executor.)"""
    from pagedattn_lab.cpu import KernelFault, RawKernel
    x = np.zeros(100, np.float64)
    with pytest.raises(KernelFault) as info:
        RawKernel(_BEFORE_START, "before_start_double")((1,), (4,), (x,))
    assert (info.value.buffer, info.value.index, info.value.access) == ("x", -1, "write")
    assert not x.any()


# (a short or a byte array: 2^32 - k elements past it stay 8 GiB from it at most, where
# a float's 16 GiB past an array mapped high could leave the canonical addresses, whose fault
# names address 0)
_WRAPS = r"""
extern "C" __global__ void wraps(T* y, int k, int skew)
{
    const unsigned i = threadIdx.x;
    *(T*)((char*)(y + (i - (unsigned)k)) + skew) = 1;
}
"""


def _wrapped_fault(ctype: str, dtype, k: int, skew: int = 0):
    from pagedattn_lab.cpu import KernelFault, RawKernel
    y = np.zeros(32, dtype)
    with pytest.raises(KernelFault) as info:
        RawKernel(_WRAPS.replace("T", ctype), "wraps")((1,), (1,), (y, np.int32(k),
                                                                    np.int32(skew)))
    assert not y.any()
    return info.value


@pytest.mark.parametrize("k, skew, wrapped", [(1 << 16, 0, True), ((1 << 16) + 1, 0, False),
                                              (1, 1, False)])
def test_only_whole_elements_up_to_2_16_below_zero_are_named_as_wrapped(k, skew, wrapped):
    """Mutants: report._find_wrapped's window 2^16 as 2^8; its `not rest` dropped (an address
    between elements is no element's wrapped index)."""
    e = _wrapped_fault("short", np.int16, k, skew)
    assert ("wrapped around as an unsigned 32-bit index" in str(e)) == wrapped, str(e)
    if wrapped:
        assert (e.buffer, e.index) == ("y", (1 << 32) - k)


def test_a_wrapped_index_of_a_byte_array_counts_its_elements_of_1_byte():
    """Mutant: report._find_wrapped dividing by 4 bytes, not the argument's itemsize."""
    e = _wrapped_fault("unsigned char", np.uint8, 2)
    assert (e.buffer, e.index) == ("y", (1 << 32) - 2), str(e)
    assert "which is -2 wrapped around" in str(e)


def _cached_prefix_always_page_short(hashes, cached, num_tokens, page_size):
    """num_computed a page short on every hit, partial ones too (the first case is partial)."""
    pages = []
    for h in hashes:
        if h not in cached:
            break
        pages.append(cached[h])
    return pages, max(len(pages) - 1, 0) * page_size


def test_a_page_short_on_a_partial_hit_is_not_told_as_a_full_hits_mistake():
    """Mutant: checks_engine's full-hit hint without `expected[1] == num_tokens - 1` (a
    partial hit's num_computed a page short was told "on a full hit ...")."""
    from pagedattn_lab.grading import checks_engine
    from pagedattn_lab.grading.report import Mismatch
    with pytest.raises(Mismatch) as info:   # the check's first case: 14 tokens, pages of 4
        checks_engine._prefix_case(_cached_prefix_always_page_short, 1210, 4, 14, "part")
    assert "the pages are right; num_computed = min(" in info.value.hint, info.value.hint


def test_next_heads_hint_needs_zeros_after_the_heads_that_follow():
    """Mutant: checks_tc_rows._next_heads_hint without its test that the padding rows past
    q's last head are 0 (rows holding the next heads and then anything else were told as
    "the query heads after it")."""
    from pagedattn_lab.grading.checks_tc_rows import _next_heads_hint
    q = np.arange(1, 8 * 4 + 1, dtype=np.float64).reshape(8, 4)   # 8 heads, group 2
    tiles = np.zeros((1, 16, 4))
    tiles[0, :8] = q   # the group (heads 0-1), then heads 2-7, then zeros
    assert "row 2 is query head 2" in _next_heads_hint(tiles, q, 0, 2)
    tiles[0, 8:] = 7.0   # past q's last head: not zeros
    assert _next_heads_hint(tiles, q, 0, 2) is None


def test_the_judges_heap_bound_named_is_the_one_set_under_a_lower_hard_limit(monkeypatch):
    """Mutant: judge.limit_memory records the bound asked for (`mb`), not the one set (the
    hard limit, where lower): a MemoryError's message then names a bound never set."""
    import resource

    from pagedattn_lab.grading import judge, report
    hard, calls = 512 << 20, []
    monkeypatch.setitem(report.JUDGE_HEAP, "mb", 0)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (hard, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: calls.append(limits))
    judge.limit_memory(1024)
    assert calls == [(hard, hard)] and report.JUDGE_HEAP["mb"] == 512


class _TaggedKey(str):
    def __repr__(self):
        return f"<key {str.__str__(self)}>"


def _peer():
    from tests.test_grader_messages_hunt160 import _Peer
    peer = _Peer()
    peer.init_errors()
    return peer


def test_a_key_error_of_a_str_subclass_key_reads_as_the_notebook_shows_it():
    """Mutant: remote_errors._message_of's `type(key) is str` as isinstance (a str subclass's
    key crossed as its text, and the rebuilt KeyError quoted it: 'x', not <key x>)."""
    exc = KeyError(_TaggedKey("x"))
    peer = _peer()
    assert str(peer.exception(peer.describe(exc))) == str(exc) == "<key x>"


@pytest.mark.parametrize("shown", ["yes", 1, [True]])
def test_only_a_shown_of_true_makes_the_message_a_shown_str(shown):
    """Mutant: _key_of's `shown is True` as `shown` (a reply's truthy field of another type
    made its message the KeyError's text as shown, unquoted)."""
    info = {"type": "KeyError", "mro": ["KeyError", "LookupError", "Exception",
                                        "BaseException", "object"], "message": "x",
            "shown": shown}
    assert str(_peer().exception(info)) == "'x'"


@pytest.mark.parametrize("per_token, index, named", [(1, 13, True), (1, 14, False),
                                                     (0, 13, False)])
def test_query_head_scale_hint_only_where_the_index_is_slot_times_kv_heads_plus_h(
        per_token, index, named):
    """Mutants: checks_dequant's query-head hint without `row % kv_heads == 0` (an
    index that is no slot * num_kv_heads + h was told as one), or without `not per_token`
    (static scales have no slots). Query head 5 of 2 KV heads, 5 slots' scales."""
    from types import SimpleNamespace

    from pagedattn_lab.grading.checks_dequant import _head_fault_hints
    exc = SimpleNamespace(block=(5, 0, 0), index=index, size=10, buffer="k_scale")
    hints = _head_fault_hints(exc, per_token, 6, 2)
    assert any("query head 5's scale" in hint for hint in hints) == named, hints


def test_nan_row_hint_only_when_every_wrong_scale_is_a_nan_rows():
    """Mutant: checks_quant._nan_row_hint without its subset test (a wrong scale of a row
    with no NaN was told as the NaN-dropping amax's)."""
    from types import SimpleNamespace

    from pagedattn_lab.grading.checks_quant import _nan_row_hint
    k = np.ones((3, 2, 4), np.float32)
    k[1, 0, 3] = np.nan   # token 1, head 0: slot 1's scale 2
    slots = np.array([0, 1, 2])
    bad = np.zeros(4 * 2, bool)
    bad[2] = True
    assert "only the rows holding a NaN" in _nan_row_hint(SimpleNamespace(bad=bad), k, slots)
    bad[5] = True   # slot 2, head 1: no NaN there
    assert _nan_row_hint(SimpleNamespace(bad=bad), k, slots) is None


def test_a_fork_that_adds_an_owner_to_the_first_page_only_is_named():
    """Mutant: refcounts' _expect_forked comparing the first page's count only."""
    from tests.check_helpers import GoodAllocator
    from tests.test_grader_messages_hunt160 import _failed_case

    class ForkFirstOnly(GoodAllocator):
        def fork(self, pages):
            pages = list(pages)
            self.refs[pages[0]] += 1
            return pages
    case = _failed_case("refcounts", ForkFirstOnly, "a shared page outlives one free")
    assert case.message == "ref_count after fork([0, 1])", case
    assert (case.expected, case.got) == ("[2, 2]", "[2, 1]")


def test_block_tables_returning_three_values_says_how_many_came():
    """Mutant: checks_block_tables' "a tuple of {len(result)}" without the length."""
    from tests.test_grader_messages_hunt160 import _failed_case, _padding_zeros

    def with_extra(seq_lens, page_size, allocator):
        return (*_padding_zeros(seq_lens, page_size, allocator), None)
    case = _failed_case("block_tables", with_extra, "three sequences")
    assert case.got == "a tuple of 3", case


@pytest.mark.parametrize("constant, hint", [
    # the check fails it: "a[i] + 10: the spec adds 10" (4 digits) said nothing
    ("10.0002f", "every element is a[i] + 10.0002: the spec adds 10."),
    # within the hint's tolerance of 10 (not a different constant): the fallback
    ("10.0001f", "compare your kernel with the spec above for the first wrong element")])
def test_a_map_that_adds_a_constant_near_10_is_not_told_it_adds_10(constant, hint):
    """Found here: checks_onramp's constant-shift hint printed the shift at 4 digits, so
    a[i] + 10.0002f was told "every element is a[i] + 10: the spec adds 10." Mutant: the
    hint without `not np.isclose(shift, 10)` (a shift of 10.0001 told the same way)."""
    from tests.test_grader_messages_hunt160 import _failed_case, _onramp
    case = _failed_case("puzzle_map", _onramp("SOURCE_MAP", "a[i] + 10.0f", f"a[i] + {constant}"),
                        "n = 32")
    assert case.hint.startswith(hint), case.hint


def test_launch_warp_on_the_gpu_checks_the_gpus_values_against_the_counted_run():
    """Mutant: decode_launch.launch_warp handing count_then_check no launch on the GPU too
    (the check then graded the CPU executor's values, never the GPU's)."""
    from types import SimpleNamespace

    from pagedattn_lab.grading import decode_launch
    from pagedattn_lab.grading.report import Mismatch
    launched = []

    def count(grid, block, host, timeout=None):
        host[1][:] = 1.0
        return "counts"

    def launch(grid, block, args, outputs=()):
        launched.append(grid)
        return [np.full(4, 2.0)]   # not what the counted run computed
    kern = SimpleNamespace(device="gpu", count=count, launch=launch)
    comp = SimpleNamespace(get=lambda: kern)
    with pytest.raises(Mismatch, match="the GPU's values differ"):
        decode_launch.launch_warp(comp, (1,), [np.zeros(4), np.zeros(4)], [1], count=True)
    assert launched == [(1,)]


@pytest.mark.parametrize("off", [1, -1])
def test_kv_offset_one_off_either_way_is_named(off):
    """Mutant: checks_addressing's one-off variants without `expected - 1`."""
    from tests.check_helpers import assert_caught

    def one_off(slot, kv_head, dim, num_kv_heads, head_dim):
        return (slot * num_kv_heads + kv_head) * head_dim + dim + off
    assert_caught("kv_offset", one_off, "one off: offsets count from 0")


def test_group_rows_padding_message_names_the_row_the_tile_and_the_dim():
    """Mutant: checks_tc_rows._check_padding's message with the row and the tile swapped."""
    from pagedattn_lab.grading.checks_tc_rows import _check_padding
    from pagedattn_lab.grading.report import Mismatch
    q = np.ones((2, 4))
    rows = np.zeros((2, 16), bool)
    rows[0, :2] = True
    tiles = np.zeros((2, 16, 4))
    tiles[0, :2] = q
    tiles[1, 3, 2] = 5.0
    with pytest.raises(Mismatch) as info:
        _check_padding(tiles, q, 0, 2, rows)
    assert info.value.message.startswith("padding row 3 of tile 1 (past the group's 2 heads) "
                                         "holds 5 at dim 2 instead of 0"), info.value.message


def test_a_scale_fault_that_both_head_mistakes_give_names_both():
    """Mutant: checks_dequant._launch_read naming the first of the fitting hints alone.
    Query head 4 of 2 KV heads, per-token scales of 4 slots: element 6 is slot 2's KV head
    4 / 2 = 2 and slot 1's query head 4 alike."""
    from types import SimpleNamespace

    from pagedattn_lab.cpu import KernelFault
    from pagedattn_lab.grading.checks_dequant import _launch_read
    from pagedattn_lab.grading.report import Mismatch
    fault = KernelFault("kernel 'read': out-of-bounds read of 'k_scale'", region="argument",
                        kernel="read", block=(4, 0, 0), thread=(0, 0, 0), address=0,
                        signal=None, access="read", buffer="k_scale", arg_index=5, index=6,
                        size=8)

    def launch(*args, **kwargs):
        raise fault
    comp = SimpleNamespace(get=lambda: SimpleNamespace(launch=launch))
    with pytest.raises(Mismatch) as info:
        _launch_read(comp, (1,), [], 1, 8, 2)
    hint = info.value.hint
    assert hint.startswith("these mistakes give the same index here"), hint
    assert "query head 4 read KV head h / num_kv_heads = 2" in hint
    assert "query head 4's scale was read at slot * num_kv_heads + h" in hint


def test_no_first_use_poison_where_a_declarators_name_cannot_be_read():
    """Mutant: source._template_poison without `if not all(names)` (a declarator whose name
    its pattern cannot read, `(s)[4]`, raised AttributeError while translating the kernel)."""
    from pagedattn_lab.cpu.source import guard_static_shared
    src = ("template <int N> __device__ void f() {\n"
           "    __shared__ float (s)[4];\n"
           "}\n")
    assert "PAL_SPOISON" not in guard_static_shared(src)


def test_a_padding_entry_past_a_one_page_row_says_page_in_the_singular():
    """Mutant: checks_block_tables' "past row {row}'s {n} pages" without counted()."""
    from pagedattn_lab.grading.checks_block_tables import _batch_case
    from pagedattn_lab.grading.report import Mismatch
    from tests.test_grader_messages_hunt160 import _padding_zeros
    with pytest.raises(Mismatch) as info:
        _batch_case(_padding_zeros, [3, 40], 16)
    assert info.value.message == "padding entry block_tables[0, 1] (past row 0's 1 page)"


def test_the_slack_before_an_array_of_a_shared_mapping_reads_nan_whatever_its_length():
    """Mutant: launch._slack_fill taking its first n bytes, not its last: a mapping of 13
    bytes (a float view of 12 and the uint8 array of 13 under it) starts 3 bytes into an
    element, and x[-1] then read the misaligned bytes as -1.9999999, a plausible value."""
    from pagedattn_lab.cpu import RawKernel
    src = r"""
extern "C" __global__ void before_read(const float* x, const unsigned char* y, float* out)
{
    const int i = threadIdx.x;
    out[i] = x[i - 1] + y[i];
}
"""
    buf = np.zeros(13, np.uint8)
    out = np.zeros(3, np.float32)
    RawKernel(src, "before_read")((1,), (3,), (buf[:12].view(np.float32), buf, out))
    assert np.isnan(out[0]) and out[1:].tolist() == [0.0, 0.0], out
