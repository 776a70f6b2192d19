"""Wrong answers to workbooks 01, 03, 04, 05 and 06, each the solution with one learner's
mistake, that the checks failed with only the general recipe ("read the error above", "follow
the prompt's recipe", "compare your kernel with the spec"), or with a hint that led with
another suspect:

1. allocator: page ids 1..num_pages raised an IndexError from allocate: "read the error".
2. naive_kernel (and tiled_kernel): q or out at a row of the learner's own without the head
   (head 0's row, or (b * max_len + t) * head_dim; the prompt's `row` is given code), and a
   score declared outside the loop over the keys (the tiled kernel's outside its page loop
   or in it), got the recipe.
3. decode_partition: acc (or l) reset at every token, and `start = part`, got the spec;
   decode_merge: total (or o, or both) declared outside the loop over d got the formula.
4. puzzle_guard: blockIdx.x and threadIdx.x in swapped roles (or blockIdx.x alone) got the
   spec; puzzle_shared: q_shared[d] = q[threadIdx.x] got the spec, and q_shared[threadIdx.x]
   = q[d] was told several threads wrote the same score (each was written once; q_shared's
   unstored slots made the NaN).
5. tiled_kernel: a running max started at 0 was told shared memory first; where every score
   is far below 0 and the NaN is just where that mistake gives it, it leads.
"""
import pytest

from tests.check_helpers import (_flat, assert_caught, mutate, run_check, solution_allocator,
                                 solution_object, solution_source)

_NOTEBOOKS = {"naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
              "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
              "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION"),
              "decode_merge": ("06_decode_kernel.ipynb", "SOURCE_MERGE"),
              "puzzle_guard": ("03_cuda_onramp.ipynb", "SOURCE_GUARD"),
              "puzzle_shared": ("03_cuda_onramp.ipynb", "SOURCE_SHARED")}

_RECIPE = "follow the prompt's recipe"
_SPEC = "compare your kernel with the spec"
_HEAD0 = "((long long)b * max_len + t) * num_heads * head_dim"
_NO_HEADS = "((long long)b * max_len + t) * head_dim"
_HEAD0_WORDS = "head 0's row: + h is missing"
_NO_HEADS_WORDS = "which leaves out num_heads and h"
_CARRIED = "the score is not reset for each key"
_NAIVE_SCORE = "        float score = 0.0f;\n"
_TILED_SCORE = "                float score = 0.0f;\n"
_TILED_MAX = "    float running_max = NEG_INF, running_sum = 0.0f;\n"
_TOKEN_LOOP = "float m = NEG_INF, l = 0.0f;\n    for (int t = start; t < end; ++t) {\n"
_MERGE_SUMS = "        float total = 0.0f, o = 0.0f;\n"
_M_ALL = "    float m_all = NEG_INF;"
_GUARD_I = "int i = blockIdx.x * blockDim.x + threadIdx.x;"
_SWAPPED = "blockIdx.x and threadIdx.x swapped roles"
_MAX0 = "a running max started at 0, not -inf"

# (task, name, edits, phrase a failed case's message or hint holds, phrases no hint holds)
MISTAKES = [
    ("naive_kernel", "q at head 0's row", [("q[row + d]", f"q[{_HEAD0} + d]")],
     "q's row is read at (b * max_len + t) * num_heads * head_dim, " + _HEAD0_WORDS,
     (_RECIPE,)),
    ("naive_kernel", "q without num_heads and h", [("q[row + d]", f"q[{_NO_HEADS} + d]")],
     _NO_HEADS_WORDS, (_RECIPE, _HEAD0_WORDS)),
    ("naive_kernel", "out at head 0's row",
     [("out[row + d] = acc[d]", f"out[{_HEAD0} + d] = acc[d]")],
     "out's rows ((b * max_len + t) * num_heads + h) * head_dim of the real tokens were never "
     "written: yours stores at (b * max_len + t) * num_heads * head_dim", (_RECIPE,)),
    ("naive_kernel", "out without num_heads and h",
     [("out[row + d] = acc[d]", f"out[{_NO_HEADS} + d] = acc[d]")],
     "yours stores at (b * max_len + t) * head_dim", (_RECIPE, _HEAD0_WORDS)),
    ("naive_kernel", "score declared outside the key loop",
     [(_NAIVE_SCORE, ""), ("    for (int j = 0; j <= t; ++j) {",
                           "    float score = 0.0f;\n    for (int j = 0; j <= t; ++j) {")],
     _CARRIED, (_RECIPE,)),
    ("tiled_kernel", "q at head 0's row", [("q[row + d] * scale", f"q[{_HEAD0} + d] * scale")],
     _HEAD0_WORDS, (_RECIPE,)),
    ("tiled_kernel", "out at head 0's row", [("out[row + d] = active", f"out[{_HEAD0} + d] = "
                                                                      "active")],
     "of the real tokens were never written", (_RECIPE,)),
    ("tiled_kernel", "score declared before the page loop",
     [(_TILED_SCORE, ""), (_TILED_MAX, _TILED_MAX + "    float score = 0.0f;\n")], _CARRIED,
     ("shared memory starts as nan",)),
    ("tiled_kernel", "score declared in the page loop",
     [(_TILED_SCORE, ""), ("            int last = min(",
                           "            float score = 0.0f;\n            int last = min(")],
     _CARRIED, ("shared memory starts as nan",)),
    ("tiled_kernel", "running max started at 0",
     [("float running_max = NEG_INF,", "float running_max = 0.0f,")], "(1) every score here "
     "is far below 0: " + _MAX0, ()),
    ("decode_partition", "acc reset at every token",
     [(_TOKEN_LOOP, _TOKEN_LOOP + "        for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) "
                                  "acc[i] = 0.0f;\n")],
     "the accumulator is set to 0 at every token", ("must be softmax(scores of partition",)),
    ("decode_partition", "l reset at every token", [(_TOKEN_LOOP, _TOKEN_LOOP + "        l = "
                                                                               "0.0f;\n")],
     "the running sum l is set to 0 at every token", ("the accumulator is set to 0",)),
    ("decode_partition", "start = part", [("int start = part * part_len;", "int start = part;")],
     "partition p starts at token p * part_len (start = part * part_len), not at token p",
     ("must be softmax(scores of partition",)),
    ("decode_merge", "total declared outside the d loop",
     [(_MERGE_SUMS, "        float o = 0.0f;\n"), (_M_ALL, _M_ALL[:-1] + ", total = 0.0f;")],
     "total is not reset for each dim", ("out[b, h] = sum_p",)),
    ("decode_merge", "o declared outside the d loop",
     [(_MERGE_SUMS, "        float total = 0.0f;\n"), (_M_ALL, _M_ALL[:-1] + ", o = 0.0f;")],
     "o is not reset for each dim", ("out[b, h] = sum_p", "total is not reset")),
    ("decode_merge", "total and o declared outside the d loop",
     [(_MERGE_SUMS, ""), (_M_ALL, _M_ALL[:-1] + ", total = 0.0f, o = 0.0f;")],
     "total and o are not reset for each dim", ("out[b, h] = sum_p",)),
    ("puzzle_guard", "blockIdx and threadIdx swapped",
     [(_GUARD_I, "int i = threadIdx.x * blockDim.x + blockIdx.x;")],
     "only the elements with i % 32 < 4 (the number of blocks) were written: " + _SWAPPED,
     (_SPEC,)),
    ("puzzle_guard", "blockIdx alone", [(_GUARD_I, "int i = blockIdx.x;")],
     "only 4 elements (0-3) were written, one per block", (_SPEC,)),
    ("puzzle_shared", "q_shared[d] = q[threadIdx.x]",
     [("q_shared[d] = q[d];", "q_shared[d] = q[threadIdx.x];")],
     "q_shared[d] holds q[d % 32]", (_SPEC,)),
    ("puzzle_shared", "q_shared[threadIdx.x] = q[d]",
     [("q_shared[d] = q[d];", "q_shared[threadIdx.x] = q[d];")],
     "the stores went to too few slots of q_shared", ("several threads wrote the same",)),
]


@pytest.mark.parametrize("task, edits, phrase, not_phrases", [m[:1] + m[2:] for m in MISTAKES],
                         ids=[f"{m[0]}-{m[1]}" for m in MISTAKES])
def test_mistake_is_named(task, edits, phrase, not_phrases):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    assert_caught(task, source, phrase, not_phrases=not_phrases, device="cpu")


def test_one_block_names_both_indices_that_reach_element_0_alone():
    """n = 31 is one block: threadIdx.x * blockDim.x + blockIdx.x and blockIdx.x alone both
    write element 0 only."""
    source = mutate(solution_source(*_NOTEBOOKS["puzzle_guard"]),
                    [(_GUARD_I, "int i = threadIdx.x * blockDim.x + blockIdx.x;")])
    result, printed = run_check("puzzle_guard", source, device="cpu")
    case = next(c for c in result.cases if c.params["n"] == 31)
    assert "check each" in case.hint and _SWAPPED in case.hint, printed
    assert "not blockIdx.x alone" in case.hint, printed


def test_a_tile_left_unloaded_is_not_told_its_max_started_at_0():
    """NaN from a tile element never loaded falls where the max at 0 gives none."""
    source = mutate(solution_source(*_NOTEBOOKS["tiled_kernel"]),
                    [("i < n_keys * head_dim; i += blockDim.x)",
                      "i < n_keys * head_dim - 1; i += blockDim.x)")])
    assert_caught("tiled_kernel", source, "shared memory starts as NaN",
                  not_phrases=(_MAX0,), device="cpu")


@pytest.mark.parametrize("edits", [
    [("deque(range(num_pages))", "deque(range(1, num_pages + 1))")],
    # a stack: page num_pages is the first taken
    [("deque(range(num_pages))", "list(range(1, num_pages + 1))"),
     ("self._free.popleft()", "self._free.pop()")],
], ids=["queue", "stack"])
def test_page_ids_from_1_are_named(edits):
    result, printed = run_check("allocator", solution_allocator(edits))
    failed = [c for c in result.cases if not c.passed]
    assert failed and "IndexError" in failed[0].message, printed
    assert "1..num_pages runs one past the end" in failed[0].hint, printed
    assert "read the error above" not in _flat(printed), printed


def test_page_ids_from_1_are_named_by_the_refcounts_check():
    sharing = solution_object("01_page_table.ipynb", "MySharingAllocator", MyAllocator=(
        solution_allocator([("deque(range(num_pages))", "deque(range(1, num_pages + 1))")])))
    result, printed = run_check("refcounts", sharing)
    failed = [c for c in result.cases if not c.passed]
    assert failed and all("1..num_pages runs one past the end" in c.hint or
                          c.hint.startswith("as for case") for c in failed), printed


def test_a_pop_from_an_empty_free_list_is_not_told_ids_from_1():
    """allocate(n) taking n + 1 pages: with n free the deque runs dry, a mistake of its own,
    with no page id past the pool's last."""
    impl = solution_allocator([("popleft() for _ in range(n)]", "popleft() for _ in range(n + 1)]")])
    result, printed = run_check("allocator", impl)
    assert "pop from an empty deque" in printed, printed
    assert "1..num_pages runs one past the end" not in printed, printed


def test_the_allocator_solution_still_passes():
    result, printed = run_check("allocator", solution_allocator([]))
    assert result.passed, printed


@pytest.mark.parametrize("task", sorted(_NOTEBOOKS))
def test_the_solution_still_passes(task):
    result, printed = run_check(task, solution_source(*_NOTEBOOKS[task]), device="cpu")
    assert result.passed, printed
