"""Workbook 13's checks fail the classic wrong answers, with a hint that names the mistake.

Each wrong version is written the way a learner gets it wrong; each case asserts that the
check fails (not "not attempted") and that the printed hint names the mistake. The correct
versions pass (so the checks are not simply strict).
"""
import numpy as np
import pytest

from tests.check_helpers import as_params, assert_caught, assert_several_fit, run_check


def split(inclusive=False, q_like_kv=False, all_kv=False, modulo=False, from_one=False,
          refuse=True, floats=False, replicate=False, as_int64=False):
    def fn(rank, world_size, num_heads, num_kv_heads):
        if replicate and world_size % num_kv_heads == 0:   # vLLM: a KV head on several ranks
            per = world_size // num_kv_heads
            n_q = num_heads // world_size
            return (rank // per, rank // per + 1), (rank * n_q, (rank + 1) * n_q)
        if refuse and num_kv_heads % world_size:
            raise ValueError("world_size must divide num_kv_heads")
        if floats:    # / for //: 2.0 where 2 was meant
            n_kv, n_q = num_kv_heads / world_size, num_heads / world_size
            return (rank * n_kv, (rank + 1) * n_kv), (rank * n_q, (rank + 1) * n_q)
        if as_int64:
            rank, world_size = np.int64(rank), np.int64(world_size)
        n_kv, n_q = num_kv_heads // world_size, num_heads // world_size
        r = rank + 1 if from_one else rank
        kv = (r * n_kv, (r + 1) * n_kv)
        q = (r * n_q, (r + 1) * n_q)
        if q_like_kv:
            q = kv
        if all_kv:
            kv = (0, num_kv_heads)
        if modulo:
            kv = (q[0] % num_kv_heads, q[0] % num_kv_heads + n_kv)
        if inclusive:
            kv, q = (kv[0], kv[1] - 1), (q[0], q[1] - 1)
        return kv, q
    return fn


def gather(how="right"):
    def fn(gathered, world_size, batch, num_heads, head_dim):
        if how == "reshape":
            return gathered.reshape(batch, num_heads, head_dim)
        blocks = gathered.reshape(world_size, batch, num_heads // world_size, head_dim)
        if how == "reversed":
            blocks = blocks[::-1]
        if how == "interleaved":
            return blocks.transpose(1, 2, 0, 3).reshape(batch, num_heads, head_dim)
        if how == "batch_axis":
            return np.concatenate(list(blocks), axis=0)
        if how == "heads_first":     # each block read as [H/R, batch, D]
            return gathered.reshape(world_size, num_heads // world_size, batch, head_dim) \
                .transpose(2, 0, 1, 3).reshape(batch, num_heads, head_dim)
        if how == "own_block":
            return blocks[0]
        if how == "float16":
            return blocks.transpose(1, 0, 2, 3).reshape(batch, num_heads, head_dim) \
                .astype(np.float16)
        if how == "shape_set":          # reshapes the caller's buffer
            gathered.shape = (world_size, batch, num_heads // world_size, head_dim)
            return gathered.transpose(1, 0, 2, 3).reshape(batch, num_heads, head_dim)
        if how == "sorted_in_place":    # blocks moved within the caller's buffer
            blocks[:] = blocks.transpose(1, 0, 2, 3).reshape(blocks.shape)
            return gathered.reshape(batch, num_heads, head_dim)
        if how == "world_from_size":   # R from the buffer's size: always 1
            world = gathered.size // (batch * num_heads * head_dim)
            blocks = gathered.reshape(world, batch, num_heads // world, head_dim)
        return blocks.transpose(1, 0, 2, 3).reshape(batch, num_heads, head_dim)
    return fn


def wire(floor=False, no_header=False, whole_output=False, no_v=False, all_kv=False,
         q_heads=False, elements=False, ragged=False, int64=False, whole_pages=False,
         share_elements=False, plus_one=False, floats=False, no_lens=False, share_times=1,
         others=False, no_header_only=False):
    def fn(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size, itemsize):
        batch = len(seq_lens)
        longest = int(max(seq_lens))
        pages = longest // page_size if floor else -(-longest // page_size)
        pages = longest // page_size + 1 if plus_one else pages
        entries = (sum(-(-int(n) // page_size) for n in seq_lens) if ragged
                   else batch * pages)
        tables = 4 * batch * pages if no_header else 4 * (2 + batch + entries)
        tables = 4 * (2 + entries) if no_lens else tables
        tables = 4 * (batch + entries) if no_header_only else tables   # seq_lens, no header
        if floats:    # np.ceil and /: the right numbers, as floats
            return (4 * (2 + batch + batch * np.ceil(longest / page_size)),
                    batch * num_heads / world_size * head_dim * itemsize,
                    np.sum(seq_lens) * 2 * num_kv_heads / world_size * head_dim * itemsize)
        tables = tables * 2 if int64 else tables
        heads_out = num_heads if whole_output else num_heads // world_size
        kv_heads = num_heads if q_heads else num_kv_heads
        kv_heads = kv_heads if all_kv else kv_heads // world_size
        size = 1 if elements else itemsize
        share = batch * heads_out * head_dim * (1 if share_elements else size) * share_times
        share = share * (world_size - 1) if others else share
        tokens = (sum(-(-int(n) // page_size) * page_size for n in seq_lens) if whole_pages
                  else int(np.sum(seq_lens)))
        kv = tokens * (1 if no_v else 2) * kv_heads * head_dim * size
        return (tables // 4 if elements else tables), share, kv
    return fn


MISTAKES = [
    ("head_split", split(inclusive=True), "one past"),
    ("head_split", split(q_like_kv=True), "not as many as its KV heads", ["one past"]),
    ("head_split", split(all_kv=True), "not every KV head"),
    ("head_split", split(modulo=True), "not h % num_kv_heads"),
    ("head_split", split(from_one=True), "count from 0"),
    ("head_split", split(refuse=False), "ValueError"),
    ("head_split", lambda r, w, h, k: (r, w), "two pairs"),
    ("head_split", lambda r, w, h, k: split()(r, w, h, k)[::-1], "KV head range first"),
    ("head_split", split(floats=True), "must be ints"),
    ("head_split", split(replicate=True), "fewer KV heads than ranks"),
    ("gather_heads", gather("reshape"), "plain reshape", ["rank 0's heads come first"]),
    ("gather_heads", gather("reversed"), "rank 0's heads come first"),
    ("gather_heads", gather("interleaved"), "not j*R + r"),
    ("gather_heads", gather("batch_axis"), "[batch, num_heads, head_dim]"),
    ("gather_heads", gather("heads_first"), "sequences first"),
    ("gather_heads", gather("own_block"), "one rank's share"),
    ("gather_heads", gather("world_from_size"), "plain reshape"),
    ("gather_heads", lambda g, w, b, h, d: np.full((b, h, d), np.nan), "first wrong row"),
    ("gather_heads", lambda *a: gather()(*a)[None], "[batch, num_heads, head_dim]"),
    ("gather_heads", gather("float16"), "no cast", ["goes to heads"]),
    ("gather_heads", gather("shape_set"), "changed the shape of its input gathered"),
    ("gather_heads", gather("sorted_in_place"), "changed its input gathered"),
    ("gather_heads", lambda *a: gather()(*a).astype(np.int32), "keep the buffer's dtype",
     ["goes to heads"]),
    ("wire_bytes", wire(floor=True), "round up"),
    ("wire_bytes", wire(no_header=True), "header"),
    ("wire_bytes", wire(whole_output=True), "only its own heads' output"),
    ("wire_bytes", wire(no_v=True), "K and V"),
    ("wire_bytes", wire(all_kv=True), "only its own KV heads"),
    ("wire_bytes", wire(q_heads=True), "not query heads"),
    ("wire_bytes", wire(elements=True), "itemsize bytes"),
    ("wire_bytes", lambda *a: 7, "three ints"),
    ("wire_bytes", wire(ragged=True), "LONGEST sequence"),
    ("wire_bytes", wire(int64=True), "int32: 4 bytes"),
    ("wire_bytes", wire(whole_pages=True), "unused tail"),
    ("wire_bytes", wire(share_elements=True), "output is itemsize bytes"),
    ("wire_bytes", wire(floor=True, no_v=True), "round up"),   # two mistakes: the first named
    ("wire_bytes", wire(plus_one=True), "fills its last page exactly"),
    ("wire_bytes", wire(floats=True), "plain integers"),
    # 4 * (2 + batch * pages) is also what a floor gives (4 * batch short) unless the longest
    # sequence fills its last page: that case names the mistake alone
    ("wire_bytes", wire(no_lens=True), "carries the batch's seq_lens"),
    ("wire_bytes", wire(share_times=2), "not sent plus received"),
    ("wire_bytes", wire(others=True), "not once per other rank"),
]


def wire_sorting(seq_lens, *rest):     # sorts the caller's seq_lens to find the longest
    seq_lens.sort()
    return wire()(seq_lens, *rest)


MISTAKES += [("wire_bytes", wire_sorting, "changed its input seq_lens")]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


# (inline: tests/test_grade_protocol.py takes every module-level list here for mistakes)
@pytest.mark.parametrize("task, impl", [
    ("head_split", split()), ("head_split", split(as_int64=True)), ("gather_heads", gather()),
    ("gather_heads", lambda g, w, b, h, d: np.hstack(g.reshape(w, b, h // w, d))),
    ("gather_heads", lambda *a: gather()(*a).astype(np.float64)),
    ("wire_bytes", lambda *a: tuple(np.int64(x) for x in wire()(*a)))])
def test_correct_versions_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError
    for task in ("head_split", "gather_heads", "wire_bytes"):
        result, _ = run_check(task, stub)
        assert result.status == "not attempted"


def test_every_task_has_six_mistakes():
    from pagedattn_lab.lessons import lesson
    for task in lesson("13").tasks:
        assert sum(t == task for t, *_ in MISTAKES) >= 6, task


def test_correct_wire_bytes_passes():
    result, printed = run_check("wire_bytes", wire())
    assert result.passed, printed


def test_a_stub_that_returns_none_is_not_attempted():
    for task in ("head_split", "gather_heads", "wire_bytes"):
        result, printed = run_check(task, lambda *args: None)
        assert result.status == "not attempted", printed
        assert [c.status for c in result.cases] == ["not attempted"], printed


def _bad_split_case(impl):
    result, printed = run_check("head_split", impl)
    assert result.status == "failed", printed
    assert all(c.passed for c in result.cases if c.name == "split"), printed
    return next(c for c in result.cases if c.name == "bad split" and not c.passed), printed


def test_a_bad_split_answered_with_none_is_a_mistake_not_a_stub():
    """It read "part of the task is not written yet" (a NotImplementedError), although every
    valid split had returned its ranges: the None is the learner's answer to a bad split."""
    def silent(rank, world_size, num_heads, num_kv_heads):
        return None if num_kv_heads % world_size else split()(rank, world_size, num_heads,
                                                               num_kv_heads)
    case, printed = _bad_split_case(silent)
    assert case.message == "3 ranks over 4 KV heads: head_split returned None", printed
    assert "raising a ValueError naming world_size" in case.hint
    assert (case.expected, case.got) == ("ValueError", "None")
    assert "not written yet" not in printed


def test_a_bad_split_refused_with_another_error_is_named():
    def asserting(rank, world_size, num_heads, num_kv_heads):
        assert num_kv_heads % world_size == 0, "world_size must divide num_kv_heads"
        return split()(rank, world_size, num_heads, num_kv_heads)
    case, printed = _bad_split_case(asserting)
    assert case.message == "3 ranks over 4 KV heads raised AssertionError", printed
    assert "raise ValueError (a bad argument value), naming world_size" in case.hint
    assert (case.expected, case.got) == ("ValueError", "AssertionError")


def test_head_split_names_both_mistakes_that_give_the_ranges_in_one_wording():
    # 8 query heads over 4 KV heads on 2 ranks: 2 KV heads, so "as many query heads as KV
    # heads" and "one group of query heads" both give 2 query heads a rank
    assert_several_fit("head_split", split(q_like_kv=True), {"rank": 0, "world_size": 2,
                       "num_heads": 8, "num_kv_heads": 4}, "ranges",
                       ["not as many as its KV heads", "not one group"])


def test_wire_bytes_names_both_mistakes_that_give_the_numbers_in_one_wording():
    # 8 KV heads on 4 ranks of 32 query heads: every KV head and the query heads' share
    # (32 / 4) are both 8 heads
    params = {"seq_lens": [17], "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
              "page_size": 16, "world_size": 4, "itemsize": 2}
    assert_several_fit("wire_bytes", wire(all_kv=True), params, "numbers",
                       ["only its own KV heads", "not query heads"])


def test_a_missing_header_alone_is_named_in_the_first_failure():
    """The seq_lens and the padded table, without the 2-value header: the first failed case
    (where an unpadded table happens to give the same bytes) must name the header, not only
    the padding, and the next one must not fall back to restating the formula."""
    result, printed = run_check("wire_bytes", wire(no_header_only=True))
    failed = [c for c in result.cases if not c.passed]
    assert failed and all("2-value header" in c.hint for c in failed[:2]), printed
