"""The workbook's check machinery: seeded cases, comparisons, hints, and the grader's pieces.

Learners call the checks through `pagedattn_lab.check` (e.g. `check.allocator(MyAllocator)`);
instructors grade folders of notebooks with `python -m pagedattn_lab.grade`.

    report.py            results, printing, the JSON line each check writes for the grader
    compare.py           where two arrays differ; matching known-wrong variants to hints
    faults.py            kernel faults / races / deadlocks / compile errors -> message, hint
    kernel_hints.py      hints read off a kernel's output (never written, computed NaN, ...)
    cases.py             seeded random paged-attention problems
    variants.py          paged attention with the classic mistakes switched on
    kernel_runner.py     compile and launch a learner's CUDA C (GPU or CPU executor)
    checks_*.py          the checks, by lesson topic (checks_serve.py: lesson 07's serve)
    (the tasks of each workbook are listed in pagedattn_lab/lessons.py, the lesson registry)
    sandbox.py, runner.py  the grader's per-notebook guard rail and executor
"""
