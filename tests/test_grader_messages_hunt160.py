"""The grader's messages and limits, the leftovers (hunt 160): a KeyError of any key reads the
same under the judge as in the notebook; a MemoryError of the check's own work is not laid on
the learner's code; the seed checked as validate.check_int checks; the one-program refusals
built by one helper."""
import functools

import numpy as np
import pytest

from pagedattn_lab.grading.remote_errors import ErrorTranslation


class _Peer(ErrorTranslation):
    strict = False


def _crossed(exc: BaseException) -> BaseException:
    peer = _Peer()
    peer.init_errors()
    return peer.exception(peer.describe(exc))


class _OwnStr(KeyError):
    def __str__(self):
        return "no page for sequence 3"


# -- 1. a KeyError of any key --------------------------------------------------------------------
@pytest.mark.parametrize("exc", [
    KeyError(True), KeyError(None), KeyError((1, 2)), KeyError(0.5), KeyError(b"seq"),
    KeyError(2**70), KeyError(), KeyError("a", "b"), KeyError(np.int64(3)), _OwnStr("x"),
    KeyError("seq 3"), KeyError(3),
], ids=repr)
def test_a_key_error_of_any_key_reads_as_the_notebook_shows_it(exc):
    """Before: only str and int keys crossed as themselves; the rest crossed as their repr and
    were quoted again (KeyError: 'True' under the grader, KeyError: True in the notebook)."""
    rebuilt = _crossed(exc)
    assert isinstance(rebuilt, KeyError) and str(rebuilt) == str(exc), (str(rebuilt), str(exc))


class _RaisingBoolKey:
    def __init__(self, dim):
        self.dim = dim

    def update(self, score, values):
        raise KeyError(True)   # a dict keyed by a flag

    def result(self):
        return np.zeros(self.dim)


def test_a_key_error_of_a_bool_key_reads_the_same_under_the_grader_as_in_the_notebook():
    from tests.test_grade_attack_hunt144 import raised_in_notebook_and_judged  # noqa: PLC0415
    notebook, judged = raised_in_notebook_and_judged(_RaisingBoolKey)
    assert notebook == judged == "KeyError: True", (notebook, judged)


# -- 2. whose MemoryError --------------------------------------------------------------------
def _memory_case(run, monkeypatch, bound_mb: int = 0):
    """The failed case's (message, hint) when `run` raises MemoryError, in a process whose
    judge heap bound (judge.limit_memory) is `bound_mb`."""
    from pagedattn_lab.grading.report import JUDGE_HEAP, Case, run_cases  # noqa: PLC0415
    monkeypatch.setitem(JUDGE_HEAP, "mb", bound_mb)
    result = run_cases("t", "t", [Case("big", {}, run)], quiet=True)
    return result.cases[0].message, result.cases[0].hint


def _learners_allocation():
    return np.empty(1 << 55, np.uint8)   # 32 PiB: a learner's code sized by the wrong number


# (np.empty's call is NumPy's C code: the traceback holds the harness's frame alone, as it
# does when a check's own code turns an answer into an array too large for the judge)
_CHECKS_ALLOCATION = functools.partial(np.empty, 1 << 55, np.uint8)


def test_a_memory_error_of_the_checks_own_work_is_not_laid_on_the_learners_code(monkeypatch):
    """Before: "your code built, or returned, something much larger..." for the judge's own
    work on an answer that might be of the size asked for (its heap bound, Limits.judge_mb)."""
    message, hint = _memory_case(_CHECKS_ALLOCATION, monkeypatch, bound_mb=1024)
    assert message.startswith("ran out of memory (MemoryError: Unable to allocate 32.0 PiB")
    assert message.endswith("in the check's own code, not in yours: the grader's judge may use "
                            "1024 MiB"), message
    assert "your code built" not in hint and "if yours is the size the spec asks for" in hint


def test_outside_a_judge_the_checks_memory_error_names_no_judge(monkeypatch):
    message, hint = _memory_case(_CHECKS_ALLOCATION, monkeypatch)
    assert message.endswith("in the check's own code, not in yours"), message


def test_a_memory_error_raised_in_the_learners_code_says_so(monkeypatch):
    message, hint = _memory_case(_learners_allocation, monkeypatch, bound_mb=1024)
    assert "(in test_grader_messages_hunt160.py, line" in message and "judge" not in message
    assert hint.startswith("the case needed far more memory") and "your code built" in hint


def test_a_memory_error_the_sandbox_sent_is_the_learners(monkeypatch):
    """Under the grader the learner's code runs in the sandbox: its MemoryError crosses with
    the frame it named there (none when it was raised sending the answer back)."""
    def run():
        raise _crossed(MemoryError("Unable to allocate 32.0 PiB"))
    message, hint = _memory_case(run, monkeypatch, bound_mb=1024)
    assert message == "ran out of memory (MemoryError: Unable to allocate 32.0 PiB)", message
    assert "your code built" in hint


# -- 3. the seed, checked as every int argument is -------------------------------------------
@pytest.mark.parametrize("seed, error, text", [
    (True, TypeError, "seed: expected an int, got True (bool)"),
    ("7", TypeError, "seed: expected an int, got '7' (str)"),
    (-1, ValueError, "seed: expected an int >= 0, got -1"),
    (2**63, ValueError, f"seed: expected an int <= {2**63 - 1}, got {2**63}"),
])
def test_a_bad_seed_is_refused_in_check_ints_words_before_grading(tmp_path, seed, error, text):
    """Before: grade._seed said it its own way ("expected an int from 0 to 2**63 - 1"), a
    ValueError for True and "7" alike, and refused a NumPy int."""
    from pagedattn_lab import grade  # noqa: PLC0415
    with pytest.raises(error) as raised:
        grade.grade([tmp_path / "missing"], seed=seed)
    assert str(raised.value) == text


def test_a_numpy_int_is_a_seed():
    from pagedattn_lab import grade  # noqa: PLC0415
    seed = grade._seed(np.int64(7))
    assert seed == 7 and type(seed) is int


# -- 4. the one-program refusals, built by one helper -----------------------------------------
_ONE = ("a graded kernel must be one program on both devices (the CPU run checks for races and "
        "bad indices that the GPU run would not show): ")
_TWO = "the GPU compiler and the CPU executor would compile different kernels"
_REFUSED = "the kernel was refused by the grader: "
# (source, message, hint's fix, expected, got): the words of each before hunt 160's helper
_REFUSALS = {
    "value of the build": (
        "__global__ void k(int *x) {\n  x[0] = __COUNTER__;\n}\n",
        "line 2 uses `__COUNTER__`, whose value differs between the GPU compiler and the CPU "
        "executor: the two would run different kernels",
        "take `__COUNTER__` out of the kernel.", "no value of the build in the code",
        "__COUNTER__"),
    "conditional": (
        "__global__ void k() {\n#ifdef __PAGEDATTN_LAB_CPU__\n  __syncthreads();\n#endif\n}\n",
        f"#ifdef at line 2 tests `__PAGEDATTN_LAB_CPU__`, which the source does not define: {_TWO}",
        "take the #if out, or test only macros the kernel #defines itself, under names of its "
        "own (not a compiler's or a C header's).", "conditionals on the kernel's own macros only",
        "__PAGEDATTN_LAB_CPU__"),
    "string": (
        # (through XSTR, which expands it first: STR(__CUDA_ARCH__) alone is "__CUDA_ARCH__"
        # on both builds and passes, hunt 158)
        "#define STR(x) #x\n#define XSTR(x) STR(x)\n__global__ void k(char *s) {\n"
        "  s[0] = XSTR(__CUDA_ARCH__)[0];\n}\n",
        "line 4 makes a string of `__CUDA_ARCH__` (through `XSTR`), a macro a compiler defines: "
        "the GPU compiler and the CPU executor would compile different strings, and different "
        "kernels", "take `__CUDA_ARCH__` out of `XSTR`'s arguments.",
        "no compiler's macro made a string", "__CUDA_ARCH__"),
    "typed use": (
        "__global__ void k(int *x) {\n  x[0] = sizeof(threadIdx);\n}\n",
        "line 2 uses `threadIdx` whole where its type decides (a sizeof or decltype, an argument, "
        "an initializer), and its type differs between the builds (NVRTC's is a built-in type "
        f"of one byte, the executor's a uint3 or dim3): {_TWO}",
        "read its members (threadIdx.x) or copy it first (uint3 t = threadIdx;).",
        "member reads of the built-in variables, no type query", "threadIdx"),
    "alignof": (
        "__global__ void k(int *x) {\n  x[0] = alignof(float4);\n}\n",
        "line 2 uses `alignof`, whose answer differs between the builds (the executor aligns "
        f"float4 and the other 16-byte types to their element): {_TWO}",
        "take it out; write the alignment the kernel needs (16 for a float4).",
        "member reads of the built-in variables, no type query", "alignof"),
}


@pytest.mark.parametrize("kind", sorted(_REFUSALS))
def test_each_one_program_refusal_is_the_helpers_in_the_same_words(kind, monkeypatch):
    """Before: four refusals (source_macros' three, source_builtins') each built the message
    by hand: now one_program_refusal builds every one, and the words are as they were."""
    from pagedattn_lab.grading import source_builtins, source_macros  # noqa: PLC0415
    built, helper = [], getattr(source_macros, "one_program_refusal", None)

    def recording(*args, **kwargs):
        built.append(helper(*args, **kwargs))
        return built[-1]
    for module in (source_macros, source_builtins):   # (the name each one calls)
        monkeypatch.setattr(module, "one_program_refusal", recording, raising=False)
    source, message, fix, expected, got = _REFUSALS[kind]
    refused = (source_macros.device_conditional(source) or
               source_builtins.device_types(source))
    assert built == [refused]
    assert (refused.message, refused.hint, refused.expected, refused.got) == \
        (_REFUSED + message, _ONE + fix, expected, got)


# -- a learner's honest mistakes in workbooks 00-04: what the messages said ------------------
def _failed_case(task, impl, case):
    """The CaseResult of `case` when `task`'s check fails `impl`."""
    from tests.check_helpers import run_check  # noqa: PLC0415
    result, printed = run_check(task, impl)
    found = [c for c in result.cases if c.name == case and not c.passed]
    assert found, printed
    return found[0]


def _swapped_pages_needed(seq_len, page_size):
    return -(-page_size // seq_len) if seq_len else 0


def test_swapped_arguments_are_not_told_as_the_last_pages_index():
    """pages_needed(8, 4) of ceil(page_size / seq_len) is 1, as (seq_len - 1) // page_size:
    case 2's hint named the latter, which the other cases (1 for (10, 4)) show it is not."""
    from tests.check_helpers import run_check  # noqa: PLC0415
    result, printed = run_check("pages_needed", _swapped_pages_needed)
    hints = [c.hint for c in result.cases if not c.passed]
    assert len(hints) == 3 and all(h.startswith("the arguments come as (seq_len, page_size)")
                                   for h in hints), printed


def _last_page_index(seq_len, page_size):
    return (seq_len - 1) // page_size


def test_the_last_pages_index_is_still_told_so():
    from tests.check_helpers import run_check  # noqa: PLC0415
    result, printed = run_check("pages_needed", _last_page_index)
    assert any("index of the last token's page" in c.hint for c in result.cases), printed


def _partial_allocator():
    from tests.check_helpers import GoodAllocator  # noqa: PLC0415
    import pagedattn_lab as pl  # noqa: PLC0415

    class TakesThenRaises(GoodAllocator):
        """Pops pages one by one and raises when the list runs dry: the pages it took are
        gone (num_free no longer counts them)."""

        def allocate(self, n):
            pages = []
            for _ in range(n):
                if not self.free_list:
                    raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
                pages.append(self.free_list.popleft())
            for p in pages:
                self.refs[p] = 1
            return pages
    return TakesThenRaises


def test_a_refused_allocate_that_took_pages_is_named_at_its_step():
    """Before: "step 27: allocate(1) raised OutOfPagesError with 1 pages free", hint "freed
    pages must go back to the free list": the pages were lost by step 26's refused call."""
    case = _failed_case("allocator", _partial_allocator(), "150 random allocate/free")
    assert case.message == "num_free after the refused allocate(3) of step 26", case
    assert (case.expected, case.got) == ("1", "0")
    assert case.hint.startswith("all or nothing") and "next_page++" not in case.hint


def _copying_fork():
    from tests.check_helpers import GoodAllocator  # noqa: PLC0415

    class CopyingFork(GoodAllocator):
        def fork(self, pages):
            return self.allocate(len(list(pages)))   # new pages: a copy, no owner added
    return CopyingFork


def test_a_fork_that_adds_no_owner_is_not_told_as_a_free_that_released_a_shared_page():
    """Before: case 2 said "a page owned by two sequences went back to the free list after
    one free" (counts [0, 0] after the free): the pages were never shared."""
    case = _failed_case("refcounts", _copying_fork(), "a shared page outlives one free")
    assert case.message == "ref_count after fork([0, 1])", case
    assert (case.expected, case.got) == ("[2, 2]", "[1, 1]")
    assert case.hint == "fork adds one owner to every page."


def _padding_zeros(seq_lens, page_size, allocator):
    tables = [allocator.allocate(-(-n // page_size)) for n in seq_lens]
    out = np.zeros((len(seq_lens), max([len(t) for t in tables] + [1])), np.int32)
    for row, pages in enumerate(tables):
        out[row, :len(pages)] = pages
    return out, np.asarray(seq_lens, np.int32)


def test_a_padding_entry_that_is_no_minus_one_is_named_where_it_is():
    """Before: "padding entries", expected -1, got [-1, 0] (the set of the padding's values):
    no row, no column."""
    case = _failed_case("block_tables", _padding_zeros, "three sequences")
    assert case.message == "padding entry block_tables[0, 2] (past row 0's 2 pages)", case
    assert (case.expected, case.got) == ("-1", "0")


def _returning_count(table, seq_len, n_new, page_size, allocator):
    new = allocator.allocate(max(-(-(seq_len + n_new) // page_size) - len(table), 0))
    table.extend(new)
    return len(new)


def test_append_tokens_returning_a_value_says_what_came_and_what_was_expected():
    """Before: "append_tokens returned a new list" (for any value, a count too), no expected
    or got."""
    case = _failed_case("append_tokens", _returning_count, "prompt into an empty table")
    assert case.message == "append_tokens returned a value (int)", case
    assert (case.expected, case.got) == ("None (`table` extended in place)", "2")


def test_block_tables_returning_one_array_says_what_came():
    def table_only(seq_lens, page_size, allocator):
        return _padding_zeros(seq_lens, page_size, allocator)[0]
    case = _failed_case("block_tables", table_only, "three sequences")
    assert (case.expected, case.got) == ("a tuple of 2: (block_tables, seq_lens)",
                                         "one ndarray"), case


def _token_as_slot(row, token, page_size):
    return token   # the cache read as if contiguous


def test_a_slot_two_mistakes_give_alike_names_both():
    """At page_size 1, token 0's slot of the token itself (0) is also row[(0 + 1) // 1] * 1:
    case 3 named only the off-by-one of the virtual page, which cases 1-2 show is not it."""
    case = _failed_case("slot_of", _token_as_slot, "page_size 1")
    assert case.hint.startswith("these mistakes give the same slot here"), case.hint
    assert "(token + 1) // page_size is off by one" in case.hint
    assert "you used the token position itself" in case.hint


def test_one_wrong_index_is_named_in_the_singular():
    """Before: "Wrong in: sequences 1 (right: 0)"."""
    from pagedattn_lab.grading.compare import describe_difference  # noqa: PLC0415
    expected = np.zeros((2, 3, 4))
    got = expected.copy()
    got[1, :2] = 1.0
    text = describe_difference(got, expected, ("sequence", "token", "dim")).message()
    assert "Wrong in: sequence 1 (right: 0); tokens 0-1 (right: 2)." in text, text


def _gather_source(edit: tuple[str, str]) -> str:
    from tests.check_helpers import solution_source  # noqa: PLC0415
    source = solution_source("02_page_access.ipynb", "SOURCE_GATHER")
    assert edit[0] in source
    return source.replace(*edit)


def test_zeros_overwritten_by_the_copy_are_told_to_return():
    """A gather that stores the padding row's zeros but does not return: the copy below
    overwrites them. The hint said only "Test t >= seq_lens[b] first and store zeros", which
    the kernel does."""
    from tests.check_helpers import run_check  # noqa: PLC0415
    source = _gather_source(("            v_out[out_row + i] = 0.0f;\n        }\n        return;",
                             "            v_out[out_row + i] = 0.0f;\n        }"))
    result, printed = run_check("gather_kernel", source)
    hints = " ".join(c.hint for c in result.cases if not c.passed)
    assert "store zeros and return (a copy after the zeros overwrites them)" in \
        " ".join(hints.split()), printed


def _onramp(variable: str, old: str, new: str) -> str:
    from tests.check_helpers import solution_source  # noqa: PLC0415
    source = solution_source("03_cuda_onramp.ipynb", variable)
    assert old in source
    return source.replace(old, new)


def test_a_map_that_adds_another_constant_is_told_which():
    """Before: "compare your kernel with the spec above, element by element, for the thread
    the message names" (the message names an element), for out[i] = a[i] + 1.0f."""
    case = _failed_case("puzzle_map", _onramp("SOURCE_MAP", "a[i] + 10.0f", "a[i] + 1.0f"),
                        "n = 32")
    assert case.hint == "every element is a[i] + 1: the spec adds 10.", case


def test_one_value_of_one_is_told_in_the_singular_and_the_fallback_names_the_element():
    """Before: "1 of 1 values differ; the first at warp 0", and a hint naming "the thread the
    message names" where the message names a warp."""
    source = _onramp("SOURCE_WARP_SUM", "offset = 16; offset > 0; offset /= 2",
                     "offset = 16; offset > 0; offset -= 4")   # lanes 4 and 12 apart missed
    case = _failed_case("puzzle_warp_sum", source, "n = 32")
    assert case.message.startswith("1 of 1 value differs; the first at warp 0"), case.message
    assert "the thread the message names" not in case.hint


def test_one_element_written_is_told_in_the_singular():
    source = _onramp("SOURCE_BLOCK_SUM", "out[blockIdx.x] = v;", "out[0] = v;")
    case = _failed_case("puzzle_block_sum", source, "n = 1000")
    assert case.message.startswith("4 of 4 values differ;"), case.message
    assert "only 1 of its 4 elements holds a value" in case.hint, case.hint


def test_padding_rows_of_a_causal_kernel_are_not_told_as_a_softmax_over_no_keys():
    """The naive kernel without its t >= seq_lens[b] test: a thread past the end attends to
    keys 0..t, past the end too (NaN in the unused slots). The hint said it "ran the softmax
    over no keys (0/0)", which a causal loop never does."""
    from tests.check_helpers import run_check, solution_source  # noqa: PLC0415
    source = solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE")
    guard = ("    if (t >= seq_lens[b]) {                          // padding row: zeros\n"
             "        for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;\n"
             "        return;\n    }")
    assert guard in source
    result, printed = run_check("naive_kernel", source.replace(guard, ""), device="cpu")
    first = next(c for c in result.cases if not c.passed)
    assert "softmax over no keys" not in first.hint, printed
    assert "over keys past the end (unused slots, -1 padding) or over none (0/0)" in \
        first.hint, printed
