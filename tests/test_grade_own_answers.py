"""The tasks own_answers.py lists beyond the references: an answer that is glue around the
package's finished version of the task passed every case (shown here with the check's cases
alone); the workbook's check now refuses it and names what it used. The solutions still
pass (tests/test_exercises.py runs them through the same checks).
"""
import types

import pytest

from pagedattn_lab import check
from tests.check_helpers import run_check
from tests.test_grade_own_work import EXPECTED, _cell, judged

IMPORTS = ("import numpy as np\n"
           "import pagedattn_lab as pl\n")

# task -> (cell defining `answer`, what the refusal names); each answer passes the cases
GLUE = {
    "pages_needed": ("from pagedattn_lab.engine.kv_manager import _pages_for as answer\n",
                     "you passed pagedattn_lab.engine.kv_manager._pages_for itself"),
    "paged_waste": ("from pagedattn_lab.engine.adaptive import tail_waste\n"
                    "def answer(seq_lens, page_size):\n"
                    "    lens = [int(n) for n in seq_lens if n]\n"
                    "    return tail_waste(lens, [0] * len(lens), page_size) if lens else 0.0\n",
                    "line 6 of answer uses pagedattn_lab.engine.adaptive.tail_waste"),
    "block_tables": ("from pagedattn_lab.engine import attention\n"
                     "def answer(seq_lens, page_size, allocator):\n"
                     "    rows = [allocator.allocate(-(-n // page_size)) for n in seq_lens]\n"
                     "    return attention._padded_table(rows), np.int32(seq_lens)\n",
                     "line 6 of answer uses pagedattn_lab.engine.attention._padded_table"),
    "pages_for_next_token": ("def answer(cache, seq_id):\n"
                             "    return cache.pages_needed(seq_id, 1)\n",
                             "line 4 of answer called "
                             "pagedattn_lab.cache.PagedKVCache.pages_needed"),
    "decode_step": ("class answer(pl.PagedAttentionManager):\n"
                    "    pass\n",
                    "answer.decode_step is pagedattn_lab.manager.PagedAttentionManager."
                    "decode_step: your class does not write it"),
    "kv_bytes": ("from pagedattn_lab.bench.workloads import DecodeWorkload\n"
                 "def answer(seq_lens, num_heads, num_kv_heads, head_dim, dtype):\n"
                 "    w = DecodeWorkload('', tuple(int(n) for n in seq_lens), num_heads,\n"
                 "                       num_kv_heads, head_dim, dtype=np.dtype(dtype).name)\n"
                 "    return DecodeWorkload.kv_bytes(w)\n",
                 "line 7 of answer uses pagedattn_lab.bench.workloads.DecodeWorkload.kv_bytes"),
    "visible_keys": ("def answer(qo_indptr, seq_lens):\n"
                     "    masks = pl.prefill_masks.packed_masks(qo_indptr, seq_lens)\n"
                     "    return np.concatenate([m.sum(1) for m in masks] + [np.zeros(0, int)])\n",
                     "line 4 of answer uses pagedattn_lab.prefill_masks.packed_masks"),
    "cached_prefix": ("from pagedattn_lab.engine.kv_manager import KVCacheManager\n"
                      "from pagedattn_lab.engine.request import Request, SamplingParams\n"
                      "def answer(hashes, cached, num_tokens, page_size):\n"
                      "    kv = KVCacheManager(1, page_size)\n"
                      "    kv.pool.lookup = lambda block_hash, tokens: cached.get(block_hash)\n"
                      "    req = Request(0, [0] * num_tokens, SamplingParams())\n"
                      "    req.block_hashes = list(hashes)\n"
                      "    return kv.cached_prefix(req)\n",
                      "line 10 of answer called "
                      "pagedattn_lab.engine.kv_manager.KVCacheManager.cached_prefix"),
}


@pytest.mark.parametrize("task", sorted(GLUE))
def test_glue_around_the_packages_answer_is_refused(task, tmp_path, capsys):
    source, named = GLUE[task]
    answer = _cell(tmp_path, IMPORTS + source).answer
    assert run_check(task, answer)[0].status == "passed"   # the hole: every case passed
    result = getattr(check, task)(answer)
    assert result.status == "failed" and EXPECTED in result.summary, result.summary
    assert named in result.summary and "Hint:" in result.summary, result.summary
    assert named in capsys.readouterr().out


def test_a_class_calling_the_packages_decode_step_is_refused(tmp_path):
    mine = _cell(tmp_path, IMPORTS + "class Mine(pl.PagedAttentionManager):\n"
                                     "    def decode_step(self, seq_ids, q, k, v):\n"
                                     "        return super().decode_step(seq_ids, q, k, v)\n"
                 ).Mine
    assert run_check("decode_step", mine)[0].status == "passed"
    summary = check.decode_step(mine).summary
    assert "line 5 of decode_step called pagedattn_lab.manager.PagedAttentionManager." \
        "decode_step" in summary, summary


def test_the_engines_scheduler_is_refused_for_schedule_step(tmp_path):
    """Named in the source through the class (a call of `sched.schedule()` is watched)."""
    answer = _cell(tmp_path, IMPORTS + (
        "from pagedattn_lab.engine import scheduler\n"
        "def answer(running, waiting, budget, free_pages, watermark, page_size, max_chunk):\n"
        "    step = scheduler.Scheduler.schedule(None)\n"
        "    return [(r.rid, n) for r, n in zip(step.requests, step.num_new)]\n")).answer
    summary = check.schedule_step(answer).summary
    assert "line 5 of answer uses pagedattn_lab.engine.scheduler.Scheduler.schedule" in \
        summary, summary


# -- under the grader: the cache is the judge's, lent to the sandbox ----------------------
LEARNER = """
import sys
import types
from pagedattn_lab.grading import runner
peer = runner.learner_peer(int(sys.argv[1]))
peer.idle_timeout = 60
runner.forwarder(peer, "pages_for_next_token")(eval(sys.argv[2]))
"""
ANSWERS = {"lambda cache, s: cache.pages_needed(s, 1)": "failed",
           "lambda cache, s: int(cache.seq_len(s) % cache.page_size == 0 or "
           "cache.allocator.ref_count(cache.block_table(s)[-1]) > 1)": "passed"}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_under_the_grader_a_method_of_the_lent_cache_is_refused(answer):
    result = judged(LEARNER, answer, ["pages_for_next_token"])["pages_for_next_token"]
    assert result["status"] == ANSWERS[answer], result
    if ANSWERS[answer] == "failed":
        assert "your code called pagedattn_lab.cache.PagedKVCache.pages_needed through the " \
            "grader's channel" in result["summary"], result


def test_every_entry_names_a_function_or_class_of_a_lesson_task():
    """A misspelt entry would guard nothing: each names a task and resolves (answers raises
    on a name the package does not have), to a function or class defined in the package."""
    from pagedattn_lab.grading.own_answers import ANSWERS
    from pagedattn_lab.grading.own_work import answers
    from pagedattn_lab.lessons import LESSONS
    tasks = {task for lesson in LESSONS for task in lesson.tasks}
    for task in ANSWERS:
        assert task in tasks, task
        for dotted, obj in answers(task).values():
            assert isinstance(obj, (type, types.FunctionType)), dotted
            assert obj.__module__.startswith("pagedattn_lab."), dotted
