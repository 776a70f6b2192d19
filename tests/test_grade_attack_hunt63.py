"""The grader attacked from the learner's side (hunt 63).

Lessons 04/05's prefill kernels: a softmax whose max stays at the first key's score (never
updated) passed every case, the case of scores near +100 included (every score moved by
the same amount, which that max follows). A case whose scores climb by 190 along the keys
now overflows it, and its hint says so.

Lesson 07's serve check compared only the list the learner's loop returned with the spec's
finish order, and the cases' requests are fixed: a loop that served one request at a time
and returned the order worked out beforehand (by the check's own `finish_order`, importable
in the sandbox, or memorized per case) passed, in the notebook and under the judge. The check
now also looks at the cache: when a request is freed, the requests running beside it must
be those of the spec's step that finishes it, with the tokens that step gives them.
"""
import types

import pytest

from pagedattn_lab import check
from pagedattn_lab.grading.checks_serve import finish_order
from tests.check_helpers import mutate, solution_source
from tests.test_check_mistakes_system import serve_factory, serve_variant
from tests.test_grade_protocol import remotely


def _copy(fn):
    """A function of `fn`'s code made before the check: own_work.Watch does not see its
    calls (its docstring says so), so the order stands for one memorized or written out,
    and only the cache's evidence can tell."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


HIDDEN = {"order": _copy(finish_order)}


def one_at_a_time(cache, requests, kv_for):
    """Each request served alone to its end, in the order the spec's loop finishes them."""
    return _serve_alone(HIDDEN["order"](list(requests), cache.allocator.num_free,
                                        cache.page_size), cache, requests, kv_for)


def _serve_alone(order, cache, requests, kv_for):
    """Each request of `order` served alone to its end, one append for all its tokens."""
    for i in order:
        seq_id = cache.add_sequence()
        cache.append(seq_id, *kv_for(i, 0, sum(requests[i])))
        cache.free_sequence(seq_id)
    return order


def one_token_at_a_time(cache, requests, kv_for):
    """Each request served alone, one token per call as the spec's decode appends them."""
    return _one_token_each(HIDDEN["order"](list(requests), cache.allocator.num_free,
                                           cache.page_size), cache, requests, kv_for)


def _one_token_each(order, cache, requests, kv_for):
    for i in order:
        seq_id = cache.add_sequence()
        cache.append(seq_id, *kv_for(i, 0, requests[i][0]))
        for position in range(requests[i][0], sum(requests[i])):
            cache.append(seq_id, *kv_for(i, position, 1))
        cache.free_sequence(seq_id)
    return order


@pytest.mark.parametrize("impl", [one_at_a_time, one_token_at_a_time])
def test_the_finish_order_worked_out_beforehand_fails_in_the_notebook(impl):
    result = check.serve(impl)
    assert result.status == "failed"
    first = next(c for c in result.cases if not c.passed)
    assert first.name == "room for everyone"
    assert "when request 4 was freed, the cache held no other request" in first.message
    assert first.hint.startswith("request 4 ran alone: the requests share the steps")


# A copy of finish_order whose page arithmetic is the learner's: it runs none of the grader's
# functions, so in the sandbox too only the cache's evidence can tell (a copy that calls the
# grader's _ceil_pages is refused there as the grader's code: hunt 94).
OWN_ARITHMETIC = {"order": types.FunctionType(
    finish_order.__code__, {**finish_order.__globals__, "_ceil_pages": lambda n, p: -(-n // p)},
    finish_order.__name__, finish_order.__defaults__)}
OWN_ARITHMETIC["order"].__kwdefaults__ = finish_order.__kwdefaults__


def own_arithmetic_one_token_at_a_time(cache, requests, kv_for):
    return _one_token_each(OWN_ARITHMETIC["order"](list(requests), cache.allocator.num_free,
                                                   cache.page_size), cache, requests, kv_for)


def test_the_finish_order_worked_out_beforehand_fails_under_the_judge():
    verdict = remotely("serve", own_arithmetic_one_token_at_a_time, salt=63)["tasks"]["serve"]
    assert verdict["status"] == "failed", verdict
    assert "the cache held no other request" in verdict["summary"]
    verdict = remotely("serve", one_at_a_time, salt=63)["tasks"]["serve"]
    assert verdict["status"] == "failed", verdict
    assert "had the package's _pages call the grader's pagedattn_lab.grading.serve_order." \
        "_ceil_pages" in verdict["summary"], verdict


ORIGINAL = {"order": finish_order}


def through_a_dict(cache, requests, kv_for):
    """The grader's own finish_order itself, reached through a dict built before the check
    (no package name in the answer's source)."""
    return _serve_alone(ORIGINAL["order"](list(requests), cache.allocator.num_free,
                                          cache.page_size), cache, requests, kv_for)


def test_the_graders_own_order_through_a_dict_is_refused_wherever_it_is_called():
    wanted = ("called the grader's pagedattn_lab.grading.serve_order.finish_order")
    result = check.serve(through_a_dict)
    assert result.status == "failed" and wanted in result.messages[-1], result.messages
    verdict = remotely("serve", through_a_dict, salt=63)["tasks"]["serve"]
    assert verdict["status"] == "failed" and wanted in verdict["summary"], verdict


def decode_all_then_free(cache, requests, kv_for):
    """The spec's loop written another way: the whole step's decode, then the step's
    finishers recorded in order and freed in reverse."""
    pages = lambda n: -(-n // cache.page_size)  # noqa: E731
    waiting, running, done = list(range(len(requests))), {}, []
    while waiting or running:
        while waiting and pages(sum(requests[waiting[0]])) <= cache.allocator.num_free - sum(
                pages(sum(requests[j])) - pages(cache.seq_len(s)) for j, s in running.items()):
            i = waiting.pop(0)
            running[i] = cache.add_sequence()
            cache.append(running[i], *kv_for(i, 0, requests[i][0]))
        for i, s in running.items():
            if cache.seq_len(s) < sum(requests[i]):
                cache.append(s, *kv_for(i, cache.seq_len(s), 1))
        complete = [i for i, s in running.items() if cache.seq_len(s) == sum(requests[i])]
        done += complete
        for i in reversed(complete):   # (freed last-admitted first: recorded in order)
            cache.free_sequence(running.pop(i))
    return done


@pytest.mark.parametrize("impl", [serve_variant(), serve_factory(), decode_all_then_free],
                         ids=["free as each finishes", "admit any that fits in a for loop",
                              "decode all, then free"])
def test_right_loops_still_pass_in_the_notebook_and_under_the_judge(impl):
    assert check.serve(impl).status == "passed"
    assert remotely("serve", impl, salt=63)["tasks"]["serve"]["status"] == "passed"


def test_the_spec_says_who_runs_beside_each_finisher():
    beside = {}
    assert finish_order([(2, 1), (1, 3)], 8, 4, beside=beside) == [0, 1]
    # step 1: both admitted and decoded; 0 finishes with 1 at 1 -> 2 tokens beside it
    assert beside[0] == ({1: 1}, {1: 2}, {0: 1, 1: 1})
    assert beside[1] == ({}, {}, {1: 1})   # step 3: alone


FIRST_SCORE_MAX = {
    "naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE", [(
        "float new_max = fmaxf(running_max, score);",
        "float new_max = running_max == NEG_INF ? score : running_max;")]),
    "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED", [(
        "float new_max = fmaxf(running_max, score);",
        "float new_max = running_max == NEG_INF ? score : running_max;")]),
}


@pytest.mark.parametrize("task", sorted(FIRST_SCORE_MAX))
def test_a_max_kept_from_the_first_key_fails_on_climbing_scores(task):
    notebook, variable, edits = FIRST_SCORE_MAX[task]
    result = getattr(check, task)(mutate(solution_source(notebook, variable), edits))
    failed = [c for c in result.cases if not c.passed]
    assert [c.name for c in failed] == ["scores climbing by 190 along the keys"], result.summary
    assert failed[0].hint.startswith("right on this problem with the climb taken out")
    assert "the max they subtract was not the largest score so far" in failed[0].hint
