"""The workbook's check machinery: seeded cases, comparisons, hints, and the grader's pieces.

Learners call the checks through `pagedattn_lab.check` (e.g. `check.allocator(MyAllocator)`);
instructors grade folders of notebooks with `python -m pagedattn_lab.grade`.

    report.py            results and how they are printed (notes: where a kernel ran)
    printer.py           its printed lines: wrapped between words, each hint once
    escaped_errors.py    its words for an exception that escaped the learner's code
    time_limits.py       a case's time limit (CaseTimeout), held off a channel's frames
    compare.py           where two arrays differ; matching known-wrong variants to hints
    faults.py            kernel faults / races / deadlocks / compile errors -> message, hint
    kernel_hints.py      hints read off a kernel's output (never written, computed NaN, ...)
    cases.py             seeded random paged-attention problems
    variants.py          paged attention with the classic mistakes switched on
    kernel_runner.py     compile and launch a learner's CUDA C (GPU or CPU executor)
    kernel_lint.py       what its source may not hold, refused before it compiles
    source_macros.py     its refusal of an #if on a macro the kernel does not define
    source_builtins.py   its refusal of a type query whose answer differs between builds
    source_layout.py     its refusal of a struct holding a float4 (laid out otherwise)
    source_overloads.py  its refusal of SFINAE on a name one build lacks
    checks_*.py          the checks, by lesson topic (checks_serve.py: lesson 07's serve;
                         serve_hints.py: what its loop did unlike the spec's;
                         serve_order.py: the order the spec's loop, and each known
                         mistake's, finishes requests in; checks_system_errors.py: the
                         errors of lesson 07's decode step read as mistakes;
                         checks_softmax_state.py: lesson 04's online-softmax state besides
                         its answer)
    (the tasks of each workbook are listed in pagedattn_lab/lessons.py, the lesson registry)
    seeds.py             the cases' seeds (salted by the grader)

The instructor's grader (`pagedattn_lab.grade`) keeps verdicts out of the submission:
    isolation.py, isolation_init.py   the sandbox: namespaces, a private root, a fresh uid
    runner.py            runs the notebook in the sandbox, forwards each check to the judge
    judge.py             runs the checks in the grader's own process
    remote.py, proxies.py  the conversation between the two: requests, stand-ins
    wire.py, channel.py  its values (JSON + raw array bytes) and frames
    table.py             the grade table; sandbox.py: the audit hook of the no-isolation level
    gradebook.py         the gradebook (--summary): one line per file, counted from the table
    submissions.py       the files found in the folders graded: notebooks, and the rest
"""
